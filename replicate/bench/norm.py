"""GroupNorm's cost by memory layout and dtype on this machine (``replicate bench norm``).

The proxy profile trains channels-last in bf16, and its heads' GroupNorms then get channels-last inputs.
This benchmark times forward + backward of ``nn.GroupNorm`` on the head's shapes (batch 8, 64 channels,
the P3 and P5 maps of a ~200 px image) in each layout and dtype, and of our
:class:`replicate.models._utils.GroupNorm` on its NCHW path (``gn_nchw``), which normalises a
channels-last input in NCHW and hands it back channels-last (the conversions are included). The
outputs of the two paths are compared (largest absolute difference). One thread, as the sweeps run.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
from torch import nn

from ..models._utils import GroupNorm
from . import time_calls
from ..provenance import provenance

SHAPES = ((8, 64, 26, 26), (8, 64, 7, 7))
DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}


def bench_norm(*, iters: int = 20, warmup: int = 3, threads: int = 1) -> dict[str, Any]:
    """Median milliseconds of forward + backward per (shape, dtype, path): ``nchw`` (an NCHW input),
    ``channels_last`` (a channels-last input, PyTorch's own kernel) and ``ours`` (a channels-last input
    through the NCHW path), with the speedup of ``ours`` over ``channels_last``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows = []
        for shape in SHAPES:
            for dtype_name, dtype in DTYPES.items():
                torch.manual_seed(0)
                plain = nn.GroupNorm(32, shape[1]).to(dtype)
                ours = GroupNorm(32, shape[1]).to(dtype)
                ours.load_state_dict(plain.state_dict())
                ours.nchw = True
                base = torch.randn(*shape, dtype=dtype)
                inputs = {"nchw": (plain, base), "channels_last": (plain, base.contiguous(memory_format=torch.channels_last)),
                          "ours": (ours, base.contiguous(memory_format=torch.channels_last))}
                ms = {}
                for path, (module, x) in inputs.items():
                    x = x.clone().requires_grad_()

                    def step(module=module, x=x):
                        module(x).float().sum().backward()

                    ms[path] = 1e3 * statistics.median(time_calls(step, iters, warmup, torch.device("cpu"))[0])
                with torch.no_grad():
                    diff = (ours(inputs["ours"][1]).float() - plain(inputs["channels_last"][1]).float()).abs().max()
                rows.append({"shape": list(shape), "dtype": dtype_name, **{f"{k}_ms": v for k, v in ms.items()},
                             "speedup": ms["channels_last"] / ms["ours"], "max_abs_diff": float(diff)})
    finally:
        torch.set_num_threads(previous)
    config = {"benchmark": "norm", "iters": iters, "warmup": warmup, "threads": threads}
    return {**config, "rows": rows, "provenance": provenance(config, device="cpu")}


def format_result(result: dict[str, Any]) -> str:
    lines = [f"GroupNorm forward + backward, {result['threads']} thread(s), median of {result['iters']}:"]
    for r in result["rows"]:
        lines.append(f"  {'x'.join(map(str, r['shape'])):<12} {r['dtype']:<8} NCHW {r['nchw_ms']:7.3f} ms  "
                     f"channels-last {r['channels_last_ms']:7.3f} ms  ours (NCHW path) {r['ours_ms']:7.3f} ms  "
                     f"-> {r['speedup']:.1f}x  (max |diff| {r['max_abs_diff']:.1e})")
    return "\n".join(lines)
