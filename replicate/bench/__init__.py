"""Benchmarks (``replicate bench ...``): speed and memory are measured here, never in timed tests."""

from __future__ import annotations

import time

import torch


def time_calls(call, iters: int, warmup: int, device: torch.device) -> tuple[list[float], object]:
    """Seconds of each timed call (after ``warmup`` untimed ones) and the last call's result."""
    times, out = [], None
    for i in range(warmup + iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times, out
