"""Inference over a dataset: detections in original-image coordinates as COCO results, with timing.

The test transform resizes image ``i`` by ``scale_factor = (sy, sx)`` (new / original size); boxes
are mapped back by dividing x by ``sx`` and y by ``sy`` (one tensor operation per image) before
:func:`replicate.evaluation.to_coco_results` writes them with the dataset's category ids.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from ..data.batching import Collate
from ..evaluation import to_coco_results
from .checkpoint import unwrap

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str | None):
    """Mixed precision on CUDA when ``amp`` names a dtype; a no-op otherwise."""
    if amp is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=AMP_DTYPES[amp])


def predict_dataset(model: torch.nn.Module, dataset, batch_size: int, device: torch.device | str, *,
                    indices: Sequence[int] | None = None, num_workers: int = 0,
                    amp: str | None = None) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """COCO results of ``model`` on ``dataset`` (or the ``indices`` subset) and timings.

    Timings: ``inference_seconds`` (wall time of the loop, data loading included),
    ``inference_fps`` (images / that time) and ``images``. The model is put in eval mode.
    """
    device = torch.device(device)
    net = unwrap(model).eval()
    subset = Subset(dataset, list(indices)) if indices is not None else dataset
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=Collate(), pin_memory=device.type == "cuda")
    image_ids, boxes, scores, labels = [], [], [], []
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in loader:
            images = batch.images.to(device, non_blocking=True)
            with autocast(device, amp):
                dets = net.predict(images, batch.image_sizes)
            for det, target in zip(dets, batch.targets):
                sy, sx = target["scale_factor"]
                image_ids.append(target["image_id"])
                boxes.append(det["boxes"].float().cpu() / torch.tensor([sx, sy, sx, sy]))
                scores.append(det["scores"].float().cpu())
                labels.append(det["labels"].cpu())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    results = to_coco_results(image_ids, boxes, scores, labels, dataset.label_to_cat_id)
    n = len(subset)
    return results, {"inference_seconds": seconds, "inference_fps": n / seconds if seconds > 0 else 0.0, "images": n}
