"""Deformable convolution on CPU (``replicate bench dcn``): our sampled form against torchvision's compiled op.

:func:`replicate.models.dcn.sampled_deform_conv2d` (``grid_sample`` and one batched product per image) stands
in for ``torchvision.ops.deform_conv2d`` on CPU, where that kernel is slow; AlignDet's RoIConv, the SALT
operator, RepPoints and the DCN backbones all run on it. This benchmark times forward + backward of both
on the proxy's P3 map (a ~200 px image at stride 8: 32 x 32 after padding, 64 channels): AlignDet's 7x7
RoIConv (256 outputs) and a 3x3 deformable convolution (64 outputs, the SALT operator's and DCN's size),
with random offsets of a few pixels, in float32 (the comparable case: torchvision's op has no bf16 CPU
kernel); ours also under bf16 autocast, as the proxy trains. The float32 outputs of the two are compared
(largest absolute difference). One thread, as the sweeps run.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
from torchvision.ops import deform_conv2d

from ..models.dcn import sampled_deform_conv2d
from ..provenance import provenance
from . import time_calls

CASES = {"RoIConv 7x7 (AlignDet)": (7, 256), "deformable 3x3 (SALT, DCN)": (3, 64)}


def bench_dcn(*, batch_size: int = 8, channels: int = 64, size: int = 32, iters: int = 5, warmup: int = 1,
              threads: int = 1) -> dict[str, Any]:
    """Median milliseconds of forward + backward per case: ``ours_ms`` (float32), ``ours_bf16_ms`` (bf16
    autocast) and ``torchvision_ms`` (float32), with ``speedup`` = torchvision's time over ours (float32)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    cpu = torch.device("cpu")
    try:
        rows = []
        for name, (kernel, out_channels) in CASES.items():
            torch.manual_seed(0)
            x = torch.randn(batch_size, channels, size, size)
            weight = torch.randn(out_channels, channels, kernel, kernel) * 0.01
            bias = torch.zeros(out_channels)
            offset = 2.0 * torch.randn(batch_size, 2 * kernel * kernel, size, size)
            pad = kernel // 2

            def step(op, amp: bool = False):
                xs, ws = x.clone().requires_grad_(), weight.clone().requires_grad_()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                    out = op(xs, offset, ws, bias, 1, pad, 1)
                out.float().sum().backward()
                return out.detach().float()

            def theirs(xs, off, ws, b, stride, padding, dilation):
                return deform_conv2d(xs, off, ws, b, stride=stride, padding=padding, dilation=dilation)

            times = {}
            outs = {}
            for label, op, amp in (("ours", sampled_deform_conv2d, False), ("ours_bf16", sampled_deform_conv2d, True),
                                   ("torchvision", theirs, False)):
                seconds, outs[label] = time_calls(lambda op=op, amp=amp: step(op, amp), iters, warmup, cpu)
                times[label] = 1e3 * statistics.median(seconds)
            rows.append({"case": name, "kernel": kernel, "in": [batch_size, channels, size, size],
                         "out_channels": out_channels, **{f"{k}_ms": v for k, v in times.items()},
                         "speedup": times["torchvision"] / times["ours"],
                         "max_abs_diff": float((outs["ours"] - outs["torchvision"]).abs().max())})
    finally:
        torch.set_num_threads(previous)
    config = {"benchmark": "dcn", "batch_size": batch_size, "channels": channels, "size": size, "iters": iters,
              "warmup": warmup, "threads": threads}
    return {**config, "rows": rows, "provenance": provenance(config, device="cpu")}


def format_result(result: dict[str, Any]) -> str:
    lines = [f"deformable convolution forward + backward, {result['threads']} thread(s), median of "
             f"{result['iters']}:"]
    for r in result["rows"]:
        lines.append(f"  {r['case']:<28} ours {r['ours_ms']:8.1f} ms (bf16 autocast {r['ours_bf16_ms']:8.1f} ms)  "
                     f"torchvision {r['torchvision_ms']:8.1f} ms  -> {r['speedup']:.1f}x  "
                     f"(max |diff| {r['max_abs_diff']:.1e})")
    return "\n".join(lines)
