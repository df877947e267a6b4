"""SALT-Net Figure 8: the regression-aware and the classification-aware points, and their sensitive regions.

Fig. 8 draws, for detected objects, SALT's nine regression-aware points (Eq. 2-3, upper row) and its nine
classification-aware points (Eq. 5, lower row), each set with its "sensitive region", the box around it. The
paper's reading (Sec. 4.1): "classification and regression are sensitive to different locations of the
object", the two regions being distinct.

Per ground-truth object of the first ``images`` validation images, at the location that detects it (the
top-scored prior, at the object's class, among those whose centre lies inside it: the location whose box
survives NMS, as in :mod:`replicate.analysis.task_peaks`), both point sets in image pixels
(``location + stride * (dx, dy)``, the frame of the coarse box the points are built on):

* ``region_iou``: IoU of the two sensitive regions (1: the tasks read the same region);
* ``reg_gt_iou`` / ``cls_gt_iou``: IoU of each region with the object's box;
* ``reg_inside`` / ``cls_inside``: the share of each set's points inside the object's box;
* ``shift``: the distance between the two sets' centroids, divided by the square root of the object's area.

The book's summary (:func:`points_summary`) counts two regions as distinct when their IoU is below 0.5 (the
IoU at which detection evaluation calls two boxes the same object); it is cached under
``<results_dir>/analysis/<profile>/task-points-<run key>.json`` (:mod:`replicate.analysis.cache`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..errors import ReplicateError
from ..io import atomic_write_json
from ..models._utils import flatten_levels
from ..models.losses import aligned_box_iou
from .drawing import draw_box, draw_canvas, image_file

DISTINCT_IOU = 0.5  # regions overlapping less than this are distinct (the IoU that matches a detection)
COLUMNS = ["gt", "prior", "score", "region_iou", "reg_gt_iou", "cls_gt_iou", "reg_inside", "cls_inside", "shift"]


def to_image(points: Tensor, centres: Tensor, strides: Tensor) -> Tensor:
    """(P, 18) (dy, dx) pairs in stride units about each prior's location -> (P, 9, 2) (x, y) image pixels."""
    dydx = points.reshape(points.shape[0], -1, 2)
    return centres[:, None, :] + strides[:, None, None] * dydx.flip(-1)


def region(points: Tensor) -> Tensor:
    """(..., K, 2) xy point sets -> (..., 4) the xyxy box around each (its sensitive region)."""
    return torch.cat((points.amin(dim=-2), points.amax(dim=-2)), dim=-1)


def _inside(points: Tensor, boxes: Tensor) -> Tensor:
    """(G, K, 2) points, (G, 4) boxes -> (G,) share of each set's points inside (or on) its box."""
    lo, hi = boxes[:, None, :2], boxes[:, None, 2:]
    return ((points >= lo) & (points <= hi)).all(dim=-1).float().mean(dim=-1)


def object_points(centres: Tensor, strides: Tensor, scores: Tensor, reg_points: Tensor, cls_points: Tensor,
                  gt_boxes: Tensor, gt_labels: Tensor) -> tuple[pd.DataFrame, Tensor, Tensor]:
    """One row per object with a prior centre inside it (see the module docstring), and the (G', 9, 2)
    regression- and classification-aware points (image pixels) of the prior that detects each listed object.

    ``centres`` (P, 2) xy and ``strides`` (P,) of the priors; ``scores`` (P, C) probabilities; ``reg_points`` and
    ``cls_points`` (P, 18) as the head gives them (:func:`to_image`); ``gt_boxes`` (G, 4), ``gt_labels`` (G,).
    """
    empty = torch.zeros(0, reg_points.shape[-1] // 2, 2)
    if gt_boxes.shape[0] == 0:
        return pd.DataFrame(columns=COLUMNS), empty, empty
    gts = gt_boxes.float()
    inside = ((centres[:, None] > gts[None, :, :2]) & (centres[:, None] < gts[None, :, 2:])).all(dim=-1)  # (P, G)
    score = scores.float()[:, gt_labels]  # (P, G)
    top = torch.where(inside, score, torch.full_like(score, -1.0)).argmax(dim=0)  # (G,)
    keep = inside.any(dim=0)
    g = torch.arange(gts.shape[0])[keep]
    top, gts = top[keep], gts[keep]
    reg = to_image(reg_points[top].float(), centres[top].float(), strides[top].float())
    cls = to_image(cls_points[top].float(), centres[top].float(), strides[top].float())
    reg_box, cls_box = region(reg), region(cls)
    area = ((gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1])).clamp(min=1e-6)
    frame = pd.DataFrame({
        "gt": g.numpy(), "prior": top.numpy(), "score": score[top, g].double().numpy(),
        "region_iou": aligned_box_iou(reg_box, cls_box).double().numpy(),
        "reg_gt_iou": aligned_box_iou(reg_box, gts).double().numpy(),
        "cls_gt_iou": aligned_box_iou(cls_box, gts).double().numpy(),
        "reg_inside": _inside(reg, gts).double().numpy(), "cls_inside": _inside(cls, gts).double().numpy(),
        "shift": ((cls.mean(dim=1) - reg.mean(dim=1)).norm(dim=-1) / area.sqrt()).double().numpy()})
    return frame, reg, cls


def _salt_head(net: torch.nn.Module):
    from ..models.detectors.salt_net import SALTHead

    head = net.head
    if not isinstance(head, SALTHead) or not head.two_stage:
        raise ReplicateError(f"Figure 8's task-aware points need a SALT-Net head with its second stage (SALTHead, "
                             f"cls_points not 'off'), got {type(head).__name__}")
    return head


@torch.no_grad()
def image_points(net: torch.nn.Module, samples: Sequence[tuple[Tensor, dict]]) -> list[tuple[pd.DataFrame, Tensor, Tensor]]:
    """:func:`object_points` of each sample, from one forward pass of SALT-Net over them."""
    from ..data.batching import Collate
    from ..models.detectors.atss import anchor_centres

    head = _salt_head(net)
    batch = Collate()(list(samples))
    outs = net.eval()(batch.images.to(next(net.parameters()).device))
    probs, _ = head.decoded(outs)
    levels = head.anchors(outs["cls"])
    centres = anchor_centres(torch.cat(levels)).cpu()
    strides = head.level_strides(levels, head.cfg.anchors.strides).cpu()
    reg, cls = flatten_levels(outs["reg_points"], 18).cpu(), flatten_levels(outs["cls_points"], 18).cpu()
    return [object_points(centres, strides, probs[i].cpu(), reg[i], cls[i], t["boxes"].float(), t["labels"])
            for i, t in enumerate(batch.targets)]


def points_summary(record: dict[str, Any], model_cfg, profile: str, *, results_dir: str | Path = "results",
                   data_root: str | Path | None = None, scale: str | None = None, images: int = 100,
                   examples: int = 3) -> dict[str, Any]:
    """A SALT-Net run's statistics over the objects of its first ``images`` val images, and the point sets of the
    largest object of each of the first ``examples`` images with objects (with the image's file, for the
    drawing); cached per run key and settings."""
    from .cache import cached_or_trained

    settings = {"images": images, "examples": examples, "scale": scale}
    path, cached, trained = cached_or_trained(record, model_cfg, profile, "task-points", settings,
                                              "task-point summary", results_dir=results_dir, data_root=data_root,
                                              scale=scale)
    if cached is not None:
        return cached
    net, val_set = trained
    n = min(images, len(val_set))
    frames, shown = [], []
    for start in range(0, n, 2):
        samples = [val_set[i] for i in range(start, min(start + 2, n))]
        for sample, (frame, reg, cls) in zip(samples, image_points(net, samples)):
            frames.append(frame)
            if len(frame) and len(shown) < examples:
                target = sample[1]
                boxes = target["boxes"].float()[torch.tensor(frame["gt"].to_numpy(), dtype=torch.long)]
                j = int(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).argmax())
                image_id = int(target["image_id"])
                shown.append({"image_id": image_id, "image_size": [int(v) for v in sample[0].shape[-2:]],
                              **image_file(val_set, image_id), "box": boxes[j].tolist(),
                              "label": int(target["labels"][int(frame["gt"].iloc[j])]),
                              "reg_points": reg[j].tolist(), "cls_points": cls[j].tolist(),
                              **{k: float(frame[k].iloc[j]) for k in ("score", "region_iou", "shift")}})
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    if len(table) == 0:
        raise ReplicateError(f"no object of the first {n} val images has a prior centre inside it")
    document = {"key": record["key"], "settings": settings, "objects": int(len(table)),
                "median_region_iou": float(table["region_iou"].median()),
                "share_distinct": float((table["region_iou"] < DISTINCT_IOU).mean()),
                "mean_reg_gt_iou": float(table["reg_gt_iou"].mean()),
                "mean_cls_gt_iou": float(table["cls_gt_iou"].mean()),
                "mean_reg_inside": float(table["reg_inside"].mean()),
                "mean_cls_inside": float(table["cls_inside"].mean()),
                "median_shift": float(table["shift"].median()),
                "region_iou_counts": np.histogram(table["region_iou"].to_numpy(), np.linspace(0, 1, 21))[0].tolist(),
                "examples": shown, "provenance": record.get("provenance", {})}
    atomic_write_json(path, document)
    return document


def summary_frame(summaries: dict[str, dict[str, Any]]) -> pd.DataFrame:
    rows = {label: {"objects": s["objects"], "regions' IoU (median)": s["median_region_iou"],
                    f"distinct (IoU < {DISTINCT_IOU})": s["share_distinct"],
                    "R-region IoU with the object": s["mean_reg_gt_iou"],
                    "C-region IoU with the object": s["mean_cls_gt_iou"],
                    "R-points inside": s["mean_reg_inside"], "C-points inside": s["mean_cls_inside"],
                    "centroid shift / sqrt(area) (median)": s["median_shift"]}
            for label, s in summaries.items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")


def verdict(summary: dict[str, Any], label: str) -> str:
    """The paper's reading of Fig. 8 on one run: the two tasks' sensitive regions are distinct."""
    share = summary["share_distinct"]
    reading = ("distinct for most objects, as Figure 8 shows" if share > 0.5 else
               "mostly one region: Figure 8's distinct regions do not show here")
    return (f"{label}: the regression- and classification-aware regions overlap with a median IoU of "
            f"{summary['median_region_iou']:.2f}; {share:.0%} of {summary['objects']} objects have regions "
            f"overlapping less than IoU {DISTINCT_IOU}: {reading}.")


def plot_points(summary: dict[str, Any], label: str):
    """Figure 8's layout for one run: one column per example object, the regression-aware points and their
    region above (blue), the classification-aware points and theirs below (red), the object's box dashed."""
    import matplotlib.pyplot as plt

    shown = summary["examples"]
    if not shown:
        raise ReplicateError(f"{label}: the summary holds no example object to draw")
    fig, axes = plt.subplots(2, len(shown), figsize=(3.0 * len(shown), 6.0), squeeze=False)
    for col, ex in enumerate(shown):
        pts = {"reg_points": np.asarray(ex["reg_points"]), "cls_points": np.asarray(ex["cls_points"])}
        everything = np.concatenate([pts["reg_points"], pts["cls_points"], np.asarray(ex["box"]).reshape(2, 2)])
        lo, hi = everything.min(axis=0), everything.max(axis=0)
        margin = 0.15 * float(max(hi - lo)) + 2.0
        for row, (name, color, title) in enumerate((("reg_points", "tab:blue", "regression-aware"),
                                                    ("cls_points", "tab:red", "classification-aware"))):
            ax = axes[row, col]
            draw_canvas(ax, ex)
            draw_box(ax, ex["box"], "white", linestyle="--")
            p = pts[name]
            draw_box(ax, [*p.min(axis=0), *p.max(axis=0)], color)
            ax.scatter(p[:, 0], p[:, 1], s=14, color=color, edgecolors="white", linewidths=0.5, zorder=3)
            h, w = ex["image_size"]  # the view: the object and both sets, within the image
            ax.set_xlim(max(0.0, lo[0] - margin), min(float(w), hi[0] + margin))
            ax.set_ylim(min(float(h), hi[1] + margin), max(0.0, lo[1] - margin))
            ax.set_title(f"image {ex['image_id']}: {title}" + (f"\nregions' IoU {ex['region_iou']:.2f}" if row else ""),
                         fontsize="x-small")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(label, fontsize="small")
    fig.tight_layout()
    return fig


def plot_region_ious(summaries: dict[str, dict[str, Any]]):
    """The share of objects per IoU between their two sensitive regions."""
    import matplotlib.pyplot as plt

    edges = np.linspace(0, 1, 21)
    centres = (edges[:-1] + edges[1:]) / 2
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    for label, s in summaries.items():
        counts = np.asarray(s["region_iou_counts"], dtype=float)
        ax.plot(centres, counts / max(counts.sum(), 1.0), marker="o", markersize=3, label=label)
    ax.axvline(DISTINCT_IOU, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("IoU of the regression- and classification-aware regions")
    ax.set_ylabel("share of objects")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
