"""SALT-Net Figures 1 and 9: where an object's classification scores and its IoUs peak.

Fig. 1 (b, c) shows, for one object, a trained ATSS's classification score and the IoU of its predicted box
with the ground truth at every location: the two distributions peak at different locations, so the
top-scored detection is not the best-localized one. Fig. 9 (a, b) shows the same after SALT (the peaks
coincide) and Fig. 9 (c) the stage-one IoUs after the SDR loss (close to the stage-two ones).

Per ground-truth object of the first ``images`` validation images, over the priors whose centre lies inside
it (every pyramid level; the object's "pixels"), with the score of the object's class:

* ``aligned``: the top-scored prior is the best-localized one (the two peaks at one location);
* ``gap = best_iou - top_iou``: the IoU the top-scored prior gives away;
* ``distance``: between the two priors' centres, divided by the square root of the object's area.

Objects without a prior centre inside are left out. The summary of a run (shares, means, the per-object
distribution of the gap and one example object's two maps) is cached under
``<results_dir>/analysis/<profile>/task-peaks[-coarse]-<run key>.json`` (:mod:`replicate.analysis.cache`):
the model's ``test.boxes`` picks which stage's boxes are read, and a row reading the stage-one boxes of a
run has its own cache.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torchvision.ops import box_iou

from ..errors import ReplicateError
from ..io import atomic_write_json
from .misalignment import ImagePredictions

GAP_BINS = np.linspace(0.0, 1.0, 21)
COLUMNS = ["gt", "region", "top_iou", "best_iou", "gap", "aligned", "distance"]


def object_peaks(pred: ImagePredictions) -> pd.DataFrame:
    """One row per ground-truth object with a prior centre inside it (see the module docstring)."""
    if pred.gt_boxes.shape[0] == 0:
        return pd.DataFrame(columns=COLUMNS)
    priors, gts = pred.priors.float(), pred.gt_boxes.float()
    centres = (priors[:, :2] + priors[:, 2:]) / 2
    inside = ((centres[:, None] > gts[None, :, :2]) & (centres[:, None] < gts[None, :, 2:])).all(dim=-1)  # (N, G)
    iou = box_iou(pred.boxes.float(), gts)  # (N, G)
    score = pred.scores.float()[:, pred.gt_labels]  # (N, G)
    top = torch.where(inside, score, torch.full_like(score, -1.0)).argmax(dim=0)
    best = torch.where(inside, iou, torch.full_like(iou, -1.0)).argmax(dim=0)
    cols = torch.arange(gts.shape[0])
    top_iou, best_iou = iou[top, cols], iou[best, cols]
    area = ((gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1])).clamp(min=1e-6)
    distance = (centres[top] - centres[best]).norm(dim=-1) / area.sqrt()
    keep = inside.any(dim=0)
    return pd.DataFrame({"gt": cols[keep].numpy(), "region": inside.sum(dim=0)[keep].numpy(),
                         "top_iou": top_iou[keep].double().numpy(), "best_iou": best_iou[keep].double().numpy(),
                         "gap": (best_iou - top_iou)[keep].double().numpy(), "aligned": (top == best)[keep].numpy(),
                         "distance": distance[keep].double().numpy()})


@torch.no_grad()
def example_maps(net: torch.nn.Module, sample: tuple[torch.Tensor, dict], boxes: str = "final") -> dict[str, Any]:
    """One object's classification-score and IoU maps (Fig. 1 b-c, Fig. 9): the largest object of a val sample,
    on the pyramid level of its best-localized prior. Box and peaks (over the cells inside the object, as in
    :func:`object_peaks`) are given in that level's cells."""
    from ..data.batching import Collate

    head = net.head
    batch = Collate()([sample])
    target = batch.targets[0]
    outs = net(batch.images.to(next(net.parameters()).device))
    probs, decoded = head.decoded(outs, boxes)
    per_level = head.priors(outs).per_level
    gts, labels = target["boxes"].float(), target["labels"]
    g = int(((gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1])).argmax())
    iou = box_iou(decoded[0].float(), gts[g:g + 1])[:, 0]
    score = probs[0, :, labels[g]].float()
    level = int(np.searchsorted(np.cumsum(per_level), int(iou.argmax()), side="right"))
    start = int(sum(per_level[:level]))
    h, w = outs["cls"][level].shape[-2:]
    stride = float(head.cfg.anchors.strides[level])
    score_map = score[start:start + h * w].view(h, w)
    iou_map = iou[start:start + h * w].view(h, w)
    box = [float(v) / stride - 0.5 for v in gts[g]]  # in cell coordinates (cell centres at integers)
    rows, cols = torch.arange(h, dtype=torch.float32)[:, None], torch.arange(w, dtype=torch.float32)[None]
    inside = (cols > box[0]) & (cols < box[2]) & (rows > box[1]) & (rows < box[3])

    def peak(m: torch.Tensor) -> list[int]:  # (row, column) of the maximum over the cells inside the object
        return [int(i) for i in divmod(int(torch.where(inside, m, torch.full_like(m, -1.0)).argmax()), w)]

    return {"level": level, "stride": stride, "label": int(labels[g]), "box": box,
            "score": score_map.round(decimals=4).tolist(), "iou": iou_map.round(decimals=4).tolist(),
            "score_peak": peak(score_map), "iou_peak": peak(iou_map)}


def peak_summary(record: dict[str, Any], model_cfg, profile: str, *, results_dir: str | Path = "results",
                 data_root: str | Path | None = None, scale: str | None = None, images: int = 100) -> dict[str, Any]:
    """The summary of a run over its first ``images`` val images, for the boxes ``model_cfg.test.boxes`` names;
    cached per run key, stage and settings."""
    from .cache import cached_or_trained, dense_predictions

    stage = model_cfg.test.boxes
    kind = "task-peaks" if stage == "final" else f"task-peaks-{stage}"
    settings = {"images": images, "boxes": stage, "scale": scale}
    path, cached, trained = cached_or_trained(record, model_cfg, profile, kind, settings, "task-peak summary",
                                              results_dir=results_dir, data_root=data_root, scale=scale)
    if cached is not None:
        return cached
    net, val_set = trained
    if not hasattr(net.head, "decoded"):
        raise ReplicateError(f"the task-peak analysis reads heads that decode their dense outputs (GFL family, "
                             f"SALT-Net), got {type(net.head).__name__}")
    n = min(images, len(val_set))
    preds = [p for start in range(0, n, 2)
             for p in dense_predictions(net, val_set, range(start, min(start + 2, n)), boxes=stage)]
    peaks = pd.concat([object_peaks(p) for p in preds], ignore_index=True)
    if len(peaks) == 0:
        raise ReplicateError(f"no object of the first {n} val images has a prior centre inside it")
    first = val_set[next(i for i, p in enumerate(preds) if len(p.gt_boxes))]  # preds[i] is val_set[i]
    counts, _ = np.histogram(peaks["gap"].to_numpy(), GAP_BINS)
    document = {"key": record["key"], "settings": settings, "objects": int(len(peaks)),
                "share_aligned": float(peaks["aligned"].mean()), "mean_gap": float(peaks["gap"].mean()),
                "median_distance": float(peaks["distance"].median()), "mean_top_iou": float(peaks["top_iou"].mean()),
                "mean_best_iou": float(peaks["best_iou"].mean()), "gap_counts": counts.tolist(),
                "example": {"image_id": int(first[1]["image_id"]), **example_maps(net.eval(), first, stage)},
                "provenance": record.get("provenance", {})}
    atomic_write_json(path, document)
    return document


def summary_frame(summaries: dict[str, dict[str, Any]]) -> pd.DataFrame:
    rows = {label: {"objects": s["objects"], "peaks coincide": s["share_aligned"], "mean IoU gap": s["mean_gap"],
                    "median peak distance": s["median_distance"], "top-scored IoU": s["mean_top_iou"],
                    "best IoU": s["mean_best_iou"]} for label, s in summaries.items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")


def verdict(summaries: dict[str, dict[str, Any]], baseline: str, salt: str) -> str:
    """The paper's reading of Fig. 9 on ours: after SALT "the detection result with the highest classification
    score also has the best regression result"."""
    b, s = summaries[baseline], summaries[salt]
    more = s["share_aligned"] > b["share_aligned"]
    smaller = s["mean_gap"] < b["mean_gap"]
    return (f"{salt}: the peaks coincide for {s['share_aligned']:.1%} of the objects (mean IoU gap "
            f"{s['mean_gap']:.3f}), against {b['share_aligned']:.1%} ({b['mean_gap']:.3f}) for {baseline}: "
            + ("more often aligned, with a smaller gap." if more and smaller else
               "more often aligned, but not with a smaller gap." if more else
               "not more often aligned."))


def plot_maps(summaries: dict[str, dict[str, Any]]):
    """Fig. 1 (b, c) / Fig. 9: one example object's classification-score and IoU maps per model, the object's
    box, and the two peaks (circle: top score, cross: best IoU)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(len(summaries), 2, figsize=(6.4, 3.0 * len(summaries)), squeeze=False)
    for row, (label, s) in enumerate(summaries.items()):
        ex = s["example"]
        for col, (name, title) in enumerate((("score", "classification score"), ("iou", "IoU with the object"))):
            ax = axes[row, col]
            im = ax.imshow(np.asarray(ex[name]), cmap="viridis", vmin=0.0, vmax=max(1e-6, float(np.max(ex[name]))))
            x1, y1, x2, y2 = ex["box"]
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="white", linewidth=1))
            ax.plot(*ex["score_peak"][::-1], "o", mfc="none", mec="red", ms=8)
            ax.plot(*ex["iou_peak"][::-1], "x", color="orange", ms=8)
            ax.set_title(f"{label}: {title} (P{round(math.log2(ex['stride']))})", fontsize="x-small")
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def plot_gaps(summaries: dict[str, dict[str, Any]]):
    """The share of objects per IoU gap between their top-scored and their best-localized prior."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    centres = (GAP_BINS[:-1] + GAP_BINS[1:]) / 2
    for label, s in summaries.items():
        counts = np.asarray(s["gap_counts"], dtype=float)
        ax.plot(centres, counts / max(counts.sum(), 1.0), marker="o", markersize=3, label=label)
    ax.set_xlabel("best IoU - IoU of the top-scored prior")
    ax.set_ylabel("share of objects")
    ax.set_yscale("log")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
