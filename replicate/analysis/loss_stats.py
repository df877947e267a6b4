"""MOD Tables 3-4: the loss gap and loss sum of the assigned levels at points of training, FCOS vs FCOS+RFA.

The MOD heads log ``stat_loss_gap`` and ``stat_loss_sum`` every iteration
(:func:`replicate.models.detectors.mod.loss_gap_statistics`); a run record keeps each logged term's
curve, mean-pooled to at most 100 points (``loss_summary[term]["curve"]``,
:func:`replicate.experiments.runs.loss_summary`). The paper reads its statistics at 15k, 30k, 45k, 60k
and 75k of 90k iterations; :func:`stat_at` reads ours at the same fractions of the run's own schedule,
as the mean of the curve points within ``window`` (a fraction of the schedule) of each point, which
smooths the per-batch noise as a training logger's running average does. The "Reduction" row is
``(FCOS - FCOS+RFA) / FCOS`` in percent, as the paper prints it.

A run that did not learn (AP below :data:`~replicate.experiments.claims.LEARNED_FLOOR`; on the proxy, a
box regression that never starts) logs a regression cost that never falls, so its statistics say nothing
about RFA. As the chapters' claims do, :func:`learned_seeds` keeps the two rows on the seeds where both
learned, and names the seeds it leaves out.
"""

from __future__ import annotations

import statistics
from typing import Any, Mapping, Sequence

import pandas as pd

from ..errors import ReplicateError
from ..experiments.claims import compared_runs
from ..experiments.spec import TableSpec

Record = Mapping[str, Any]
BASE, RFA = "FCOS", "FCOS+RFA"


def learned_seeds(spec: TableSpec, records_by_row: Mapping[str, Sequence[Record]]
                  ) -> tuple[dict[str, list[Record]], list[str]]:
    """FCOS's and FCOS+RFA's runs on the seeds both have and where both learned, and one note per seed left
    out: the runs the claims of ``spec`` (MOD Table 3 or 4) would read (:func:`~.claims.compared_runs`)."""
    base, rfa, notes = compared_runs(spec, BASE, RFA, records_by_row)
    return {BASE: base, RFA: rfa}, list(notes)


def reduction_text(term: str, claim: Mapping[str, Any], left_out: Sequence[str], seeds: int) -> str:
    """The claim's verdict as a Markdown sentence: at how many points ours is lower, our mean reduction, on
    how many seeds, and the seeds left out (:func:`learned_seeds`)."""
    if claim["holds"] is None:
        verdict = "not checked: no seed where both FCOS and FCOS+RFA learned"
    else:
        verdict = (f"RFA lowers `{term}` at {claim['reduced']} of {claim['points']} points (the paper: at all "
                   f"{claim['points']}); our mean reduction is {claim['mean_reduction']:.1f} % over {seeds} "
                   f"seed{'s' if seeds != 1 else ''}, so the claim **{'holds' if claim['holds'] else 'does not hold'}**")
    return verdict + (f". Left out: {'; '.join(left_out)}." if left_out else ".")


def stat_at(record: Record, term: str, fractions: Sequence[float], window: float = 1 / 30) -> list[float]:
    """The logged statistic ``term`` of one run at the given fractions of its schedule."""
    summary = (record.get("loss_summary") or {}).get(term)
    if not summary or not summary.get("curve"):
        raise ReplicateError(f"run {record.get('key', '?')!r} logged no {term!r}: it was trained by a head that "
                             f"does not report it (the MOD heads do); retrain it with the current code")
    iters = int(record["config"]["train"]["iters"])
    curve = summary["curve"]
    values = []
    for fraction in fractions:
        target, half = fraction * iters, window * iters
        near = [v for i, v in curve if abs(i - target) <= half]
        if not near:
            near = [min(curve, key=lambda point: abs(point[0] - target))[1]]
        values.append(statistics.fmean(near))
    return values


def _mean_over_seeds(records: Sequence[Record], term: str, fractions: Sequence[float]) -> list[float] | None:
    if not records:
        return None
    per_seed = [stat_at(r, term, fractions) for r in records]
    return [statistics.fmean(column) for column in zip(*per_seed)]


def stat_table(records_by_row: Mapping[str, Sequence[Record]], term: str, paper: Mapping[str, Sequence[float]],
               iterations: Sequence[int], total_iterations: int) -> pd.DataFrame:
    """Paper beside ours: rows ``FCOS``, ``FCOS+RFA`` and ``Reduction (%)`` for ``paper`` and ``ours``.

    Columns are the paper's iteration points (``15k`` ...); ours are read at the same fractions of our
    schedule. Missing runs give NaN.
    """
    fractions = [i / total_iterations for i in iterations]
    ours = {row: _mean_over_seeds(records_by_row.get(row, ()), term, fractions) for row in (BASE, RFA)}
    if ours[BASE] and ours[RFA]:
        ours["Reduction (%)"] = [100 * (b - r) / b if b else float("nan") for b, r in zip(ours[BASE], ours[RFA])]
    else:
        ours["Reduction (%)"] = None
    theirs = {BASE: paper[BASE], RFA: paper[RFA], "Reduction (%)": paper["Reduction"]}
    columns = [f"{i // 1000}k" for i in iterations]
    data, index = [], []
    for row in (BASE, RFA, "Reduction (%)"):
        for who, values in (("paper", theirs[row]), ("ours", ours[row])):
            data.append(list(values) if values is not None else [float("nan")] * len(columns))
            index.append((row, who))
    return pd.DataFrame(data, index=pd.MultiIndex.from_tuples(index, names=["row", "source"]), columns=columns)


def reduction_holds(table: pd.DataFrame) -> dict[str, Any]:
    """The paper's claim: RFA lowers the statistic at every point. Counts the points where ours does."""
    ours = table.loc[("Reduction (%)", "ours")]
    if ours.isna().all():
        return {"points": len(ours), "reduced": None, "holds": None, "mean_reduction": None}
    reduced = int((ours > 0).sum())
    return {"points": len(ours), "reduced": reduced, "holds": reduced == len(ours),
            "mean_reduction": float(ours.mean())}


def plot_stat_curves(records_by_row: Mapping[str, Sequence[Record]], term: str, iterations: Sequence[int],
                     total_iterations: int):
    """The logged statistic over training for each row (its first run: pass :func:`learned_seeds`' runs to
    draw a learned one), with the paper's read points marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for row in (BASE, RFA):
        records = records_by_row.get(row, ())
        if not records:
            continue
        record = records[0]
        curve = record["loss_summary"][term]["curve"]
        ax.plot([i for i, _ in curve], [v for _, v in curve], label=row)
        iters = int(record["config"]["train"]["iters"])
    if any(records_by_row.get(row) for row in (BASE, RFA)):
        for i in iterations:
            ax.axvline(i / total_iterations * iters, color="0.8", lw=0.8, zorder=0)
    ax.set_xlabel("iteration")
    ax.set_ylabel(term.removeprefix("stat_").replace("_", " "))
    ax.legend()
    fig.tight_layout()
    return fig
