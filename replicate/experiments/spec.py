"""A paper table as data: its rows (config deltas over a base recipe), the paper's numbers, its claims.

A :class:`TableSpec` names the paper and table it transcribes (``source``: table number and page of the
text in ``../shared/papers/``), the metric columns, one :class:`Row` per table row and the
:class:`Claim` s the paper draws from it. Paper numbers are transcribed as printed (COCO AP in
percent, e.g. ``38.6``); ours are fractions in the results store and are put on the paper's scale
when rendered. A row becomes one run per seed: :func:`run_config` resolves the model preset with the
row's overrides for a data profile, and the training schedule of that profile (1x, or 2x with
``Row.schedule``) with the table's overrides for that profile and the row's training overrides. Rows
that differ only in the model's ``test.*`` settings share one trained run (re-scored, not retrained).

Specs are registered per paper in :data:`REGISTRY` (``paper -> table id -> TableSpec``) by the paper
modules; :func:`validate` checks one and raises :class:`SpecError` naming the table and the problem.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import ReplicateError
from ..evaluation.coco_eval import IOU_BREAKDOWN

METRICS = ("AP", "AP50", "AP75", "AP90", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl", "FPS") + tuple(
    f"AP{t}{area}" for t in IOU_BREAKDOWN for area in ("", "_s", "_m", "_l") if f"AP{t}{area}" not in ("AP50", "AP90"))
# (the single-threshold APs per area range, replicate.evaluation.coco_eval.IOU_BREAKDOWN)
METRICS += tuple(f"mask_{m}" for m in ("AP", "AP50", "AP75", "APs", "APm", "APl"))
# (instance-mask AP, from the runs of detectors with a mask branch: replicate.engine.evaluate.coco_metrics)
# Columns read from a run's timings instead of its COCO metrics, and shown unscaled (images per second of
# the final evaluation on the run's own device: compare rows of one table, not with the paper's GPU).
TIMING_METRICS = {"FPS": "inference_fps"}


class SpecError(ReplicateError):
    """A malformed experiment spec."""


@dataclass(frozen=True)
class Row:
    """One table row: a model preset with config deltas, and what the paper reports for it."""

    label: str
    model: str  # a preset of replicate.models.zoo.MODELS
    model_overrides: dict[str, Any] = field(default_factory=dict)  # dotted paths: {"head.quality": "giou"}
    train_overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields: {"iters": 180000}
    schedule: str = "1x"  # "1x", "1.5x" or "2x": the profile's schedule or longer (engine.config.lengthened)
    paper: dict[str, float] = field(default_factory=dict)  # metric -> the paper's number, as printed
    reproduce: bool = True  # False: cited from the paper only (other backbones, test-dev, ...)
    note: str = ""
    # profile -> TrainConfig changes of this row only on that profile (after the table's own), e.g. a
    # released code's training scale on coco: {"coco": {"scale": "1024x608"}}
    profile_train_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """An ordering the paper draws from the table: ``better`` beats ``worse`` on ``metric``.

    ``margin`` is the paper's own difference (in the paper's units) when it states or implies one; the
    claim holds on our runs when our mean of ``better`` exceeds our mean of ``worse``.
    """

    text: str
    better: str  # row label
    worse: str  # row label
    metric: str = "AP"
    margin: float | None = None


@dataclass(frozen=True)
class TableSpec:
    paper: str  # short paper key: "mod", "aligndet", "retinanet_conf", "salt", "tsd"
    table: str  # "table3", "figure4", ...
    title: str
    source: str  # e.g. "MOD, Table 3 (p. 7)"
    metrics: tuple[str, ...]
    rows: tuple[Row, ...]
    claims: tuple[Claim, ...] = ()
    paper_scale: float = 100.0  # paper's unit per fraction (COCO AP printed in percent)
    note: str = ""
    reference: str | None = None  # the row effects are measured from (default: the first reproduced row)
    profile_train_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # profile -> TrainConfig
    # changes for every row on that profile: the paper's recipe where it differs, e.g. {"coco": {"scale": "1000x600"}}
    seeds: int | None = None  # at most this many seeds whatever a profile asks (a one-seed check); None: no cap

    @property
    def key(self) -> str:
        return f"{self.paper}:{self.table}"

    def seeds_for(self, seeds: int) -> int:
        """The seeds this table runs and reads when ``seeds`` are asked for: ``seeds``, capped by :attr:`seeds`."""
        return min(seeds, self.seeds) if self.seeds is not None else seeds

    def row(self, label: str) -> Row:
        for r in self.rows:
            if r.label == label:
                return r
        raise SpecError(f"{self.key}: no row labelled {label!r}")


REGISTRY: dict[str, dict[str, TableSpec]] = {}


def printed(values: str, metrics: tuple[str, ...], fractions: bool = False) -> dict[str, float]:
    """A table row as the paper prints it (cells separated by spaces, ``-`` for a cell left out) -> metric ->
    value in percent; ``fractions``: the paper prints fractions (0.357), rounded to one decimal of a percent."""
    cells = values.split()
    if len(cells) != len(metrics):
        raise ValueError(f"{len(cells)} cells for {len(metrics)} metrics: {values!r}")
    return {m: round(100 * float(c), 1) if fractions else float(c) for m, c in zip(metrics, cells) if c != "-"}


def register(spec: TableSpec) -> TableSpec:
    """Validate and add a spec to :data:`REGISTRY`; a duplicate key is an error."""
    validate(spec)
    tables = REGISTRY.setdefault(spec.paper, {})
    if spec.table in tables and tables[spec.table] != spec:
        raise SpecError(f"{spec.key}: registered twice with different contents")
    tables[spec.table] = spec
    return spec


def validate(spec: TableSpec) -> None:
    """Raise :class:`SpecError` naming the table and the problem if ``spec`` is malformed."""
    from ..engine.config import SCHEDULE_LENGTHS
    from ..models.zoo import MODELS

    where = spec.key
    if not spec.rows:
        raise SpecError(f"{where}: a table needs at least one row")
    unknown = [m for m in spec.metrics if m not in METRICS]
    if unknown:
        raise SpecError(f"{where}: unknown metrics {unknown}; choose from {list(METRICS)}")
    labels = [r.label for r in spec.rows]
    dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dupes:
        raise SpecError(f"{where}: duplicate row labels {dupes}")
    if spec.seeds is not None and spec.seeds < 1:
        raise SpecError(f"{where}: seeds must be at least 1 (got {spec.seeds}), or None for no cap")
    from ..profiles import NAMES as profiles

    for owner, overrides in [(where, spec.profile_train_overrides),
                             *((f"{where}, row {r.label!r}", r.profile_train_overrides) for r in spec.rows)]:
        odd = sorted(set(overrides) - set(profiles))
        if odd:
            raise SpecError(f"{owner}: profile_train_overrides for unknown profiles {odd}; choose from {list(profiles)}")
    for r in spec.rows:
        if r.model not in MODELS:
            raise SpecError(f"{where}, row {r.label!r}: unknown model {r.model!r}; choose from {sorted(MODELS)}")
        if r.schedule not in SCHEDULE_LENGTHS:
            raise SpecError(f"{where}, row {r.label!r}: unknown schedule {r.schedule!r}; "
                            f"choose from {sorted(SCHEDULE_LENGTHS)}")
        extra = sorted(set(r.paper) - set(spec.metrics))
        if extra:
            raise SpecError(f"{where}, row {r.label!r}: paper numbers for metrics {extra} not in the table's columns")
        bad = {k: v for k, v in r.paper.items() if not isinstance(v, (int, float)) or isinstance(v, bool)}
        if bad:
            raise SpecError(f"{where}, row {r.label!r}: paper numbers must be numbers, got {bad}")
    if spec.reference is not None and spec.reference not in labels:
        raise SpecError(f"{where}: reference row {spec.reference!r} is not a row of the table")
    for c in spec.claims:
        for lab in (c.better, c.worse):
            if lab not in labels:
                raise SpecError(f"{where}: claim {c.text!r} names unknown row {lab!r}")
        if c.metric not in spec.metrics:
            raise SpecError(f"{where}: claim {c.text!r} uses metric {c.metric!r}, not a column of the table")


def run_config(spec: TableSpec, row: Row, profile: str, num_classes: int | None = None):
    """(DetectorConfig, TrainConfig) of one row on a data profile."""
    from ..engine.config import lengthened, with_overrides
    from ..profiles import schedule_for
    from ..models.zoo import model_config

    where = f"{spec.key}, row {row.label!r}"
    try:
        model = model_config(row.model, profile, num_classes, row.model_overrides, where)
    except ReplicateError as exc:
        raise SpecError(str(exc)) from None
    try:
        train = lengthened(schedule_for(profile), row.schedule)
        changes = {**spec.profile_train_overrides.get(profile, {}), **row.profile_train_overrides.get(profile, {}),
                   **row.train_overrides}
        train = with_overrides(train, **changes)
        # with_overrides skips None (a CLI default); in a spec None is a value ({"amp": None}: float32)
        train = dataclasses.replace(train, **{k: v for k, v in changes.items() if v is None})
    except ReplicateError as exc:
        raise SpecError(f"{where}: {exc}") from None
    return model, train
