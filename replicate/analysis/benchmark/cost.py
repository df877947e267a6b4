"""What a run costs on this machine, against the cost targets.

:func:`run_costs` reads wall time per run from the records (target: at most 5 machine minutes per run),
:func:`idle_rates` the idle machine's rates of ``replicate bench threads``, and :func:`cost_verdict` sets
both against the targets, with the RetinaNet-Conf + MOD evidence at 3 seeds (target: at most 8 hours).
:func:`precision_table` checks that the speed levers (bf16, channels-last GroupNorm) leave AP sound, and
:func:`bf16_speed_by_cpu` what bf16 autocast costs per CPU (``replicate bench train-step`` records).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from ... import profiles
from ...experiments.claims import row_stats
from ...experiments.spec import TableSpec
from ...experiments.store import Record
from ...io import read_json

MINUTES_TARGET = 5.0


EVIDENCE_HOURS_TARGET = 8.0  # RetinaNet-Conf + MOD at 3 seeds


def run_costs(records: Sequence[Record]) -> pd.DataFrame:
    """Per recorded run (once, however many tables share it): model, seed, training, evaluation and total
    wall minutes, and training images/s."""
    rows, seen = [], set()
    for r in records:
        if r["key"] in seen:
            continue
        seen.add(r["key"])
        t = r.get("timings") or {}
        train_s, infer_s = t.get("train_seconds"), t.get("inference_seconds")
        if train_s is None:
            continue
        rows.append({"key": r["key"], "model": r["model"], "seed": r["seed"], "train min": train_s / 60,
                     "eval min": (infer_s or 0.0) / 60, "total min": (train_s + (infer_s or 0.0)) / 60,
                     "train img/s": t.get("train_imgs_per_s")})
    return pd.DataFrame(rows)


def median_minutes_by_model(costs: pd.DataFrame) -> float:
    """The median over models of each model's median total minutes per run (the cost target's figure)."""
    if costs.empty:
        return math.nan
    return float(statistics.median(costs.groupby("model")["total min"].median()))


def cost_table(costs: pd.DataFrame) -> pd.DataFrame:
    """Per model: runs, median training / evaluation / total minutes and training images per second."""
    if costs.empty:
        return pd.DataFrame(columns=["runs", "train min", "eval min", "total min", "train img/s"])
    grouped = costs.groupby("model")
    out = grouped[["train min", "eval min", "total min", "train img/s"]].median().round(2)
    out.insert(0, "runs", grouped.size())
    return out


def evidence_load(profile: str, papers: Sequence[str] = ("retinanet_conf", "mod"), seeds: int = 3) -> tuple[int, float]:
    """``(runs, run equivalents)`` of the papers' reproduced rows at ``seeds`` seeds on ``profile``: each
    distinct run once, weighted by its iterations over the profile's schedule (a 2x row counts twice)."""
    from ...experiments.runs import merge_requests, requests_for
    from ...experiments.sweep import load_papers

    tables = load_papers()
    requests = merge_requests([r for paper in papers for spec in tables.get(paper, {}).values()
                               for r in requests_for(spec, profile, seeds)])
    base = profiles.schedule_for(profile).iters
    return len(requests), sum(r.train.iters / base for r in requests)


def idle_rates(profile: str, results_dir: str | Path = "results") -> dict[str, dict[str, float]]:
    """Per ``replicate bench threads`` result of ``profile`` (an idle machine), keyed by model: minutes of
    training for one run with 2 threads (``alone``) and for each of 2 runs side by side with 1 thread
    (``side_by_side``), at the profile's schedule length."""
    iters = profiles.schedule_for(profile).iters
    out = {}
    for path in sorted((Path(results_dir) / "bench").glob(f"threads_{profile}_*.json")):
        t = read_json(path, what="threads benchmark")
        out[t["model"]] = {"alone": statistics.fmean(t["1x2"]["seconds_per_iter"]) * iters / 60,
                           "side_by_side": statistics.fmean(t["2x1"]["seconds_per_iter"]) * iters / 60,
                           "machine_imgs_per_s_1x2": t["1x2"]["machine_imgs_per_s"],
                           "machine_imgs_per_s_2x1": t["2x1"]["machine_imgs_per_s"]}
    return out


def cost_verdict(costs: pd.DataFrame, profile: str, results_dir: str | Path = "results") -> pd.DataFrame:
    """The cost targets against what was measured.

    Two measurements: the recorded runs (median over presets of each preset's median wall minutes; they
    ran two side by side, on cores shared with development work, so they overstate an idle machine) and
    the idle machine of ``replicate bench threads`` (its preset's training, plus the recorded median
    evaluation). Machine minutes per run are the wall minutes of two runs side by side over 2. The
    RetinaNet-Conf + MOD evidence at 3 seeds counts each distinct run once, 2x rows twice
    (:func:`evidence_load`). By how much a target is missed is :func:`targets_at_a_glance`'s to say."""
    median = median_minutes_by_model(costs)
    eval_min = float(costs["eval min"].median()) if not costs.empty else 0.0
    runs, load = evidence_load(profile)
    bench = Path(results_dir) / "bench" / f"data_{profile}.json"
    data_s = read_json(bench, what="data benchmark")["seconds"] if bench.is_file() else math.nan
    rows = [
        ("recorded: wall minutes per run, two side by side (median over presets)", median, math.nan),
        ("recorded: machine minutes per run", median / 2, MINUTES_TARGET),
        (f"recorded: RetinaNet-Conf + MOD at 3 seeds ({runs} runs, {load:g} run equivalents), hours",
         load * median / 2 / 60, EVIDENCE_HOURS_TARGET),
    ]
    for model, rate in idle_rates(profile, results_dir).items():
        side = rate["side_by_side"] + eval_min
        rows += [
            (f"idle, {model}: one run alone (2 threads), wall minutes", rate["alone"] + eval_min, MINUTES_TARGET),
            (f"idle, {model}: two runs side by side (1 thread each), machine minutes per run", side / 2,
             MINUTES_TARGET),
            (f"idle, {model} rate: RetinaNet-Conf + MOD at 3 seeds, hours", load * side / 2 / 60, EVIDENCE_HOURS_TARGET),
            (f"idle, {model}: machine img/s, 1 run x 2 threads", rate["machine_imgs_per_s_1x2"], math.nan),
            (f"idle, {model}: machine img/s, 2 runs x 1 thread", rate["machine_imgs_per_s_2x1"], math.nan),
        ]
    rows.append(("data generation, minutes", data_s / 60, 1.0))
    frame = pd.DataFrame(rows, columns=["measure", "measured", "target"]).set_index("measure")
    frame["met"] = [None if math.isnan(t) or math.isnan(m) else bool(m <= t)
                    for m, t in zip(frame["measured"], frame["target"])]
    return frame.round(2)


def precision_table(spec: TableSpec, records_by_row: Mapping[str, Sequence[Record]],
                    noise: pd.DataFrame | None = None) -> pd.DataFrame:
    """AP of the profile's row, the float32 row and the channels-last GroupNorm row, the profile's lead over
    each, and ATSS's seed spread (the yardstick)."""
    rows = []
    for row in spec.rows:
        stats = row_stats(spec, row, records_by_row.get(row.label, ()))
        rows.append({"row": row.label, "AP": stats.mean["AP"] if stats else math.nan,
                     "train min": statistics.fmean(r["timings"]["train_seconds"] / 60
                                                   for r in records_by_row[row.label]) if stats else math.nan})
    out = pd.DataFrame(rows).set_index("row")
    sd = noise.loc["ATSS", "std"] if noise is not None and "ATSS" in noise.index else math.nan
    out.loc["difference (bf16 - float32)", "AP"] = out["AP"].iloc[0] - out["AP"].iloc[1]
    if len(spec.rows) > 2:
        out.loc["difference (NCHW - channels-last GroupNorm)", "AP"] = out["AP"].iloc[0] - out["AP"].iloc[2]
    out.loc["ATSS seed sd (noise table)", "AP"] = sd
    return out.round(2)


def bf16_speed_by_cpu(results_dir: str | Path = "results") -> pd.DataFrame:
    """Per CPU and load of the ``replicate bench train-step`` records in ``results_dir/bench``: our training
    step's median ms in float32 and with bf16 autocast (with channels_last where it was used), and their
    ratio. bf16 pays only on a CPU that computes it natively; elsewhere PyTorch emulates it."""
    steps: dict[tuple, dict[str, float]] = {}
    for path in sorted((Path(results_dir) / "bench").glob("train-step_*.json")):
        r = read_json(path, what="train-step benchmark")
        if r.get("device") != "cpu":
            continue
        key = ((r.get("provenance") or {}).get("device", "unrecorded"), r["model"],
               f"batch {r['batch_size']} at {r['size'][0]}x{r['size'][1]}, {r.get('threads', '?')} thread(s)")
        lever = "bf16" + (" + channels_last" if r.get("channels_last") else "") if r.get("amp") == "bf16" else "float32"
        steps.setdefault(key, {})[lever] = 1000 * r["ours"]["median_s"]
    rows = []
    for (cpu, model, load), ms in steps.items():
        bf16 = next(((k, v) for k, v in ms.items() if k != "float32"), (None, math.nan))
        fp32 = ms.get("float32", math.nan)
        rows.append({"CPU": cpu, "model": model, "load": load, "float32 ms": fp32, "bf16 ms": bf16[1],
                     "bf16 levers": bf16[0] or "—", "bf16 / float32": bf16[1] / fp32})
    return pd.DataFrame(rows, columns=["CPU", "model", "load", "float32 ms", "bf16 ms", "bf16 levers",
                                       "bf16 / float32"]).round(2)
