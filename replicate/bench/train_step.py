"""Time one training step of our R50-FPN detector against torchvision's on the same batch.

``replicate bench train-step --model retinanet|fcos`` builds our detector (ResNet-50, trainable
BatchNorm, nothing frozen: the state torchvision's builders are in without pretrained weights) and
torchvision's ``retinanet_resnet50_fpn`` / ``fcos_resnet50_fpn`` for the same number of classes,
feeds both the same random batch with the same boxes, and times forward + loss + backward + SGD
step (median over ``iters`` after ``warmup``, the two models' steps alternating; CUDA synchronised).
torchvision's step includes its ``GeneralizedRCNNTransform`` (normalisation; its resize is a no-op
because min/max size are set to the batch's size). Architectural differences that remain are reported with the figures:
our RetinaNet takes P6 from C5 (the paper / mmdetection), torchvision's from P5; our FCOS has no
conv bias before GroupNorm. The result (with device, versions, commit) is written as JSON for the
book's performance appendix.
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..errors import ReplicateError
from ..io import atomic_write_json
from ..models._utils import set_group_norm_layout

MODELS = ("retinanet", "fcos")
NOTES = {
    "retinanet": "ours: P6 from C5 (paper, mmdetection); torchvision: P6 from P5",
    "fcos": "ours: FCOS* (centre sampling, GIoU, centerness on reg); torchvision: its FCOS recipe",
}


def _batch(batch_size: int, hw: tuple[int, int], num_boxes: int, num_classes: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    images = torch.randn(batch_size, 3, h, w, generator=g)
    targets = []
    for _ in range(batch_size):
        xy = torch.rand(num_boxes, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = 16 + torch.rand(num_boxes, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(device),
                        "labels": torch.randint(0, num_classes, (num_boxes,), generator=g).to(device)})
    return images.to(device), targets


def _ours(model: str, num_classes: int):
    from ..models.detector import build_detector
    from ..models.zoo import model_config

    cfg = model_config(model, "coco", num_classes)
    cfg = replace(cfg, backbone=replace(cfg.backbone, norm="bn", frozen_stages=-1))
    return build_detector(cfg)


def _theirs(model: str, num_classes: int, hw: tuple[int, int]):
    from torchvision.models import detection

    build = detection.retinanet_resnet50_fpn if model == "retinanet" else detection.fcos_resnet50_fpn
    return build(weights=None, weights_backbone=None, num_classes=num_classes, min_size=min(hw), max_size=max(hw))


def _timed(step, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def bench_train_step(model: str = "retinanet", *, batch_size: int = 2, size: tuple[int, int] = (512, 512),
                     iters: int = 5, warmup: int = 2, num_classes: int = 80, num_boxes: int = 5,
                     device: str | None = None, amp: str | None = None, channels_last: bool = False,
                     gn_nchw: bool = False) -> dict:
    """Median seconds per training step, ours and torchvision's, and their ratio (ours / theirs).

    Both models live side by side and their steps alternate (ours first in odd rounds, torchvision's
    first in even ones), so that drift of a shared machine (other load, clocks, allocator growth)
    falls on both alike rather than on whichever ran second. ``gn_nchw`` puts our GroupNorms on the
    NCHW path (:class:`replicate.models._utils.GroupNorm`; torchvision's stay as they are). ``step_peak_mb`` (CUDA) is the peak
    memory a step allocates above what was allocated before it (activations, gradients, workspace).
    """
    if model not in MODELS:
        raise ReplicateError(f"bench train-step supports {MODELS}, got {model!r}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if amp == "fp16" and dev.type != "cuda":
        raise ReplicateError("--amp fp16 needs a CUDA device (bf16 runs on CPU too)")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[amp]
    images, targets = _batch(batch_size, size, num_boxes, num_classes, dev)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    steps = {}
    for who in ("ours", "torchvision"):
        torch.manual_seed(0)
        net = (_ours(model, num_classes) if who == "ours" else _theirs(model, num_classes, size)).to(dev).train()
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        if who == "ours":
            set_group_norm_layout(net, gn_nchw)
        opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
        scaler = torch.amp.GradScaler(enabled=amp == "fp16")

        def step(net=net, opt=opt, scaler=scaler, ours=who == "ours"):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                losses = net(images, targets) if ours else net(list(images), targets)
            terms = [v for k, v in losses.items() if not ours or k.startswith("loss")]
            scaler.scale(sum(terms)).backward()
            scaler.step(opt)
            scaler.update()

        steps[who] = step
    times: dict[str, list[float]] = {"ours": [], "torchvision": []}
    peaks: dict[str, float] = {"ours": 0.0, "torchvision": 0.0}
    for i in range(warmup + iters):
        for who in (("ours", "torchvision") if i % 2 else ("torchvision", "ours")):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                before = torch.cuda.memory_allocated(dev)
                torch.cuda.reset_peak_memory_stats(dev)
            seconds = _timed(steps[who], dev)
            if dev.type == "cuda":
                peaks[who] = max(peaks[who], (torch.cuda.max_memory_allocated(dev) - before) / 2**20)
            if i >= warmup:
                times[who].append(seconds)
    results = {who: {"median_s": statistics.median(times[who]), "times_s": times[who],
                     "step_peak_mb": peaks[who] if dev.type == "cuda" else None} for who in times}
    ratio = results["ours"]["median_s"] / results["torchvision"]["median_s"]
    return {"benchmark": "train-step", "model": model, "device": dev.type, "batch_size": batch_size, "size": list(size),
            "iters": iters, "warmup": warmup, "num_classes": num_classes, "amp": amp, "channels_last": channels_last,
            "gn_nchw": gn_nchw, "threads": torch.get_num_threads(), "interleaved": True, "ours": results["ours"],
            "torchvision": results["torchvision"], "ratio": ratio, "note": NOTES[model]}


def write_result(result: dict, out: Path | None = None) -> Path:
    """Write a benchmark result with provenance to ``out`` (default ``results/bench/<name>.json``)."""
    from ..provenance import provenance

    record = {**result, "provenance": provenance({k: v for k, v in result.items() if k in
                                                  ("benchmark", "model", "batch_size", "size", "amp",
                                                   "channels_last")}, device=result.get("device"))}
    if out is None:
        device = re.sub(r"[^A-Za-z0-9.]+", "-", record["provenance"]["device"]).strip("-")  # AMD-EPYC-AVX2-family-23-...
        tags = "".join(f"_{t}" for t in (result.get("amp"), "cl" if result.get("channels_last") else None) if t)
        out = Path("results/bench") / f"{result['benchmark']}_{result['model']}_{device}{tags}.json"
    atomic_write_json(out, record)
    return out


def format_result(r: dict) -> str:
    o, t = r["ours"]["median_s"], r["torchvision"]["median_s"]
    return (f"train-step {r['model']}: batch {r['batch_size']} at {r['size'][0]}x{r['size'][1]}, "
            f"amp={r['amp']}\n  ours        {o * 1000:9.1f} ms/step\n  torchvision {t * 1000:9.1f} ms/step\n"
            f"  ratio ours/torchvision = {r['ratio']:.2f}  ({r['note']})")
