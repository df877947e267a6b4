"""Claim statistics: our numbers of a table's rows and the paper's claims checked on them, with their
spread over seeds. Rendering lives in :mod:`.report`; this module only computes.

``records_by_row`` maps a row label to the run records of that row (one per seed, as the results store
gives them; a record's ``metrics`` are fractions). Numbers come out on the paper's scale
(``spec.paper_scale``). A claim is *checked* only on runs that have learned: each run's main metric (AP)
is at least :data:`LEARNED_FLOOR` points. Below it (a smoke run, a diverged or collapsed one) any
ordering is noise, and one collapsed seed would dominate a row's mean and spread. So when a run of
either row did not learn, the claim is checked on the seeds where both rows' runs learned (the rows are
compared seed by seed, as they share data order and initialisation), and the result says which seeds
were left out and why (:attr:`ClaimResult.left_out`); row effects (:func:`effects`) do the same against
the reference row. With no such seed left, or rows not run on the same seeds, the claim reads "not
checked". The table's status column counts the runs that did not learn, so a collapse stays in view.

Rows run on different seeds (a sweep half-way through a seed, one row's run still missing) are compared
on the seeds they share, seed by seed, and the seeds run for one row only are named as left out: a
margin between means over different seeds would mix the rows' difference with the seeds'. Rows that share
no seed are compared on all their runs, unpaired.

A checked claim's verdict weighs our margin against its standard error over seeds with Student's t: it
holds (or is reversed) when the margin's 95 % confidence interval excludes zero, i.e. when
``|margin| > t(0.975, df) * se``, with ``df`` the degrees of freedom of the standard error (``n - 1``
seeds when paired, Welch-Satterthwaite when not). With two seeds that factor is 12.7, with three 4.3,
with five 2.8: a spread estimated from two or three seeds is itself uncertain, and a fixed factor of two
(the rule before 2026-12-04) let two seeds whose differences happened to agree call a 0.4-AP margin
established.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from scipy import stats as scipy_stats

from ..errors import ReplicateError
from .spec import TIMING_METRICS, Row, TableSpec

Record = Mapping[str, Any]
RecordsByRow = Mapping[str, Sequence[Record]]
LEARNED_FLOOR = 5.0  # AP points (paper scale): a run whose AP is below it has not learned


def sample_variance(values: Sequence[float]) -> float:
    """The sample variance (``ddof=1``); NaN with fewer than two values or when any value is NaN (a metric
    undefined on this data: :mod:`statistics` raises on NaN)."""
    values = list(values)
    if len(values) < 2 or any(math.isnan(v) for v in values):
        return math.nan
    return statistics.variance(values)


def sample_std(values: Sequence[float]) -> float:
    return math.sqrt(sample_variance(values))


def main_metric(spec: TableSpec) -> str:
    """The metric a table is summarised by: AP when it is a column, else its first column."""
    return "AP" if "AP" in spec.metrics else spec.metrics[0]


@dataclass(frozen=True)
class RowStats:
    """Our numbers for one row on the paper's scale: per-metric mean and spread over ``n`` seeds."""

    n: int
    mean: dict[str, float]
    std: dict[str, float]  # NaN with a single seed
    not_learned: int = 0  # runs whose main metric is below LEARNED_FLOOR


CONFIDENCE = 0.95  # a margin whose two-sided confidence interval at this level holds zero is "within seed noise"


SEEDS_LIMIT = 50  # :func:`seeds_to_resolve` looks no further


def resolvable_margin(sd: float, seeds: int) -> float:
    """Half-width of the :data:`CONFIDENCE` interval of a margin paired over ``seeds`` seeds whose per-seed
    differences spread with standard deviation ``sd``: ``t(seeds - 1) * sd / sqrt(seeds)``. A margin
    wider than this is resolved (holds or is reversed); a narrower one stays within seed noise."""
    if seeds < 2:
        raise ReplicateError(f"resolvable_margin: a spread needs at least 2 seeds, got {seeds}")
    return t_critical(seeds - 1) * sd / math.sqrt(seeds)


def seeds_to_resolve(margin: float, sd: float, limit: int = SEEDS_LIMIT) -> int | None:
    """The fewest seeds (at least 2) whose :func:`resolvable_margin` at spread ``sd`` is below ``|margin|``;
    ``None`` when more than ``limit`` would be needed (or the margin is 0)."""
    for seeds in range(2, limit + 1):
        if resolvable_margin(sd, seeds) < abs(margin):
            return seeds
    return None


def t_critical(df: float) -> float:
    """Student's t quantile for a two-sided :data:`CONFIDENCE` interval with ``df`` degrees of freedom
    (12.71 at 1, 4.30 at 2, 2.78 at 4; 1.96 in the limit)."""
    if not df > 0:
        raise ReplicateError(f"t_critical: degrees of freedom must be positive, got {df}")
    return float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, df))


@dataclass(frozen=True)
class ClaimResult:
    """One claim of the paper checked on our runs; margins are ``better - worse`` in the paper's units.

    ``holds`` is ``None`` when either row has no runs of ours (missing, or cited only). ``ours_se`` is
    the standard error of our margin over seeds: paired by seed when the rows share seeds (each seed's
    difference, on the shared seeds; the rows then share data order and initialisation, and test-time
    variants share the trained model), else from the two rows' spreads; ``None`` with fewer than two
    seeds on a row. ``ours_df`` is its degrees of freedom (see the module docstring). ``seeds`` is the
    smaller number of runs of the two rows that the margin reads.
    """

    text: str
    metric: str
    better: str
    worse: str
    paper_margin: float | None
    ours_margin: float | None
    holds: bool | None
    ours_se: float | None = None
    seeds: int = 0
    learned: bool = True  # the runs the claim is checked on reach LEARNED_FLOOR on the main metric
    left_out: tuple[str, ...] = ()  # per seed left out: run for one row only, or which row's run did not learn
    ours_df: float | None = None
    paired: bool = False  # ours_se comes from per-seed differences

    @property
    def difference_sd(self) -> float | None:
        """Standard deviation of the per-seed differences (``ours_se * sqrt(seeds)``) of a paired margin;
        ``None`` for an unpaired one or without a spread."""
        if not self.paired or self.ours_se is None:
            return None
        return self.ours_se * math.sqrt(self.seeds)

    @property
    def seeds_for_paper_margin(self) -> int | None:
        """How many seeds would resolve a margin of the paper's size at our spread (:func:`seeds_to_resolve`):
        what more seeds can settle, as opposed to what the benchmark's noise hides; ``None`` without a
        paired spread or a paper margin, or beyond :data:`SEEDS_LIMIT`."""
        sd = self.difference_sd
        if sd is None or self.paper_margin is None or math.isnan(self.paper_margin):
            return None
        return seeds_to_resolve(self.paper_margin, sd)

    @property
    def noise_bound(self) -> float:
        """Half-width of the margin's :data:`CONFIDENCE` interval: ``t(df) * se`` (NaN without a spread)."""
        if self.ours_se is None or not self.ours_df:
            return math.nan
        return t_critical(self.ours_df) * self.ours_se

    @property
    def left_out_text(self) -> str:
        """``"1 of 2 seeds left out: FCOS did not learn on seed 0"`` (or ``"seed 2 is run for FCOS only"``),
        or ``""`` when none was."""
        if not self.left_out or not self.learned:
            return ""
        total = self.seeds + len(self.left_out)
        return f"{len(self.left_out)} of {total} seeds left out: " + "; ".join(self.left_out)

    @property
    def verdict(self) -> str:
        """``holds`` / ``reversed`` (the margin's :data:`CONFIDENCE` interval excludes zero), ``within seed
        noise``, ``holds (1 seed)`` / ``does not hold (1 seed)`` without a spread, or ``not checked``."""
        if not self.learned:
            return f"not checked (a run of these rows did not learn: AP below {LEARNED_FLOOR:g})"
        if self.holds is None:
            return "not checked"
        if self.ours_se is None:
            return f"{'holds' if self.holds else 'does not hold'} ({self.seeds} seed{'s' if self.seeds != 1 else ''})"
        if abs(self.ours_margin) <= self.noise_bound:
            return "within seed noise"
        return "holds" if self.holds else "reversed"


def _metric_value(spec: TableSpec, record: Record, metric: str) -> float:
    if metric in TIMING_METRICS:
        timings = record.get("timings") or {}
        if timings.get(TIMING_METRICS[metric]) is None:
            raise ReplicateError(f"{spec.key}: run {record.get('key', '?')!r} has no {TIMING_METRICS[metric]!r} "
                                 f"in its timings")
        return float(timings[TIMING_METRICS[metric]])
    metrics = record.get("metrics") or {}
    if metric not in metrics or metrics[metric] is None:
        raise ReplicateError(f"{spec.key}: run {record.get('key', '?')!r} has no {metric!r} in its metrics "
                             f"(has {sorted(metrics)})")
    if float(metrics[metric]) < 0:  # pycocotools' -1: no ground truth in that area range (undefined)
        return math.nan
    return float(metrics[metric]) * spec.paper_scale


def row_stats(spec: TableSpec, row: Row, records: Sequence[Record]) -> RowStats | None:
    """Mean and spread of ``records`` on the table's metrics, or ``None`` without runs to count."""
    if not row.reproduce or not records:
        return None
    values = {metric: [_metric_value(spec, r, metric) for r in records] for metric in spec.metrics}
    mean = {metric: statistics.fmean(v) for metric, v in values.items()}
    std = {metric: sample_std(v) for metric, v in values.items()}
    not_learned = sum(not v >= LEARNED_FLOOR for v in values[main_metric(spec)])
    return RowStats(len(records), mean, std, not_learned)


def _all_stats(spec: TableSpec, records_by_row: RecordsByRow) -> dict[str, RowStats | None]:
    unknown = sorted(set(records_by_row) - {r.label for r in spec.rows})
    if unknown:
        raise ReplicateError(f"{spec.key}: records for rows {unknown} that the table does not have")
    return {row.label: row_stats(spec, row, records_by_row.get(row.label, ())) for row in spec.rows}


def _learned_pairs(spec: TableSpec, rows: tuple[str, str], records: tuple[Sequence[Record], Sequence[Record]]
                   ) -> tuple[list[Record], list[Record], tuple[str, ...]] | None:
    """The two rows' runs on the seeds where both learned, and one note per seed left out (which row's run
    did not learn on it); ``None`` when the rows are not run on the same, distinct seeds (no pairing)."""
    key = main_metric(spec)
    by_seed = [{r.get("seed"): r for r in runs} for runs in records]
    if any(len(m) != len(runs) for m, runs in zip(by_seed, records)) or set(by_seed[0]) != set(by_seed[1]):
        return None
    kept: list[Any] = []
    notes = []
    for seed in sorted(by_seed[0], key=lambda s: (str(type(s)), s)):
        failed = [label for label, m in zip(rows, by_seed) if not _metric_value(spec, m[seed], key) >= LEARNED_FLOOR]
        if failed:
            notes.append(f"{' and '.join(dict.fromkeys(failed))} did not learn on seed {seed}")
        else:
            kept.append(seed)
    return [by_seed[0][s] for s in kept], [by_seed[1][s] for s in kept], tuple(notes)


def _shared_seeds(rows: tuple[str, str], records: tuple[Sequence[Record], Sequence[Record]]
                  ) -> tuple[list[Record], list[Record], tuple[str, ...]] | None:
    """The two rows' runs on the seeds both were run on, and one note per seed run for one row only;
    ``None`` when a row repeats a seed or the rows share none (no pairing)."""
    by_seed = [{r.get("seed"): r for r in runs} for runs in records]
    if any(len(m) != len(runs) for m, runs in zip(by_seed, records)):
        return None
    shared = set(by_seed[0]) & set(by_seed[1])
    if not shared:
        return None
    only = sorted(((s, label) for label, m in zip(rows, by_seed) for s in set(m) - shared),
                  key=lambda item: (str(type(item[0])), item[0]))
    keep = [[r for r in runs if r.get("seed") in shared] for runs in records]
    return keep[0], keep[1], tuple(f"seed {seed} is run for {label} only" for seed, label in only)


def _compared(spec: TableSpec, a: str, b: str, records_by_row: RecordsByRow, stats: Mapping[str, RowStats | None]
              ) -> tuple[Sequence[Record], Sequence[Record], RowStats | None, RowStats | None, tuple[str, ...], bool]:
    """What a comparison of rows ``a`` and ``b`` reads: their runs, stats and the seeds left out (see the
    module docstring), and whether the runs read have learned."""
    ra, rb = records_by_row.get(a, ()), records_by_row.get(b, ())
    sa, sb = stats[a], stats[b]
    notes: tuple[str, ...] = ()
    shared = _shared_seeds((a, b), (ra, rb)) if sa and sb else None
    if shared and shared[2]:
        ra, rb, notes = shared
        sa, sb = row_stats(spec, spec.row(a), ra), row_stats(spec, spec.row(b), rb)
    if not (sa and sb) or sa.not_learned + sb.not_learned == 0:
        return ra, rb, sa, sb, notes, True
    pairs = _learned_pairs(spec, (a, b), (ra, rb))
    if pairs is None or not pairs[0]:
        return ra, rb, sa, sb, notes + (pairs[2] if pairs else ()), False
    ka, kb, more = pairs
    return ka, kb, row_stats(spec, spec.row(a), ka), row_stats(spec, spec.row(b), kb), notes + more, True


def compared_runs(spec: TableSpec, a: str, b: str, records_by_row: RecordsByRow
                  ) -> tuple[list[Record], list[Record], tuple[str, ...]]:
    """The runs of rows ``a`` and ``b`` that a comparison of the two reads, as the claims read them: on the
    seeds both were run on and where both learned, with one note per seed left out; no runs when no such
    seed is left. For analyses beside the claims (MOD Tables 3-4's loss statistics) that must read the same
    runs."""
    ra, rb, _, _, notes, learned = _compared(spec, a, b, records_by_row, _all_stats(spec, records_by_row))
    return (list(ra), list(rb), notes) if learned else ([], [], notes)


def claim_results(spec: TableSpec, records_by_row: RecordsByRow) -> list[ClaimResult]:
    """Each of the table's claims on our runs: it holds when our mean of ``better`` exceeds ``worse``'s,
    on the seeds where both rows' runs learned (see the module docstring).

    The paper's margin comes from its numbers of both rows where it prints them, else from the
    claim's stated ``margin`` (``None`` when neither exists).
    """
    stats = _all_stats(spec, records_by_row)
    results = []
    for claim in spec.claims:
        better, worse = spec.row(claim.better), spec.row(claim.worse)
        if claim.metric in better.paper and claim.metric in worse.paper:
            paper_margin: float | None = float(better.paper[claim.metric]) - float(worse.paper[claim.metric])
        else:
            paper_margin = claim.margin
        rb, rw, sb, sw, left_out, learned = _compared(spec, claim.better, claim.worse, records_by_row, stats)
        ours_margin = sb.mean[claim.metric] - sw.mean[claim.metric] if sb and sw else None
        if ours_margin is not None and math.isnan(ours_margin):  # a metric undefined on this data
            ours_margin = None
        holds = None if ours_margin is None or not learned else ours_margin > 0
        se, df, paired = (_margin_spread(spec, claim.metric, rb, rw) if ours_margin is not None
                          else (None, None, False))
        results.append(ClaimResult(claim.text, claim.metric, claim.better, claim.worse, paper_margin, ours_margin,
                                   holds, se, min(sb.n, sw.n) if sb and sw else 0, learned, left_out, df, paired))
    return results


def _margin_spread(spec: TableSpec, metric: str, better: Sequence[Record], worse: Sequence[Record]
                   ) -> tuple[float | None, float | None, bool]:
    """Standard error of ``mean(better) - mean(worse)`` over seeds (see :class:`ClaimResult`), its degrees
    of freedom, and whether it is paired by seed; ``(None, None, False)`` without a spread."""
    b = {r.get("seed"): _metric_value(spec, r, metric) for r in better}
    w = {r.get("seed"): _metric_value(spec, r, metric) for r in worse}
    if len(b) != len(better) or len(w) != len(worse):  # seeds not unique: no pairing
        b, w = dict(enumerate(b.values())), {-1 - i: v for i, v in enumerate(w.values())}
    if set(b) == set(w) and len(b) >= 2:
        diffs = [b[k] - w[k] for k in b]
        se = sample_std(diffs) / math.sqrt(len(diffs))
        return (None, None, False) if math.isnan(se) else (se, len(diffs) - 1, True)
    if len(b) >= 2 and len(w) >= 2:
        vb, vw = sample_variance(b.values()) / len(b), sample_variance(w.values()) / len(w)
        se = math.sqrt(vb + vw)
        if math.isnan(se):
            return None, None, False
        spread = vb**2 / (len(b) - 1) + vw**2 / (len(w) - 1)  # Welch-Satterthwaite
        return se, (vb + vw) ** 2 / spread if spread > 0 else len(b) + len(w) - 2, False
    return None, None, False




def reference_row(spec: TableSpec) -> Row:
    """The row a table's effects are measured from: ``spec.reference`` when set, else the first row we
    reproduce that the paper prints a main-metric number for (its baseline, as the papers lay tables out)."""
    if spec.reference:
        return spec.row(spec.reference)
    key = main_metric(spec)
    for row in spec.rows:
        if row.reproduce and key in row.paper:
            return row
    return spec.rows[0]


@dataclass(frozen=True)
class Effect:
    """A row's effect on one metric relative to the reference row, in the paper's units."""

    paper: float  # NaN when the paper prints either number not
    ours: float  # NaN without runs of both rows
    ours_se: float | None  # over seeds (paired by seed when the rows share seeds); None with one seed
    left_out: int = 0  # seeds left out: run for one of the two rows only, or a run of either did not learn


def effects(spec: TableSpec, records_by_row: RecordsByRow) -> dict[str, dict[str, Effect]]:
    """Row label -> metric -> :class:`Effect` relative to :func:`reference_row` (the comparison a proxy
    benchmark supports: how much a change moves the metric, not the metric's level)."""
    ref = reference_row(spec)
    stats = _all_stats(spec, records_by_row)
    out: dict[str, dict[str, Effect]] = {}
    for row in spec.rows:
        per_metric = {}
        compared = _compared(spec, row.label, ref.label, records_by_row, stats)
        for metric in spec.metrics:
            paper = float(row.paper.get(metric, math.nan)) - float(ref.paper.get(metric, math.nan))
            if row.label == ref.label:
                r = stats[ref.label]
                per_metric[metric] = Effect(paper, r.mean[metric] - r.mean[metric] if r else math.nan, None)
                continue
            rs, rr, s, r, left_out, learned = compared
            ours = s.mean[metric] - r.mean[metric] if s and r else math.nan
            se = _margin_spread(spec, metric, rs, rr)[0] if s and r else None
            per_metric[metric] = Effect(paper, ours, se, len(left_out) if learned else 0)
        out[row.label] = per_metric
    return out
