"""How long a run is expected to take, from the runs already recorded: what lets a sweep with a deadline
start only the runs that will finish before it (``replicate sweep --until ... --fit``).

A machine that stops at the deadline (a development session, a cluster reservation) loses the runs still
training then unless their work folder survives: starting a 25-minute run five minutes before the end
costs five minutes of two cores for nothing. :func:`expected_seconds` estimates a run's wall time as the
median, over the profile's recorded runs most like it, of their training time (every logged iteration's
time, summed over resumed parts) plus their inference time and a fixed allowance for start-up and COCO
evaluation; for a run resumed from its checkpoint, in proportion to the iterations it has left. "Most like
it" is tried in order: the same run at other seeds (model and training configs equal but for the seed; a
detector's variants differ in cost, MOD's R50 proxy variants taking from 11 to 42 minutes); the same
detector, backbone and schedule; for a detector without such records,
RetinaNet's with that backbone and schedule times the detector's cost relative to RetinaNet's measured by
``replicate bench threads`` (:func:`relative_costs`: AlignDet's is about 3.4); any detector with that
backbone and schedule (a deeper backbone costs more whatever the head); the same detector and schedule; any
detector on the same schedule. Records are timed where they were made, two runs side by side on the
proxy's machines, so the estimate holds for sweeps run the same way; with no comparable record it is
``None`` (unknown: the run starts).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

from ..provenance import jsonable
from .runs import RunRequest, iterations_done
from .store import Record, ResultsStore

START_UP_S = 60.0  # data set, model and weights loading, COCO evaluation and the record's writing


def record_seconds(record: Record) -> float | None:
    """A finished run's training plus inference time in seconds (``timings``), or ``None`` when unrecorded."""
    timings = record.get("timings") or {}
    train = timings.get("train_seconds")
    if not isinstance(train, (int, float)):
        return None
    return float(train) + float(timings.get("inference_seconds") or 0.0)


def relative_costs(bench_dir: str | Path) -> dict[str, float]:
    """Per detector preset, its training cost relative to RetinaNet's: the ratio of machine images per second
    (two runs side by side, one thread each, as the sweeps run) in ``replicate bench threads`` records
    (``threads_<profile>_<model>.json`` of the presets as they are, without ``--set``) of one profile, the
    one with the most presets; ``{}`` without a RetinaNet record."""
    speeds: dict[str, dict[str, float]] = {}
    for path in sorted(Path(bench_dir).glob("threads_*.json")):
        try:
            bench = json.loads(path.read_text(encoding="utf-8"))
            speed = float(bench["2x1"]["machine_imgs_per_s"])
        except (ValueError, KeyError, TypeError):
            continue  # not a threads benchmark record: it says nothing about cost
        if not bench.get("overrides") and speed > 0:
            speeds.setdefault(str(bench.get("profile")), {})[str(bench.get("model"))] = speed
    profile = max(speeds, key=lambda p: (len(speeds[p]), p), default=None)
    chosen = speeds.get(profile, {}) if profile is not None else {}
    if "retinanet" not in chosen:
        return {}
    return {model: chosen["retinanet"] / speed for model, speed in chosen.items()}


def _likeness(request: RunRequest, costs: dict[str, float]) -> list[tuple[Callable[[Record], bool], float]]:
    """(record filter, factor) pairs from the most to the least like ``request``: the records a filter keeps,
    their median time times the factor, estimate the run."""
    name, iters = request.model.name, request.train.iters
    backbone = jsonable(request.model.backbone)
    model, train = jsonable(request.model), {**jsonable(request.train), "seed": None}

    def same_schedule(r: Record) -> bool:
        return ((r.get("config") or {}).get("train") or {}).get("iters") == iters

    def same_backbone(r: Record) -> bool:
        return same_schedule(r) and ((r.get("config") or {}).get("model") or {}).get("backbone") == backbone

    def same_model(r: Record) -> bool:
        return same_schedule(r) and r.get("model") == name

    def same_model_and_backbone(r: Record) -> bool:
        return same_model(r) and same_backbone(r)

    def same_run(r: Record) -> bool:  # another seed of this run
        config = r.get("config") or {}
        return (config.get("model") == model and isinstance(config.get("train"), dict)
                and {**config["train"], "seed": None} == train)

    def retinanet_like(r: Record) -> bool:  # scaled by the detector's benchmarked cost relative to RetinaNet's
        return same_backbone(r) and r.get("model") == "retinanet"

    pairs = [(same_run, 1.0), (same_model_and_backbone, 1.0)]
    if name in costs:
        pairs.append((retinanet_like, costs[name]))
    return pairs + [(same_backbone, 1.0), (same_model, 1.0), (same_schedule, 1.0)]


def expected_seconds(request: RunRequest, records: Sequence[Record], costs: dict[str, float] | None = None
                     ) -> float | None:
    """The expected wall time of ``request`` (see the module doc) from ``records`` (its profile's) and the
    detectors' relative costs (:func:`relative_costs`), or ``None``."""
    records = [r for r in records if r.get("profile") == request.profile and record_seconds(r) is not None]
    for alike, factor in _likeness(request, costs or {}):
        times = [record_seconds(r) for r in records if alike(r)]
        if times:
            left = max(0, request.train.iters - iterations_done(request.run_dir)) / max(1, request.train.iters)
            return START_UP_S + left * factor * statistics.median(times)
    return None


def estimator(results_dir: str | Path, profile: str) -> Callable[[RunRequest], float | None]:
    """:func:`expected_seconds` over the records of ``profile`` in ``results_dir`` and the benchmarks in its
    ``bench/``, as they are now."""
    records: list[dict[str, Any]] = ResultsStore(results_dir).records(profile)
    costs = relative_costs(Path(results_dir) / "bench")
    return lambda request: expected_seconds(request, records, costs)
