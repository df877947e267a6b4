"""Seed noise: how far AP moves over seeds, and what part of that a comparison keeps.

* :func:`seed_noise`: the spread of AP over seeds per row (target: at most 0.6 AP points);
* :func:`paired_noise`: how much of it a comparison paired by seed keeps;
* :func:`val_split_frame` / :func:`val_split_spread`: how much of it the validation sample makes (the noise
  runs scored on further validation splits).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ...experiments.claims import row_stats, sample_std
from ...experiments.spec import TableSpec
from ...experiments.store import Record

NOISE_TARGET = 0.6  # AP points: the largest acceptable standard deviation over seeds


def seed_noise(spec: TableSpec, records_by_row: Mapping[str, Sequence[Record]], metric: str = "AP") -> pd.DataFrame:
    """Per row: seeds, mean and standard deviation of ``metric`` (paper units), and whether the spread is
    within :data:`NOISE_TARGET`."""
    rows = []
    for row in spec.rows:
        stats = row_stats(spec, row, records_by_row.get(row.label, ()))
        if stats is None:
            rows.append({"row": row.label, "seeds": 0, "mean": math.nan, "std": math.nan, "within target": None})
            continue
        std = stats.std[metric]
        rows.append({"row": row.label, "seeds": stats.n, "mean": stats.mean[metric], "std": std,
                     "within target": None if math.isnan(std) else bool(std <= NOISE_TARGET)})
    return pd.DataFrame(rows).set_index("row")


def noise_table(noise: pd.DataFrame) -> pd.DataFrame:
    out = noise.copy()
    out["target"] = NOISE_TARGET
    out["over target by"] = (out["std"] - NOISE_TARGET).clip(lower=0)
    return out.round(2)


def plot_noise(spec: TableSpec, records_by_row: Mapping[str, Sequence[Record]], metric: str = "AP"):
    """AP of every seed per row, with the mean and the rows' standard deviation in the legend."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    for i, row in enumerate(spec.rows):
        values = [100 * (r["metrics"] or {}).get(metric, math.nan) for r in records_by_row.get(row.label, ())]
        if not values:
            continue
        sd = sample_std(values)
        ax.scatter([i] * len(values), values, label=f"{row.label}: sd {sd:.2f}")
        ax.hlines(statistics.fmean(values), i - 0.25, i + 0.25, color="k")
    ax.set_xticks(range(len(spec.rows)), [r.label for r in spec.rows], rotation=10)
    ax.set_ylabel(f"{metric} (%) per seed")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def paired_noise(spec: TableSpec, records_by_row: Mapping[str, Sequence[Record]], metric: str = "AP") -> pd.DataFrame:
    """How noisy a comparison paired by seed is, for every pair of rows with at least two seeds in common.

    The book's claims compare two rows seed by seed (:func:`~replicate.experiments.claims.claim_results`:
    the rows share data order and head initialisation). Per pair ``a - b``: the seeds in common, the
    standard deviation over them of the per-seed difference (``paired sd``), the one the difference would
    have if the two rows' seed effects were independent (``sqrt(sd_a^2 + sd_b^2)`` over the same seeds),
    and the correlation of the two rows' values over those seeds. A positive correlation makes a paired
    comparison less noisy than its rows are alone."""
    values = {row.label: {r.get("seed"): spec.paper_scale * float((r["metrics"] or {}).get(metric, math.nan))
                          for r in records_by_row.get(row.label, ())} for row in spec.rows}
    rows = []
    labels = [row.label for row in spec.rows]
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            seeds = sorted(set(values[a]) & set(values[b]), key=str)
            if len(seeds) < 2:
                continue
            va, vb = [values[a][k] for k in seeds], [values[b][k] for k in seeds]
            rows.append({"pair": f"{a} - {b}", "seeds": len(seeds),
                         "mean difference": statistics.fmean(x - y for x, y in zip(va, vb)),
                         "paired sd": sample_std([x - y for x, y in zip(va, vb)]),
                         "sd if independent": math.hypot(sample_std(va), sample_std(vb)),
                         "correlation": float(np.corrcoef(va, vb)[0, 1]) if len(seeds) > 2 else math.nan})
    columns = ["pair", "seeds", "mean difference", "paired sd", "sd if independent", "correlation"]
    return pd.DataFrame(rows, columns=columns).set_index("pair").round(2)


def val_split_frame(spec: TableSpec, records_by_row: Mapping[str, Sequence[Record]], profile: str, *,
                    results_dir: str | Path = "results", data_root: str | Path | None = None,
                    seeds: Sequence[int] | None = None) -> pd.DataFrame:
    """Long frame ``row, seed, val split, AP``: every run of every row on the profile's own validation split
    (split 0, its record) and on the further splits of :func:`~.cache.val_splits_summary` (``seeds``: default
    :data:`~.cache.VAL_SPLIT_SEEDS`). A run whose summary is neither cached nor computable (no checkpoint)
    has its split-0 line only, with ``scored`` False."""
    from ...experiments.runs import profile_num_classes
    from ...experiments.spec import run_config
    from ..cache import VAL_SPLIT_SEEDS, val_splits_available, val_splits_summary

    seeds = VAL_SPLIT_SEEDS if seeds is None else seeds
    lines = []
    for row in spec.rows:
        records = records_by_row.get(row.label, ())
        if not records:
            continue
        model, train = run_config(spec, row, profile, profile_num_classes(profile))
        for r in records:
            scored = val_splits_available(r, profile, results_dir=results_dir, seeds=seeds)
            lines.append({"row": row.label, "seed": r["seed"], "val split": 0, "AP": 100 * r["metrics"]["AP"],
                          "scored": scored})
            if not scored:
                continue
            summary = val_splits_summary(r, model, profile, results_dir=results_dir, data_root=data_root,
                                         scale=train.scale, seeds=seeds)
            lines += [{"row": row.label, "seed": r["seed"], "val split": int(k), "AP": 100 * m["AP"], "scored": True}
                      for k, m in summary["metrics"].items()]
    return pd.DataFrame(lines, columns=["row", "seed", "val split", "AP", "scored"])


def val_split_spread(frame: pd.DataFrame) -> pd.DataFrame:
    """Per row, from :func:`val_split_frame`'s scored runs: AP = row mean + run effect + split effect + residual
    (a two-way layout, runs x splits). Columns: the seed sd on the profile's split (the noise table's), the
    seed sd of each run's mean over all splits (what a validation set as large as all splits together would
    show), the sd over splits of one run's AP (mean over runs: how much the sample moves a level), the
    residual sd (how much it moves one run against another) and the residual's share of the seed variance on
    one split. The share needs at least 3 runs: from 2, the seed variance has one degree of freedom per split
    and the ratio of two such estimates can land anywhere (above 100 % too), so it reads NaN."""
    out = []
    for label, part in frame[frame["scored"]].groupby("row", sort=False):
        table = part.pivot_table(index="seed", columns="val split", values="AP")
        table = table.dropna()
        runs, splits = table.shape
        if runs < 2 or splits < 2:
            continue
        residual = table.sub(table.mean(axis=1), axis=0).sub(table.mean(axis=0), axis=1) + table.to_numpy().mean()
        residual_var = float((residual.to_numpy() ** 2).sum()) / ((runs - 1) * (splits - 1))
        seed_var = float(table.var(axis=0, ddof=1).mean())
        out.append({"row": label, "runs": runs, "val splits": splits,
                    "seed sd (profile's split)": float(table[0].std(ddof=1)) if 0 in table else math.nan,
                    "seed sd (mean over splits)": float(table.mean(axis=1).std(ddof=1)),
                    "split sd within a run": float(table.std(axis=1, ddof=1).mean()),
                    "residual sd": math.sqrt(residual_var),
                    "val-sample share of seed variance %": (100 * residual_var / seed_var
                                                            if runs >= 3 and seed_var > 0 else math.nan)})
    columns = ["runs", "val splits", "seed sd (profile's split)", "seed sd (mean over splits)",
               "split sd within a run", "residual sd", "val-sample share of seed variance %"]
    return pd.DataFrame(out, columns=["row", *columns]).set_index("row").round(2)


def plot_val_splits(frame: pd.DataFrame):
    """AP of each run (one line per seed) on each validation split, one panel per row: parallel lines mean
    that the training run, not the validation sample, sets the order of the seeds."""
    import matplotlib.pyplot as plt

    scored = frame[frame["scored"]]
    labels = list(dict.fromkeys(scored["row"]))
    fig, axes = plt.subplots(1, max(1, len(labels)), figsize=(3.2 * max(1, len(labels)), 3.0), squeeze=False)
    for ax, label in zip(axes[0], labels):
        part = scored[scored["row"] == label]
        for seed, run in part.groupby("seed"):
            run = run.sort_values("val split")
            ax.plot(run["val split"], run["AP"], "o-", label=f"seed {seed}")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("validation split (0: the profile's)")
        ax.set_xticks(sorted(part["val split"].unique()))
    axes[0][0].set_ylabel("AP (%)")
    if labels:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig
