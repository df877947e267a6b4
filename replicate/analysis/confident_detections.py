"""SALT-Net Figure 10: the stage-two baseline's detections beside SALT-Net's.

Fig. 10 shows detections of GFLv2 (the stage-two baseline decoder) and of SALT-Net on a few images; the
paper's reading (Sec. 4.5): "SALT can align the regression and detection tasks and thereby suppress some
low IoU but high classification score results". The figure shows it; this module counts it.

Every final detection (the model's own test settings: score threshold, NMS, at most 100 per image) of the
first ``images`` validation images gets the IoU of its box with the best-overlapping ground-truth box of its
class (0 when the image has none). The detections are binned by score and that IoU
(:func:`score_iou_counts`), so the share of *confident but poorly localized* detections can be read at any
score threshold (:func:`low_iou_share`): those scoring at least ``score_thr`` whose IoU is below 0.5 (the
IoU at which COCO's AP50 counts a detection as a hit). ``score_thr`` = 0.3 is the threshold at which
mmdetection draws detections, so the counted detections are the ones such a figure shows. One image's
detections above it are kept for the drawing. The summary is cached under
``<results_dir>/analysis/<profile>/confident-detections-<run key>.json`` (:mod:`replicate.analysis.cache`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torchvision.ops import box_iou

from ..errors import ReplicateError
from ..io import atomic_write_json
from .drawing import draw_box, draw_canvas, image_file

SCORE_THR = 0.3  # the score above which a detection is drawn (mmdetection's show_result default)
LOW_IOU = 0.5  # below this IoU a detection is not a hit at AP50
BINS = 20
EDGES = np.linspace(0.0, 1.0, BINS + 1)  # score and IoU bins, 0.05 wide


def best_iou(boxes: Tensor, labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> Tensor:
    """(D,) each detection's IoU with the best-overlapping ground truth of its class; 0 where there is none."""
    if boxes.shape[0] == 0 or gt_boxes.shape[0] == 0:
        return torch.zeros(boxes.shape[0])
    iou = box_iou(boxes.float(), gt_boxes.float())
    iou = torch.where(labels[:, None] == gt_labels[None, :], iou, torch.zeros_like(iou))
    return iou.amax(dim=1)


def score_iou_counts(scores: np.ndarray, ious: np.ndarray) -> np.ndarray:
    """(20, 20) detections per (score bin, IoU bin) of :data:`EDGES`: bin ``floor(20 v)``, so each bin holds its
    lower edge (0.3 is in the 0.30-0.35 bin, not lost to rounding) and the last holds 1.0 too."""
    def bins(values: np.ndarray) -> np.ndarray:
        return np.clip(np.floor(np.asarray(values, dtype=np.float64) * BINS + 1e-9), 0, BINS - 1).astype(np.int64)

    counts = np.zeros((BINS, BINS), dtype=np.int64)
    np.add.at(counts, (bins(scores), bins(ious)), 1)
    return counts


def _edge(value: float, what: str) -> int:
    """The index of ``value`` among :data:`EDGES`; a clear error when it is not one of them."""
    hit = np.flatnonzero(np.isclose(EDGES, value))
    if len(hit) == 0:
        raise ReplicateError(f"{what} {value} is not a multiple of 0.05 (the bins' edges)")
    return int(hit[0])


def low_iou_share(counts: np.ndarray, score_thr: float = SCORE_THR, low_iou: float = LOW_IOU) -> tuple[float, int]:
    """``(share, n)``: of the ``n`` detections scoring at least ``score_thr``, the share with an IoU below
    ``low_iou``; both thresholds must be bin edges of :data:`EDGES`. ``share`` is NaN when ``n`` is 0."""
    s, i = _edge(score_thr, "score threshold"), _edge(low_iou, "IoU threshold")
    confident = np.asarray(counts)[s:]
    n = int(confident.sum())
    return (float(confident[:, :i].sum()) / n if n else float("nan")), n


@torch.no_grad()
def image_detections(net: torch.nn.Module, samples: Sequence[tuple[Tensor, dict]]) -> list[dict[str, Tensor]]:
    """The model's final detections of each sample, with ``iou`` (:func:`best_iou`), in the frame of its
    ground truth (the resized image)."""
    from ..data.batching import Collate

    batch = Collate()(list(samples))
    dets = net.eval().predict(batch.images.to(next(net.parameters()).device), batch.image_sizes)
    out = []
    for d, t in zip(dets, batch.targets):
        d = {k: v.cpu() for k, v in d.items() if k in ("boxes", "scores", "labels")}
        out.append({**d, "iou": best_iou(d["boxes"], d["labels"], t["boxes"], t["labels"])})
    return out


def detections_summary(record: dict[str, Any], model_cfg, profile: str, *, results_dir: str | Path = "results",
                       data_root: str | Path | None = None, scale: str | None = None, images: int = 100,
                       score_thr: float = SCORE_THR) -> dict[str, Any]:
    """A run's detections of its first ``images`` val images binned by score and IoU, the share of confident
    low-IoU ones at ``score_thr``, and the first image with objects (its ground truth and its detections
    scoring at least ``score_thr``) for the drawing; cached per run key and settings."""
    from .cache import cached_or_trained

    settings = {"images": images, "score_thr": score_thr, "scale": scale}
    path, cached, trained = cached_or_trained(record, model_cfg, profile, "confident-detections", settings,
                                              "confident-detection summary", results_dir=results_dir,
                                              data_root=data_root, scale=scale)
    if cached is not None:
        return cached
    net, val_set = trained
    n = min(images, len(val_set))
    scores, ious, example = [], [], None
    for start in range(0, n, 2):
        samples = [val_set[i] for i in range(start, min(start + 2, n))]
        for (image, target), d in zip(samples, image_detections(net, samples)):
            scores.append(d["scores"].double().numpy())
            ious.append(d["iou"].double().numpy())
            if example is None and len(target["boxes"]):
                keep = d["scores"] >= score_thr
                image_id = int(target["image_id"])
                example = {"image_id": image_id, "image_size": [int(v) for v in image.shape[-2:]],
                           **image_file(val_set, image_id), "gt_boxes": target["boxes"].float().tolist(),
                           "boxes": d["boxes"][keep].tolist(), "scores": d["scores"][keep].tolist(),
                           "ious": d["iou"][keep].tolist()}
    counts = score_iou_counts(np.concatenate(scores) if scores else np.zeros(0),
                              np.concatenate(ious) if ious else np.zeros(0))
    share, confident = low_iou_share(counts, score_thr)
    document = {"key": record["key"], "settings": settings, "images": n, "detections": int(counts.sum()),
                "confident": confident, "confident_per_image": confident / max(n, 1),
                "share_low_iou": None if np.isnan(share) else share, "counts": counts.tolist(),
                "example": example, "provenance": record.get("provenance", {})}
    atomic_write_json(path, document)
    return document


def _mean_confident_iou(counts: np.ndarray, score_thr: float) -> float:
    s = _edge(score_thr, "score threshold")
    per_iou = np.asarray(counts)[s:].sum(axis=0)
    centres = (EDGES[:-1] + EDGES[1:]) / 2
    return float((per_iou * centres).sum() / per_iou.sum()) if per_iou.sum() else float("nan")


def summary_frame(summaries: dict[str, dict[str, Any]]) -> pd.DataFrame:
    rows = {}
    for label, s in summaries.items():
        thr = s["settings"]["score_thr"]
        rows[label] = {"detections": s["detections"], f"score >= {thr:g}": s["confident"],
                       "per image": s["confident_per_image"],
                       f"of them IoU < {LOW_IOU:g}": s["share_low_iou"],
                       "their mean IoU (binned)": _mean_confident_iou(np.asarray(s["counts"]), thr)}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")


def verdict(summaries: dict[str, dict[str, Any]], baseline: str, salt: str) -> str:
    """The paper's reading of Fig. 10: SALT-Net keeps fewer high-score, low-IoU detections than the baseline."""
    b, s = summaries[baseline], summaries[salt]
    thr = s["settings"]["score_thr"]
    if b["share_low_iou"] is None or s["share_low_iou"] is None:
        return f"not checked: a model has no detection scoring at least {thr:g}"
    fewer = s["share_low_iou"] < b["share_low_iou"]
    return (f"{salt}: {s['share_low_iou']:.1%} of its {s['confident']} detections scoring at least {thr:g} overlap "
            f"their object by less than IoU {LOW_IOU:g}, against {b['share_low_iou']:.1%} of {b['confident']} for "
            f"{baseline}: " + ("fewer confident, poorly localized detections, as the paper reads Figure 10."
                               if fewer else "not fewer: the paper's reading of Figure 10 does not show here."))


def plot_low_iou_share(summaries: dict[str, dict[str, Any]]):
    """The share of detections with IoU below 0.5 among those scoring at least each threshold."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    thresholds = EDGES[1:-1]
    for label, s in summaries.items():
        counts = np.asarray(s["counts"])
        shares = [low_iou_share(counts, float(t))[0] for t in thresholds]
        ax.plot(thresholds, shares, marker="o", markersize=3, label=label)
    ax.axvline(next(iter(summaries.values()))["settings"]["score_thr"], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("score threshold")
    ax.set_ylabel(f"share with IoU < {LOW_IOU:g}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_examples(summaries: dict[str, dict[str, Any]]):
    """Figure 10's layout: one panel per model on its first image with objects, the ground truth dashed white,
    each detection scoring at least the threshold green (IoU >= 0.5) or red (a confident, poorly localized one),
    with its score."""
    import matplotlib.pyplot as plt

    shown = {label: s["example"] for label, s in summaries.items() if s.get("example")}
    if not shown:
        raise ReplicateError("no summary holds an example image to draw")
    fig, axes = plt.subplots(1, len(shown), figsize=(4.5 * len(shown), 4.4), squeeze=False)
    for ax, (label, ex) in zip(axes[0], shown.items()):
        draw_canvas(ax, ex)
        for box in ex["gt_boxes"]:
            draw_box(ax, box, "white", linestyle="--")
        for box, score, iou in zip(ex["boxes"], ex["scores"], ex["ious"]):
            color = "lime" if iou >= LOW_IOU else "red"
            draw_box(ax, box, color)
            ax.text(box[0], box[1], f"{score:.2f}", color=color, fontsize=6, va="bottom")
        ax.set_title(f"{label}\nimage {ex['image_id']}: {len(ex['boxes'])} detections", fontsize="x-small")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig
