"""Model outputs to COCO results format (https://cocodataset.org/#format-results).

A detection result is ``{"image_id", "category_id", "bbox": [x, y, width, height], "score"}``
with the box in absolute pixels; this module converts per-image ``(x1, y1, x2, y2)`` boxes,
scores and contiguous labels ``0..C-1`` into that list in one vectorised pass.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_json

BOX_DECIMALS = 2
SCORE_DECIMALS = 5


def to_coco_results(
    image_ids: Sequence[int],
    boxes_xyxy: Sequence[Any],
    scores: Sequence[Any],
    labels: Sequence[Any],
    label_to_cat_id: Sequence[int] | Mapping[int, int],
    segmentations: Sequence[Sequence[dict]] | None = None,
) -> list[dict[str, Any]]:
    """COCO result dicts for per-image detections.

    ``image_ids`` holds one id per image; ``boxes_xyxy`` (``(n_i, 4)``), ``scores`` and ``labels``
    (``(n_i,)``) hold one array per image (numpy arrays, torch tensors on any device, or lists).
    Label ``k`` becomes category ``label_to_cat_id[k]``. Boxes are written as ``[x, y, w, h]``
    rounded to 2 decimals, scores rounded to 5 decimals; all values are Python ints and floats.
    ``segmentations`` (optional) holds one list of RLE dicts per image, one per detection: each result then
    also has its ``segmentation`` (instance segmentation results carry both).
    """
    if not len(image_ids) == len(boxes_xyxy) == len(scores) == len(labels):
        raise ValueError(
            f"one entry per image expected: {len(image_ids)} image ids, {len(boxes_xyxy)} box arrays, "
            f"{len(scores)} score arrays, {len(labels)} label arrays"
        )
    per_image_boxes = [_numpy(b, np.float64).reshape(-1, 4) for b in boxes_xyxy]
    per_image_scores = [_numpy(s, np.float64).reshape(-1) for s in scores]
    per_image_labels = [_numpy(lab, np.int64).reshape(-1) for lab in labels]
    counts = [len(s) for s in per_image_scores]
    mismatched = [
        i for i, (b, n, lab) in enumerate(zip(per_image_boxes, counts, per_image_labels)) if not len(b) == n == len(lab)
    ]
    if mismatched:
        raise ValueError(f"images at positions {mismatched[:5]} have different numbers of boxes, scores and labels")
    boxes = np.concatenate([np.zeros((0, 4)), *per_image_boxes])
    score = np.concatenate([np.zeros(0), *per_image_scores])
    label = np.concatenate([np.zeros(0, np.int64), *per_image_labels])
    if not (np.isfinite(boxes).all() and np.isfinite(score).all()):
        raise ValueError("boxes and scores must be finite")
    image = np.repeat(np.asarray(image_ids, dtype=np.int64), counts)
    category = _category_ids(label, label_to_cat_id)
    xywh = np.round(np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1), BOX_DECIMALS)
    results = [
        {"image_id": i, "category_id": c, "bbox": b, "score": s}
        for i, c, b, s in zip(
            image.tolist(), category.tolist(), xywh.tolist(), np.round(score, SCORE_DECIMALS).tolist()
        )
    ]
    if segmentations is not None:
        if [len(m) for m in segmentations] != counts:
            raise ValueError(f"one segmentation per detection expected: {counts} detections per image, "
                             f"{[len(m) for m in segmentations]} segmentations")
        for result, segm in zip(results, (m for per_image in segmentations for m in per_image)):
            result["segmentation"] = segm
    return results


def write_detections(path: str | os.PathLike, results: list[dict[str, Any]]) -> Path:
    """Write COCO results to ``path`` atomically (temporary file + rename)."""
    return atomic_write_json(path, results)


def _numpy(array: Any, dtype: type) -> np.ndarray:
    """A numpy array of the given dtype from a numpy array, list, or torch tensor (detached and moved to the CPU)."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=dtype)


def _category_ids(labels: np.ndarray, label_to_cat_id: Sequence[int] | Mapping[int, int]) -> np.ndarray:
    """``labels`` mapped through a lookup table built from the sequence or ``{label: category_id}`` dict."""
    if isinstance(label_to_cat_id, Mapping):
        if set(label_to_cat_id) != set(range(len(label_to_cat_id))):
            raise ValueError(
                f"a label map dict needs the keys 0..{len(label_to_cat_id) - 1}, got {sorted(label_to_cat_id)}"
            )
        lookup = np.asarray([label_to_cat_id[k] for k in range(len(label_to_cat_id))], dtype=np.int64)
    else:
        lookup = np.asarray(label_to_cat_id, dtype=np.int64)
    outside = (labels < 0) | (labels >= len(lookup))
    if outside.any():
        raise ValueError(
            f"labels must lie in 0..{len(lookup) - 1} (the label map's size); got {np.unique(labels[outside]).tolist()}"
        )
    return lookup[labels]
