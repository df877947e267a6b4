"""What a profile costs on this machine (``replicate bench data`` and ``replicate bench threads``).

* ``data``: generating the profile's dataset from scratch (both splits, up to 2 worker processes).
* ``threads``: training throughput of one preset in the two ways two cores can be spent: one run with two
  threads, or two runs side by side with one thread each (``replicate train --no-eval`` subprocesses, the
  same iterations each). The answer decides how sweeps run here (``--parallelism 2`` with
  ``OMP_NUM_THREADS=1``, or one run at a time). Measure on an otherwise idle machine.

Results go to ``results/bench/`` with provenance, as the other benchmarks'.
"""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..data import synth
from ..io import atomic_write_json
from ..provenance import provenance


def bench_data(profile: str, *, workers: int = 2) -> dict[str, Any]:
    """Seconds to generate ``profile``'s dataset into a fresh folder."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        synth.generate(profile, tmp, workers=workers, progress=False)
        seconds = time.perf_counter() - start
    config = {"benchmark": "data", "profile": profile, "workers": workers}
    return {**config, "seconds": seconds, "provenance": provenance(config, device="cpu")}


def _train(model: str, profile: str, out: Path, iters: int, threads: int, data_root: str | None,
           overrides: dict[str, Any]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "replicate.cli", "train", "--model", model, "--profile", profile, "--out", str(out),
           "--iters", str(iters), "--scale-schedule", "--no-eval", "--quiet", "--device", "cpu"]
    if data_root:
        cmd += ["--data-root", data_root]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _seconds_per_iter(out: Path, skip: int) -> float:
    times = [json.loads(line)["time"] for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    kept = times[skip:] or times
    return sum(kept) / len(kept)


def bench_threads(model: str, profile: str, *, iters: int = 150, skip: int = 30,
                  data_root: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Seconds per iteration (after ``skip`` warm-up iterations) and images per second of the machine for
    one run x 2 threads and for 2 runs x 1 thread; ``overrides`` change the preset as ``replicate train --set``."""
    from ..profiles import schedule_for

    overrides = dict(overrides or {})
    batch = schedule_for(profile).batch_size
    result: dict[str, Any] = {"benchmark": "threads", "model": model, "profile": profile, "iters": iters,
                              "skip": skip, "batch_size": batch}
    if overrides:
        result["overrides"] = overrides
    with tempfile.TemporaryDirectory() as tmp:
        for name, runs, threads in (("1x2", 1, 2), ("2x1", 2, 1)):
            outs = [Path(tmp) / f"{name}-{i}" for i in range(runs)]
            procs = [_train(model, profile, out, iters, threads, data_root, overrides) for out in outs]
            for proc in procs:
                _, err = proc.communicate()
                if proc.returncode != 0:
                    raise RuntimeError(f"bench threads: training failed ({name}):\n{err[-2000:]}")
            per_iter = [_seconds_per_iter(out, skip) for out in outs]
            result[name] = {"runs": runs, "threads": threads, "seconds_per_iter": per_iter,
                            "machine_imgs_per_s": sum(batch / s for s in per_iter)}
    result["faster"] = max(("1x2", "2x1"), key=lambda k: result[k]["machine_imgs_per_s"])
    config = {k: result[k] for k in ("benchmark", "model", "profile", "iters", "skip", "overrides") if k in result}
    result["provenance"] = provenance(config, device="cpu")
    return result


def write_result(result: dict[str, Any], out: Path | None = None) -> Path:
    name = f"{result['benchmark']}_{result['profile']}" + (f"_{result['model']}" if "model" in result else "")
    for key, value in result.get("overrides", {}).items():  # e.g. threads_smoke_tsd_task_split.stride-8
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        name += f"_{key}-" + re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")
    path = out or Path("results") / "bench" / f"{name}.json"
    return atomic_write_json(path, result, indent=1)
