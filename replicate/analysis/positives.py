"""How many positives a dense detector's own assignment rule gives each object of a dataset.

A benchmark statistic for the calibration page: the seven ranking baselines differ first in how they
assign training samples (RetinaNet: anchors with IoU >= 0.5; FCOS: points inside the box within the
level's regression range; FoveaBox: points of the box's central region, on every level whose scale range
holds the box; ATSS, GFL and GFLv2: the top-k closest anchors per level, kept above mean + std of their
IoUs). A detector that trains on more positives per object learns faster, and on a schedule that is still
on the rising part of its learning curve that shows as a higher AP, whatever it would be at convergence.

Only rules that ignore the predictions are measured here (each head's ``assign_by_rule``; a plug-in
assigner that reads the predictions, such as MOD's APS, has no such statistic before training). The
images are never read: each annotated image becomes a zero tensor of its resized and padded shape, which
is all an assignment rule sees of it, so the same function measures COCO from its annotation file alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.synth_spec import LARGE_AREA, SMALL_AREA
from ..data.transforms import Scale, keep_ratio_size
from ..io import read_json
from ..models.detector import DetectorConfig, build_detector

BUCKETS = ("small", "medium", "large")


def _images(ann_file: str | Path, scale: Scale, size_divisor: int, max_images: int) -> list[dict]:
    """The first ``max_images`` images (by id) with non-crowd objects: padded shape and targets at ``scale``."""
    data = read_json(ann_file, what="annotation file")
    by_image: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    out = []
    for image in sorted(data["images"], key=lambda im: im["id"]):
        anns = by_image.get(image["id"], [])
        objects = [a for a in anns if not a.get("iscrowd", 0)]
        if not objects:
            continue
        h, w = keep_ratio_size(image["height"], image["width"], scale)
        sy, sx = h / image["height"], w / image["width"]

        def xyxy(rows: list[dict]) -> torch.Tensor:
            b = torch.tensor([a["bbox"] for a in rows], dtype=torch.float32).reshape(-1, 4)
            return torch.stack([b[:, 0] * sx, b[:, 1] * sy, (b[:, 0] + b[:, 2]) * sx, (b[:, 1] + b[:, 3]) * sy], 1)

        area = np.array([a["area"] for a in objects], dtype=float)  # original pixels, as COCOeval buckets them
        out.append({"shape": tuple(math.ceil(v / size_divisor) * size_divisor for v in (h, w)),
                    "target": {"boxes": xyxy(objects), "labels": torch.zeros(len(objects), dtype=torch.long),
                               "ignore_boxes": xyxy([a for a in anns if a.get("iscrowd", 0)])},
                    "bucket": np.where(area < SMALL_AREA, 0, np.where(area < LARGE_AREA, 1, 2))})
        if len(out) == max_images:
            break
    return out


@torch.no_grad()
def positive_counts(ann_file: str | Path, scale: Scale, cfg: DetectorConfig, *, max_images: int = 200,
                    size_divisor: int = 32, batch_size: int = 16) -> pd.DataFrame:
    """One row per non-crowd object of the first ``max_images`` annotated images: its COCO size bucket, the
    number of priors ``cfg``'s head assigns to it as positives (its ``assign_by_rule``) at ``scale``, the
    pyramid levels they lie on and their mean offset from the box centre (:func:`_object_rows`).
    Images are batched by padded shape; the model is built without its backbone weights (the rule reads
    only the feature maps' shapes)."""
    model = build_detector(replace(cfg, backbone=replace(cfg.backbone, weights=None))).eval()
    images = _images(ann_file, scale, size_divisor, max_images)
    groups: dict[tuple[int, int], list[dict]] = {}
    for im in images:
        groups.setdefault(im["shape"], []).append(im)
    rows = []
    for shape, members in groups.items():
        for start in range(0, len(members), batch_size):
            batch = members[start:start + batch_size]
            outs = model.raw_outputs(torch.zeros(len(batch), 3, *shape))
            a, _ = model.head.assign_by_rule(outs, [im["target"] for im in batch])
            priors = model.head.priors(outs)
            for b, im in enumerate(batch):
                rows += _object_rows(a.gt_index[b], a.pos_mask[b], priors.centres, priors.level, im)
    return pd.DataFrame(rows, columns=["bucket", "positives", "levels", "centre offset"])


def _object_rows(gt_index: torch.Tensor, pos: torch.Tensor, centres: torch.Tensor, level: torch.Tensor,
                 image: dict) -> list[dict]:
    """Per object of one image: positives, pyramid levels they lie on, and their mean offset from the box
    centre as a fraction of the half-extent (Chebyshev: 0 at the centre, 1 on the box's edge; NaN without
    positives)."""
    boxes = image["target"]["boxes"]
    m = len(boxes)
    idx = gt_index[pos]
    counts = torch.bincount(idx, minlength=m)[:m]
    levels = torch.zeros(m, int(level.max()) + 1, dtype=torch.bool)
    levels[idx, level[pos]] = True
    box = boxes[idx]
    half = ((box[:, 2:] - box[:, :2]) / 2).clamp(min=1e-6)
    offset = ((centres[pos] - (box[:, :2] + box[:, 2:]) / 2).abs() / half).amax(dim=1)
    mean_offset = torch.zeros(m).index_add_(0, idx, offset) / counts.clamp(min=1)
    mean_offset[counts == 0] = math.nan
    return [{"bucket": BUCKETS[k], "positives": int(n), "levels": int(lv), "centre offset": float(o)}
            for k, n, lv, o in zip(image["bucket"], counts.tolist(), levels.sum(1).tolist(), mean_offset.tolist())]


def positives_table(ann_file: str | Path, scale: Scale, configs: Mapping[str, DetectorConfig], *,
                    max_images: int = 200, size_divisor: int = 32) -> pd.DataFrame:
    """Per detector (``configs``: label -> config): objects counted, mean positives per object, the share of
    objects that get none (they train nothing but negatives), the pyramid levels an object is learned on,
    how far from the box centre its positives lie (mean over objects of their mean Chebyshev offset, a
    fraction of the half-extent), and positives per object in each COCO size bucket."""
    out = []
    for label, cfg in configs.items():
        counts = positive_counts(ann_file, scale, cfg, max_images=max_images, size_divisor=size_divisor)
        row = {"detector": label, "objects": len(counts), "positives per object": counts["positives"].mean(),
               "objects without a positive %": 100 * float((counts["positives"] == 0).mean()),
               "levels per object": counts["levels"].mean(),
               "centre offset of positives": counts["centre offset"].mean()}
        for bucket in BUCKETS:
            part = counts.loc[counts["bucket"] == bucket, "positives"]
            row[f"per {bucket} object"] = part.mean() if len(part) else math.nan
        out.append(row)
    return pd.DataFrame(out).set_index("detector").round(2)
