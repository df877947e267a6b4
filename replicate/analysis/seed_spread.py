"""When a seed's AP is decided: each run's loss early in training against its final AP.

The calibration's noise target asks how far a detector's AP moves over training seeds. This module asks
*when* a seed's outcome is fixed, from the committed records alone (no training): runs that differ only in
their seed form a group (same detector, same model and training settings, same profile); within each group,
every run's loss at a point of its schedule and its final AP are taken as deviations from the group's means;
the Pearson correlation of the pooled deviations, point by point, says whether the seeds that end worse were
already behind then. A strong negative correlation early means the spread is set in the first part of
training and carried to the end; none means it arises later, or is the validation sample's.

Loss values are read from the records' mean-pooled curves (``loss_summary[term]["curve"]``) with
:func:`replicate.analysis.loss_stats.stat_at`, at fractions of each run's own schedule.
"""

from __future__ import annotations

import json
import math
import statistics
from typing import Any, Mapping, Sequence

import pandas as pd

from ..errors import ReplicateError
from .loss_stats import stat_at

Record = Mapping[str, Any]
FRACTIONS = (0.035, 0.055, 0.105, 0.21, 0.42, 0.995)  # of the schedule: ~170, 260, 500, 1000, 2000, 4780 of 4800


def _training_identity(record: Record) -> str:
    """What a run trained, less its seed and its test settings (test-time variants share one training)."""
    config = record.get("config") or {}
    model = {k: v for k, v in (config.get("model") or {}).items() if k != "test"}
    train = {k: v for k, v in (config.get("train") or {}).items() if k != "seed"}
    return json.dumps([record.get("profile"), record.get("model"), model, train], sort_keys=True, default=str)


def seed_groups(records: Sequence[Record], models: Sequence[str]) -> list[list[Record]]:
    """Records of the detectors ``models`` grouped by what they trained, one run per seed, groups of >= 2."""
    groups: dict[str, dict[Any, Record]] = {}
    for record in records:
        if record.get("model") in models:
            groups.setdefault(_training_identity(record), {}).setdefault(record.get("seed"), record)
    return [list(by_seed.values()) for by_seed in groups.values() if len(by_seed) >= 2]


def _deviation_rows(family: str, groups: Sequence[Sequence[Record]], fraction: float, term: str,
                    metric: str) -> list[dict[str, Any]]:
    rows = []
    for group in groups:
        losses = [stat_at(r, term, [fraction])[0] for r in group]
        values = [100 * float(r["metrics"][metric]) for r in group]
        mean_loss, mean_value = statistics.fmean(losses), statistics.fmean(values)
        for record, loss, value in zip(group, losses, values):
            rows.append({"family": family, "model": record.get("model"), "seed": record.get("seed"),
                         "group size": len(group), "loss deviation": loss - mean_loss,
                         f"{metric} deviation": value - mean_value})
    return rows


def _deviation_frame(rows: list[dict[str, Any]], metric: str) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["family", "model", "seed", "group size", "loss deviation",
                                       f"{metric} deviation"])


def deviations(records: Sequence[Record], families: Mapping[str, Sequence[str]], fraction: float,
               term: str = "loss_cls", metric: str = "AP") -> pd.DataFrame:
    """One row per run of a group: its family, detector, seed, and its loss ``term`` at ``fraction`` of the
    schedule and its final ``metric`` (points), each minus its group's mean."""
    rows = [row for family, models in families.items()
            for row in _deviation_rows(family, seed_groups(records, models), fraction, term, metric)]
    return _deviation_frame(rows, metric)


def pooled_correlation(frame: pd.DataFrame, metric: str = "AP") -> float:
    """Pearson correlation of the (already group-centred) deviations; NaN when either has no spread."""
    x, y = frame["loss deviation"].to_numpy(float), frame[f"{metric} deviation"].to_numpy(float)
    denominator = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum()) / denominator if denominator else math.nan


def early_loss_table(records: Sequence[Record], families: Mapping[str, Sequence[str]],
                     fractions: Sequence[float] = FRACTIONS, term: str = "loss_cls",
                     metric: str = "AP") -> pd.DataFrame:
    """Per family: its groups and runs, and the within-group correlation between ``term`` at each fraction
    of the schedule (columns ``at N %``) and the final ``metric``."""
    if not families:
        raise ReplicateError("early_loss_table: no detector families given")
    data, index = [], []
    for family, models in families.items():
        groups = seed_groups(records, models)
        row: dict[str, float] = {"groups": len(groups), "runs": sum(len(g) for g in groups)}
        for fraction in fractions:
            dev = _deviation_frame(_deviation_rows(family, groups, fraction, term, metric), metric)
            row[f"at {100 * fraction:.1f} %"] = pooled_correlation(dev, metric) if len(dev) else math.nan
        data.append(row)
        index.append(family)
    return pd.DataFrame(data, index=pd.Index(index, name="family"))


def plot_early_loss(frame: pd.DataFrame, fraction: float, term: str = "loss_cls", metric: str = "AP"):
    """Scatter of :func:`deviations` at one fraction: loss deviation against final-metric deviation."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for family, part in frame.groupby("family", sort=False):
        ax.scatter(part["loss deviation"], part[f"{metric} deviation"], label=f"{family} ({len(part)} runs)", s=18)
    ax.axhline(0, color="0.8", lw=0.8, zorder=0)
    ax.axvline(0, color="0.8", lw=0.8, zorder=0)
    ax.set_xlabel(f"{term} at {100 * fraction:.1f} % of training, minus its group's mean")
    ax.set_ylabel(f"final {metric} minus its group's mean")
    if len(frame):
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
