"""Inference over a dataset: detections in original-image coordinates as COCO results, with timing.

The test transform resizes image ``i`` by ``scale_factor = (sy, sx)`` (new / original size); boxes
are mapped back by dividing x by ``sx`` and y by ``sy`` (one tensor operation per image) before
:func:`replicate.evaluation.to_coco_results` writes them with the dataset's category ids. A detector with a
mask branch also gives each detection a mask, pasted into its box at the original size and written as RLE.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..data.batching import Collate
from ..evaluation import to_coco_results
from ..models.detectors.mask_head import encode_masks, paste_masks
from ..models.postprocess import TestConfig
from ..provenance import cpu_has_native_bf16, device_name
from .checkpoint import unwrap

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
EVAL_BATCH_SIZE = 2  # images per process at test time (mmdetection's samples_per_gpu for test)


@functools.cache
def _warn_if_bf16_is_emulated() -> None:
    """Once per process: bf16 autocast on a CPU without native bf16 is emulated."""
    if not cpu_has_native_bf16():
        warnings.warn(f"bf16 autocast on a CPU without native bf16 ({device_name('cpu')}): PyTorch emulates it, "
                      "many times slower than float32 (18x for a RetinaNet step with channels_last on an AVX2 EPYC: "
                      "`replicate bench train-step --amp bf16 --channels-last`), and its results "
                      "differ from a native-bf16 CPU's; the proxy profile's records were made on AVX-512 BF16 CPUs",
                      stacklevel=3)


def autocast(device: torch.device, amp: str | None):
    """Mixed precision when ``amp`` names a dtype: bf16 on CPU (AVX-512 BF16 machines run it natively)
    and CUDA, fp16 on CUDA only; a no-op otherwise. Losses, assignment and decoding run in float32:
    autocast only lowers the convolutions and matmuls it lists."""
    if amp is None or (device.type != "cuda" and amp != "bf16"):
        return contextlib.nullcontext()
    if device.type == "cpu":
        _warn_if_bf16_is_emulated()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def predict_dataset(model: torch.nn.Module, dataset, batch_size: int, device: torch.device | str, *,
                    indices: Sequence[int] | None = None, num_workers: int = 0,
                    amp: str | None = None) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """COCO results of ``model`` on ``dataset`` (or the ``indices`` subset) and timings.

    Timings: ``inference_seconds`` (wall time of the loop, data loading included),
    ``inference_fps`` (images / that time) and ``images``. The model is put in eval mode.
    """
    results, timings = predict_variants(model, dataset, batch_size, device, [None], indices=indices,
                                        num_workers=num_workers, amp=amp)
    return results[0], timings


def predict_variants(model: torch.nn.Module, dataset, batch_size: int, device: torch.device | str,
                     tests: Sequence[TestConfig | None], *, indices: Sequence[int] | None = None,
                     num_workers: int = 0, amp: str | None = None,
                     progress: bool = False) -> tuple[list[list[dict[str, Any]]], dict[str, float]]:
    """COCO results under each test config of ``tests`` (``None``: the model's own) from one pass.

    Each batch goes through the network once and every test config re-scores the same raw head outputs
    (:meth:`replicate.models.detector.Detector.predict_variants`). Timings as :func:`predict_dataset`.
    """
    device = torch.device(device)
    net = unwrap(model).eval()
    subset = Subset(dataset, list(indices)) if indices is not None else dataset
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=Collate(), pin_memory=device.type == "cuda")
    image_ids, scales, sizes = [], [], []
    per_test: list[tuple[list, list, list, list]] = [([], [], [], []) for _ in tests]
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in tqdm(loader, disable=not progress, desc="predict", dynamic_ncols=True):
            images = batch.images.to(device, non_blocking=True)
            with autocast(device, amp):
                variants = net.predict_variants(images, batch.image_sizes, tests)
            for target in batch.targets:
                sy, sx = target["scale_factor"]
                image_ids.append(target["image_id"])
                scales.append(torch.tensor([sx, sy, sx, sy]))
                sizes.append(tuple(target["orig_size"]))
            for (boxes, scores, labels, masks), dets in zip(per_test, variants):
                for det, scale, size in zip(dets, scales[-len(dets):], sizes[-len(dets):]):
                    boxes.append(det["boxes"].float().cpu() / scale)
                    scores.append(det["scores"].float().cpu())
                    labels.append(det["labels"].cpu())
                    if "masks" in det:
                        masks.append(encode_masks(paste_masks(det["masks"].float().cpu(), boxes[-1], size)))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    results = [to_coco_results(image_ids, boxes, scores, labels, dataset.label_to_cat_id, masks or None)
               for boxes, scores, labels, masks in per_test]
    n = len(subset)
    return results, {"inference_seconds": seconds, "inference_fps": n / seconds if seconds > 0 else 0.0, "images": n}
