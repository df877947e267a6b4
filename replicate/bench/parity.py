"""CUDA against CPU: the same short training run on both devices (``python -m replicate.bench.parity``).

FCOS on the smoke profile, float32, the same seed and data order. Two criteria, because training is
chaotic: cuDNN's convolutions sum in another order than oneDNN's, a 1e-7 rounding difference is
amplified by every update, and per-iteration losses of the two devices drift apart after a few steps
(the first check, with one 1e-3 bound on every iteration, saw 1e-7 for six iterations and 1.7e-2 by
the twentieth). So:

* ``initial``: the first ``initial_iters`` losses (the first is a pure forward pass from the same
  weights) agree to float32 rounding, relative difference at most ``initial_tolerance``;
* ``trajectory``: the mean loss over the whole run agrees within ``trajectory_tolerance`` (relative),
  i.e. the two devices train the same way even once the individual steps no longer match.

Needs a CUDA device; :func:`judge` is the device-free verdict.
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


def judge(loss_cpu: list[float], loss_cuda: list[float], initial_iters: int = 3, initial_tolerance: float = 1e-5,
          trajectory_tolerance: float = 1e-2) -> dict[str, Any]:
    """The parity verdict on two loss curves of the same run (see the module docstring)."""
    if len(loss_cpu) != len(loss_cuda) or len(loss_cpu) < initial_iters:
        raise ValueError(f"parity needs two curves of equal length >= {initial_iters}, got {len(loss_cpu)} and "
                         f"{len(loss_cuda)}")
    rel = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(loss_cpu, loss_cuda)]
    mean_cpu, mean_cuda = sum(loss_cpu) / len(loss_cpu), sum(loss_cuda) / len(loss_cuda)
    initial = max(rel[:initial_iters])
    trajectory = abs(mean_cpu - mean_cuda) / max(abs(mean_cpu), 1e-12)
    return {"rel_diff": rel, "max_rel_diff": max(rel), "initial_iters": initial_iters,
            "initial_tolerance": initial_tolerance, "initial_max_rel_diff": initial,
            "trajectory_tolerance": trajectory_tolerance, "trajectory_rel_diff": trajectory,
            "agree": initial <= initial_tolerance and trajectory <= trajectory_tolerance}


def parity(iters: int = 20, model: str = "fcos", **criteria: Any) -> dict[str, Any]:
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
    verdict = judge(curves["cpu"], curves["cuda"], **criteria)
    config = {"benchmark": "parity", "model": model, "iters": iters,
              **{k: v for k, v in verdict.items() if k.endswith(("_iters", "_tolerance"))}}
    return {**config, "loss_cpu": curves["cpu"], "loss_cuda": curves["cuda"], **verdict,
            "provenance": provenance(config, device="cuda")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--model", default="fcos")
    parser.add_argument("--initial-iters", type=int, default=3)
    parser.add_argument("--initial-tolerance", type=float, default=1e-5)
    parser.add_argument("--trajectory-tolerance", type=float, default=1e-2)
    parser.add_argument("--out", type=Path, default=Path("results/bench/parity_cuda_cpu.json"))
    args = parser.parse_args()
    result = parity(args.iters, args.model, initial_iters=args.initial_iters,
                    initial_tolerance=args.initial_tolerance, trajectory_tolerance=args.trajectory_tolerance)
    atomic_write_json(args.out, result, indent=1)
    print(f"parity {args.model}: first {args.initial_iters} losses within {result['initial_max_rel_diff']:.1e}, "
          f"mean loss over {args.iters} iterations within {result['trajectory_rel_diff']:.1e} (largest step "
          f"difference {result['max_rel_diff']:.1e}): {'agree' if result['agree'] else 'DIFFER'}; written to {args.out}")


if __name__ == "__main__":
    main()
