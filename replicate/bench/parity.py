"""CUDA against CPU: the same short training run on both devices (``python -m replicate.bench.parity``).

FCOS on the smoke profile, float32, the same seed and data order: the loss curves of the two devices
should agree to float32 rounding over the first iterations (cuDNN's convolution algorithms sum in
another order, so they drift apart slowly, never jump). Reports the largest relative difference of the
total loss per iteration and whether it stays under ``tolerance``. Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..data import synth
from ..engine.config import with_overrides
from ..engine.train import train
from ..io import atomic_write_json
from ..profiles import schedule_for
from ..provenance import provenance


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]


def parity(iters: int = 20, model: str = "fcos", tolerance: float = 1e-3) -> dict[str, Any]:
    if not torch.cuda.is_available():
        raise SystemExit("parity needs a CUDA device")
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = with_overrides(schedule_for("smoke"), iters=iters, eval_at_end=False, amp=None)
    curves = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "smoke"
        synth.generate("smoke", data, progress=False)
        for device in ("cpu", "cuda"):
            train(model, "smoke", Path(tmp) / device, cfg, data_root=data, device=device, progress=False)
            curves[device] = _losses(Path(tmp) / device)
    rel = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(curves["cpu"], curves["cuda"])]
    config = {"benchmark": "parity", "model": model, "iters": iters, "tolerance": tolerance}
    return {**config, "loss_cpu": curves["cpu"], "loss_cuda": curves["cuda"], "max_rel_diff": max(rel),
            "rel_diff": rel, "agree": max(rel) <= tolerance, "provenance": provenance(config, device="cuda")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--model", default="fcos")
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=Path("results/bench/parity_cuda_cpu.json"))
    args = parser.parse_args()
    result = parity(args.iters, args.model, args.tolerance)
    atomic_write_json(args.out, result, indent=1)
    print(f"parity {args.model}: max relative loss difference {result['max_rel_diff']:.2e} over {args.iters} "
          f"iterations ({'agree' if result['agree'] else 'DIFFER'}); written to {args.out}")


if __name__ == "__main__":
    main()
