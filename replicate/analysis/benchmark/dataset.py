"""The benchmark's objects against COCO's: the size buckets and RetinaNet's anchor coverage.

* :func:`size_shares`: COCO's small / medium / large buckets (area 32^2, 96^2), each of which must hold
  at least 15 % of the validation objects for the size columns to mean something;
* :func:`anchor_coverage`: the share of objects whose best RetinaNet anchor overlaps them with IoU >= 0.5
  at the scale the detectors see (a benchmark whose objects fall between the anchors handicaps the anchor
  based detectors against the anchor-free ones, a distortion COCO does not have to that degree);
* :func:`size_table`: both, per split of a profile.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch
from torchvision.ops import box_iou

from ...data.card import split_statistics
from ...data.transforms import Scale, keep_ratio_size
from ...io import read_json
from ...models.priors import AnchorConfig, anchors_for

SIZE_SHARE_TARGET = 15.0  # percent of the validation objects per COCO size bucket


def anchor_coverage(ann_file: str | Path, scale: Scale, anchors: AnchorConfig = AnchorConfig(),
                    iou: float = 0.5, size_divisor: int = 32) -> float:
    """Share of the non-crowd objects of ``ann_file`` whose best anchor (of RetinaNet's anchor grid over
    the image resized to ``scale`` and padded to ``size_divisor``) has IoU >= ``iou`` with the box."""
    data = read_json(ann_file, what="annotation file")
    boxes_by_image: dict[int, list[list[float]]] = {}
    for a in data["annotations"]:
        if not a.get("iscrowd", 0):
            boxes_by_image.setdefault(a["image_id"], []).append(a["bbox"])
    covered = total = 0
    for image in data["images"]:
        boxes = boxes_by_image.get(image["id"])
        if not boxes:
            continue
        h, w = keep_ratio_size(image["height"], image["width"], scale)
        sy, sx = h / image["height"], w / image["width"]
        ph, pw = (math.ceil(v / size_divisor) * size_divisor for v in (h, w))
        sizes = [(math.ceil(ph / s), math.ceil(pw / s)) for s in anchors.strides]
        grid = torch.cat(anchors_for(anchors, sizes))
        xywh = torch.tensor(boxes, dtype=torch.float32)
        xyxy = torch.stack([xywh[:, 0] * sx, xywh[:, 1] * sy, (xywh[:, 0] + xywh[:, 2]) * sx,
                            (xywh[:, 1] + xywh[:, 3]) * sy], dim=1)
        best = box_iou(xyxy, grid).amax(dim=1)
        covered += int((best >= iou).sum())
        total += len(best)
    return covered / total if total else float("nan")


def size_shares(ann_file: str | Path) -> dict[str, float]:
    """Percent of the non-crowd objects in COCO's small / medium / large buckets (by annotation area)."""
    row = split_statistics(ann_file)
    return {"small": row["small %"], "medium": row["medium %"], "large": row["large %"]}


def size_table(profile: str, data_root: str | Path | None = None) -> pd.DataFrame:
    """Per split: COCO size-bucket shares (target >= 15 % each) and RetinaNet's anchor coverage."""
    from ...data.profiles import data_config, ensure_data

    cfg = data_config(profile, data_root)
    ensure_data(cfg, progress=False)
    rows = []
    for split in ("train", "val"):
        ann = cfg.paths(split)[0]
        row = {"split": split, **{f"{k} %": v for k, v in size_shares(ann).items()}}
        row["anchor IoU >= 0.5 %"] = 100 * anchor_coverage(ann, cfg.test_scale)
        rows.append(row)
    out = pd.DataFrame(rows).set_index("split")
    out["each bucket >= 15 %"] = out[["small %", "medium %", "large %"]].min(axis=1) >= SIZE_SHARE_TARGET
    return out.round(1)
