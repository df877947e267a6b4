"""AlignDet Figure 4: how well an alignment convolution's implicit RoI matches the refined anchor it serves.

For a trained AlignDet with Table 4's ablation ADM, at every location whose refined anchor overlaps a
ground-truth box (IoU >= ``min_gt_iou``, the locations whose detections matter), the IoU between the
refined anchor and the implicit RoI of the ADM's first convolution:

* ``paper`` (the figure's reading): for the regular grid, Eq. 3's implicit RoI; for learned offsets,
  "the circumscribed rectangle of offset points" (:func:`replicate.models.roiconv.circumscribed_rois`).
* ``bins``: for every variant, the box whose ``k x k`` bin centres span the sample points: the
  circumscribed rectangle widened by half a bin on each side. It equals Eq. 3's RoI for the regular grid
  and the box itself for RoIConv, so it compares the variants on one rule; the paper's rule gives a
  deformable convolution with small offsets a box ``(k - 1) / k`` the size of the regular grid's.

The summary of a run (histograms of both readings, their means and quartiles) is cached under
``<results_dir>/analysis/<profile>/align-rois-<run key>.json`` (:mod:`replicate.analysis.cache`), so the
book builds from it without the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from ..errors import ReplicateError
from ..io import atomic_write_json
from ..models.losses import aligned_box_iou
from ..models.roiconv import circumscribed_rois, conv_implicit_rois

BINS = np.linspace(0.0, 1.0, 21)  # histogram edges, 0.05 wide
READINGS = ("paper", "bins")


def widen_by_half_a_bin(rois: Tensor, kernel: int) -> Tensor:
    """The box whose ``kernel`` bins per side are centred on the points spanning ``rois`` (..., 4)."""
    if kernel < 2:
        return rois
    half = (rois[..., 2:] - rois[..., :2]) / (kernel - 1) / 2
    return torch.cat((rois[..., :2] - half, rois[..., 2:] + half), dim=-1)


@torch.no_grad()
def roi_anchor_ious(net: torch.nn.Module, images: Tensor, targets: Sequence[dict],
                    min_gt_iou: float = 0.5) -> dict[str, Tensor]:
    """``{"paper": (N,), "bins": (N,)}``: IoU between the implicit RoI of the ADM's alignment convolution and
    the refined anchor, at the N locations of the batch whose refined anchor overlaps a ground truth by at
    least ``min_gt_iou``."""
    head = net.head
    if not hasattr(head, "align") or not hasattr(head, "dpm"):
        raise ReplicateError(f"Figure 4 reads an AlignDet head, got {type(head).__name__}")
    feats = net.features(images)
    outs = head(feats)
    found: dict[str, list[Tensor]] = {r: [] for r in READINGS}
    for level, (x, refined) in enumerate(zip(feats, outs["refined"])):
        align = head.aligner(level)
        B, _, H, W = x.shape
        stride = head.strides[level]
        boxes = refined.view(B, H, W, 4).float()
        offsets = align.offsets(x, boxes, stride)
        k = align.kernel
        if offsets is None:
            grid = conv_implicit_rois(H, W, stride, k, device=x.device).expand(B, H, W, 4)
            readings = {"paper": grid, "bins": grid}
        else:
            points = circumscribed_rois(offsets.float(), k, stride)
            readings = {"paper": points, "bins": widen_by_half_a_bin(points, k)}
        for b, target in enumerate(targets):
            gt = torch.as_tensor(target["boxes"], dtype=torch.float32, device=x.device).reshape(-1, 4)
            if len(gt) == 0:
                continue
            anchors = boxes[b].reshape(-1, 4)
            keep = box_iou(anchors, gt).amax(dim=1) >= min_gt_iou
            for name, rois in readings.items():
                found[name].append(aligned_box_iou(rois[b].reshape(-1, 4)[keep], anchors[keep]))
    return {name: torch.cat(v) if v else torch.zeros(0) for name, v in found.items()}


def describe(ious: np.ndarray) -> dict[str, Any]:
    """Histogram over :data:`BINS`, count, mean and quartiles of one reading's IoUs."""
    counts, _ = np.histogram(ious, BINS)
    quartiles = np.quantile(ious, [0.25, 0.5, 0.75]).tolist() if len(ious) else [float("nan")] * 3
    return {"counts": counts.tolist(), "n": int(len(ious)), "mean": float(ious.mean()) if len(ious) else float("nan"),
            "quartiles": quartiles}


def figure_summary(record: dict[str, Any], model_cfg, profile: str, *, results_dir: str | Path = "results",
                   data_root: str | Path | None = None, scale: str | None = None, images: int = 50,
                   min_gt_iou: float = 0.5) -> dict[str, Any]:
    """``{"paper": {...}, "bins": {...}, "key": run key, "settings": ...}`` of a trained AlignDet run over its
    first ``images`` val images (:func:`describe` of each reading); cached per run key and settings."""
    from ..data.batching import Collate
    from .cache import cached_or_trained

    settings = {"images": images, "min_gt_iou": min_gt_iou, "scale": scale}
    path, cached, trained = cached_or_trained(record, model_cfg, profile, "align-rois", settings,
                                              "AlignDet RoI summary", results_dir=results_dir, data_root=data_root,
                                              scale=scale)
    if cached is not None:
        return cached
    net, val_set = trained
    net = net.eval()
    device = next(net.parameters()).device
    collate = Collate()
    found: dict[str, list[np.ndarray]] = {r: [] for r in READINGS}
    for start in range(0, min(images, len(val_set)), 8):
        batch = collate([val_set[i] for i in range(start, min(start + 8, images, len(val_set)))])
        ious = roi_anchor_ious(net, batch.images.to(device), batch.targets, min_gt_iou)
        for name in READINGS:
            found[name].append(ious[name].cpu().numpy())
    document = {"key": record["key"], "settings": settings,
                **{name: describe(np.concatenate(found[name])) for name in READINGS},
                "provenance": record.get("provenance", {})}
    atomic_write_json(path, document)
    return document


def summary_frame(summaries: dict[str, dict[str, Any]]):
    """One row per variant: locations read, and the mean and median IoU under each reading."""
    import pandas as pd

    rows = {label: {"locations": s["paper"]["n"], "mean IoU (paper)": s["paper"]["mean"],
                    "median IoU (paper)": s["paper"]["quartiles"][1], "mean IoU (bins)": s["bins"]["mean"],
                    "median IoU (bins)": s["bins"]["quartiles"][1]} for label, s in summaries.items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("variant")


def verdict(summaries: dict[str, dict[str, Any]], conv: str, deform: str) -> str:
    """The paper's reading of Fig. 4 ("deformable convolutions actually learn better alignment than vanilla
    3x3 convolutions but the overall alignment with learned anchors is still far from ideal") on ours."""
    c, d = summaries[conv], summaries[deform]
    parts = []
    for reading in READINGS:
        cm, dm = c[reading]["mean"], d[reading]["mean"]
        side = "better" if dm > cm else "not better"
        parts.append(f"{reading} reading: {deform} {dm:.3f} vs {conv} {cm:.3f} mean IoU, {side} aligned")
    ideal = max(c["paper"]["mean"], d["paper"]["mean"])
    tail = "far from ideal (mean IoU below 0.7)" if ideal < 0.7 else "close to the refined anchors (mean IoU >= 0.7)"
    return "; ".join(parts) + f". Both are {tail}."


def plot_distributions(summaries: dict[str, dict[str, Any]], reading: str = "paper"):
    """Fig. 4: the share of locations per IoU bin, one line per variant."""
    import matplotlib.pyplot as plt

    if reading not in READINGS:
        raise ReplicateError(f"reading must be one of {READINGS}, got {reading!r}")
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    centres = (BINS[:-1] + BINS[1:]) / 2
    for label, s in summaries.items():
        counts = np.asarray(s[reading]["counts"], dtype=float)
        ax.plot(centres, counts / max(counts.sum(), 1.0), marker="o", markersize=3, label=label)
    ax.set_xlabel("IoU between the implicit RoI and the refined anchor")
    ax.set_ylabel("share of locations")
    ax.set_title(f"implicit RoIs vs refined anchors ({reading} reading)", fontsize="small")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
