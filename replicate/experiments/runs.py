"""One run of a table row: what to train, training it in its work folder, and recording the result.

A :class:`RunRequest` is everything a job needs, resolved when it is made (the model and training
configs themselves, not just the table and row names), so that a job on another machine needs no paper
spec registered. :func:`execute_run` is idempotent: a run that the results store already holds is
returned as stored without training; otherwise it trains in ``WORK/runs/<profile>/<key>/`` (resuming
from the checkpoint an interrupted attempt left there), and only a finished run is recorded: an
interrupted one raises :class:`RunInterrupted` and leaves the store untouched.

:func:`replicate.experiments.sweep.ensure_runs` is what the book's notebooks call (the records of a
table's rows, running the missing ones first if asked); it shares one path with ``replicate sweep``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import socket
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..engine import distributed as du
from .. import profiles
from ..engine.config import TrainConfig
from ..engine.checkpoint import CHECKPOINT_NAME
from ..engine.rescore import evaluate_variants
from ..engine.train import train
from ..errors import ReplicateError
from ..io import atomic_write_json, read_json
from ..models.detector import DetectorConfig
from ..models.postprocess import TestConfig
from ..provenance import code_version, jsonable
from .spec import TableSpec, run_config
from .store import Record, ResultsStore, run_key, test_key

CURVE_POINTS = 100  # at most this many (iteration, value) points per loss curve in a record
RUN_INFO = "run.json"  # in a run's work folder: what the run is and when its first attempt started


class RunInterrupted(ReplicateError):
    """Training stopped on a signal and checkpointed; running the same request again resumes it."""


class DeadlineReached(RunInterrupted):
    """Training stopped at its request's deadline, or on a stop request (:func:`stop_file`), and
    checkpointed: not requeued, resumed by the next sweep."""


def stop_file(work_dir: str | Path) -> Path:
    """The file whose existence asks every sweep using the work folder ``work_dir`` to stop cleanly
    (``replicate stop``): no run starts any more, and running ones checkpoint and stop, as at a deadline.
    ``replicate sweep`` removes it when it starts."""
    return Path(work_dir) / "STOP"


def profile_num_classes(profile: str) -> int:
    """Number of classes of a data profile's dataset."""
    return profiles.get(profile).num_classes


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class RunRequest:
    """One run of one table row, picklable for a job: configs resolved, paths absolute."""

    spec_key: str  # "paper:table" the run was requested for (one of possibly several)
    row_label: str
    profile: str
    seed: int
    model: DetectorConfig
    train: TrainConfig  # its seed is ``seed``
    data_root: str | None = None
    results_dir: str = "results"
    work_dir: str = "work"
    device: str | None = None
    command: tuple[str, ...] = ()  # the command that asked for the run (recorded in its provenance)
    tests: tuple[TestConfig, ...] = ()  # further test configs to evaluate the trained model under
    deadline: float | None = None  # time.time() after which training checkpoints and stops (not requeued)

    @property
    def key(self) -> str:
        return run_key(self.model, self.train, self.profile, self.seed)

    @property
    def all_tests(self) -> tuple[TestConfig, ...]:
        """The model's own test config, then the further ones, without repeats."""
        out: list[TestConfig] = []
        for t in (self.model.test, *self.tests):
            if t not in out:
                out.append(t)
        return tuple(out)

    @property
    def stop_requested(self) -> bool:
        """Whether the request's deadline has passed or a stop was asked for (:func:`stop_file`)."""
        return (self.deadline is not None and time.time() > self.deadline) or stop_file(self.work_dir).exists()

    @property
    def run_dir(self) -> Path:
        return run_dir(self.work_dir, self.profile, self.key)

    def describe(self) -> str:
        return f"{self.spec_key} row {self.row_label!r} seed {self.seed} (run {self.key})"


def run_dir(work_dir: str | Path, profile: str, key: str) -> Path:
    """The work folder of a run: checkpoint, log, detections, metrics.json and run.json."""
    return Path(work_dir) / "runs" / profile / key


def requests_for(spec: TableSpec, profile: str, seeds: int = 1, *, data_root: str | Path | None = None,
                 results_dir: str | Path = "results", work_dir: str | Path = "work",
                 device: str | None = None) -> list[RunRequest]:
    """The runs of every reproduced row of ``spec`` (``Row.reproduce``) with seeds ``0 .. seeds - 1``, ``seeds``
    capped by the table's own (:meth:`TableSpec.seeds_for`: a one-seed check runs and reads one)."""
    if seeds < 1:
        raise ReplicateError(f"seeds must be >= 1 (got {seeds})")
    num_classes = profile_num_classes(profile)
    requests = []
    for row in spec.rows:
        if not row.reproduce:
            continue
        model, train_cfg = run_config(spec, row, profile, num_classes)
        for seed in range(spec.seeds_for(seeds)):
            requests.append(RunRequest(
                spec.key, row.label, profile, seed, model, dataclasses.replace(train_cfg, seed=seed),
                data_root=str(Path(data_root).resolve()) if data_root is not None else None,
                results_dir=str(Path(results_dir).resolve()), work_dir=str(Path(work_dir).resolve()),
                device=device, command=tuple(sys.argv)))
    return requests


def merge_requests(requests: Sequence[RunRequest]) -> list[RunRequest]:
    """One request per run (key), in first-seen order, carrying every test config its rows ask for.

    Rows that differ only in their test config (score fusion, thresholds) share one trained model; the
    merged request trains it once and evaluates it under each of their test configs.
    """
    merged: dict[str, RunRequest] = {}
    for r in requests:
        first = merged.setdefault(r.key, r)
        if r is not first:
            extra = tuple(t for t in r.all_tests if t not in first.all_tests)
            merged[r.key] = dataclasses.replace(first, tests=first.tests + extra)
    return list(merged.values())


def missing_tests(record: Record | None, tests: Sequence[TestConfig]) -> list[TestConfig]:
    """The configs of ``tests`` that ``record`` has no evaluation for (all of them without a record)."""
    if record is None:
        return list(tests)
    have = record.get("evaluations") or {}
    return [t for t in tests if test_key(t) not in have]


def is_complete(store: ResultsStore, request: RunRequest) -> bool:
    """Whether the store holds the run, evaluated under every test config the request asks for."""
    return not missing_tests(store.get(request.profile, request.key), request.all_tests)


def row_view(record: Record, test: TestConfig) -> Record | None:
    """The record as one table row sees it: ``metrics`` are those under the row's test config (and
    ``test`` names it), or ``None`` when the run has not been evaluated under it."""
    evaluation = (record.get("evaluations") or {}).get(test_key(test))
    if evaluation is None:
        return None
    return {**record, "metrics": evaluation["metrics"], "test": evaluation["test"]}


def job_id() -> str | None:
    """The submitit / SLURM job id of this process, if it runs as a job."""
    if os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit

        return str(submitit.JobEnvironment().job_id)
    return os.environ.get("SLURM_JOB_ID")


def execute_run(request: RunRequest) -> Record | None:
    """The run's record: the stored one if it has finished, else train (or resume) it and record it.

    Raises :class:`RunInterrupted` (nothing recorded) when training stops on SIGTERM/SIGUSR2.

    In a multi-process run (the process group initialised, e.g. by :class:`~.launch.TrainJob` for a job
    of several tasks) every rank calls this: rank 0 holds the run's lock, reads the store and tells the
    others whether to train; all ranks train together (DDP); rank 0 records the run and evaluates any
    missing test-time variant, and the other ranks return ``None``.
    """
    main = du.is_main()
    with run_lock(request.run_dir) if main else nullcontext():
        return _execute_locked(request, main)


@contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder/.lock`` (POSIX ``flock``; waits for the holder).

    Two processes asking for the same run (two notebooks of the book built in parallel, two sweeps)
    would otherwise train it twice into one folder; the second one waits, then finds the record.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _execute_locked(request: RunRequest, main: bool) -> Record | None:
    store = ResultsStore(request.results_dir)
    record = store.get(request.profile, request.key) if main else None
    if du.broadcast(main and record is None):
        out = request.run_dir
        info = _start_attempt(request, out) if main else {}
        if main:
            print(f"run {request.describe()}: attempt {info['attempts']} in {out} ({du.world_size()} process(es))",
                  flush=True)
        extra = {test_key(t): t for t in request.all_tests if t != request.model.test}
        result = train(request.model, request.profile, out, request.train, data_root=request.data_root,
                       device=request.device, progress=False, deadline=request.deadline,
                       stop_file=stop_file(request.work_dir), tests=extra)
        if result["status"] != "finished":
            if request.stop_requested:
                raise DeadlineReached(f"run {request.describe()} stopped at the sweep's deadline at iteration "
                                      f"{result['iteration']}/{request.train.iters}; sweeping again resumes it "
                                      f"from {result['checkpoint']}")
            raise RunInterrupted(f"run {request.describe()} interrupted at iteration {result['iteration']}/"
                                 f"{request.train.iters}; running it again resumes from {result['checkpoint']}")
        if main:
            record = build_record(request, result, info)
            path = store.put(record)
            print(f"run {request.describe()}: finished, recorded in {path}", flush=True)
    if not main:
        return None
    todo = missing_tests(record, request.all_tests)
    if todo:
        if not (request.run_dir / CHECKPOINT_NAME).is_file():
            raise ReplicateError(f"run {request.describe()} lacks evaluations under {len(todo)} test config(s) "
                                 f"and its checkpoint {request.run_dir / CHECKPOINT_NAME} is gone; remove "
                                 f"{store.path(request.profile, request.key)} to train it again")
        print(f"run {request.describe()}: evaluating {len(todo)} test-time variant(s)", flush=True)
        evaluations = evaluate_variants(request.run_dir, request.model, request.profile,
                                        {test_key(t): t for t in todo}, data_root=request.data_root,
                                        scale=request.train.scale, device=request.device)
        record = {**record, "evaluations": {**record["evaluations"], **evaluations}}
        store.put(record)
    return record


def _start_attempt(request: RunRequest, out: Path) -> dict[str, Any]:
    """Update ``run.json`` in the work folder (first start kept, attempts counted, each attempt's start,
    code version and host appended to ``history``) and return it."""
    path = out / RUN_INFO
    previous = read_json(path, what="run info") if path.is_file() else {}
    now = utc_now()
    attempt = {"started": now, **code_version(), "hostname": socket.gethostname()}
    info = {"key": request.key, "spec_key": request.spec_key, "row": request.row_label,
            "profile": request.profile, "seed": request.seed, "model": request.model.name,
            "iters": request.train.iters, "started": previous.get("started", now),
            "attempts": previous.get("attempts", 0) + 1, "last_attempt": now,
            "history": [*previous.get("history", []), attempt],
            "hostname": socket.gethostname(), "job_id": job_id()}
    atomic_write_json(path, info, indent=1)
    return info


def build_record(request: RunRequest, result: dict[str, Any], info: dict[str, Any]) -> Record:
    """The store's record of a finished ``train()`` result (see :mod:`.store` for the fields).

    The provenance is that of ``metrics.json`` without its copies of the configuration (the record
    has it under ``config``), plus where and when the run ran, the command that asked for it and, from
    ``info`` (:func:`_start_attempt`'s), its attempts: a run resumed from a checkpoint trained under each
    attempt's commit (``attempts``: start, commit, dirty, host per attempt; ``attempts_unrecorded``: the
    earlier ones a work folder of older code did not describe). Its ``commit`` is the last attempt's.
    """
    out = request.run_dir
    provenance = {k: v for k, v in result["provenance"].items() if k not in ("config", "train_config")}
    history = info.get("history", [])
    provenance.update(hostname=socket.gethostname(), started=info["started"], finished=utc_now(),
                      command=list(request.command or sys.argv), job_id=job_id(), attempts=history)
    if info.get("attempts", len(history)) > len(history):
        provenance["attempts_unrecorded"] = info["attempts"] - len(history)
    return {
        "key": request.key,
        "profile": request.profile,
        "seed": request.seed,
        "model": request.model.name,
        "config": {"model": jsonable(request.model), "train": jsonable(request.train)},
        "metrics": result["metrics"],
        "test": jsonable(request.model.test),
        "evaluations": ({test_key(request.model.test): {"test": jsonable(request.model.test),
                                                         "metrics": result["metrics"]},
                         **{k: {**v, "inference": result["timings"]} for k, v in result.get("evaluations", {}).items()}}
                        if result["metrics"] is not None else {}),
        "loss_summary": loss_summary(out / "log.jsonl"),
        "timings": result["timings"],
        "provenance": provenance,
        "work_dir": str(out),
    }


def loss_summary(log_path: Path, points: int = CURVE_POINTS) -> dict[str, dict[str, Any]]:
    """Per loss term of ``log.jsonl`` (``loss``, each ``loss_*`` and each ``stat_*`` statistic): the mean over the first and the
    last 10% of iterations, the minimum, and the curve mean-pooled to at most ``points`` points
    ``[mean iteration, mean value]``."""
    lines = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ReplicateError(f"{log_path}: empty training log")
    terms = ["loss"] + sorted(k for k in lines[0] if k.startswith(("loss_", "stat_")))
    summary = {}
    for term in terms:
        pairs = [(line["iter"], line[term]) for line in lines if term in line]
        values = [v for _, v in pairs]
        tenth = max(1, math.ceil(len(values) / 10))
        pool = math.ceil(len(pairs) / points)
        chunks = [pairs[i:i + pool] for i in range(0, len(pairs), pool)]
        summary[term] = {
            "first": _mean(values[:tenth]),
            "last": _mean(values[-tenth:]),
            "min": min(values),
            "curve": [[_mean([i for i, _ in c]), _mean([v for _, v in c])] for c in chunks],
        }
    return summary


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def iterations_done(run_dir: str | Path) -> int:
    """The last iteration a run's log (``log.jsonl`` in ``run_dir``) recorded: 0 for a run not started, or
    whose log was cut mid-line."""
    log = Path(run_dir) / "log.jsonl"
    lines = [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip()] if log.is_file() else []
    try:
        return int(json.loads(lines[-1])["iter"]) if lines else 0
    except (ValueError, KeyError, TypeError):
        return 0


def unfinished_runs(work_dir: str | Path, store: ResultsStore, profile: str | None = None) -> list[dict[str, Any]]:
    """The runs with a work folder but no record: their ``run.json`` plus ``iteration`` (the last one
    logged) and ``updated`` (when the log last changed, ISO UTC), ordered by profile and key."""
    out = []
    for info_path in sorted((Path(work_dir) / "runs").glob(f"{profile or '*'}/*/{RUN_INFO}")):
        info = read_json(info_path, what="run info")
        if store.finished(info["profile"], info["key"]):
            continue
        log = info_path.parent / "log.jsonl"
        changed = log.stat().st_mtime if log.is_file() else info_path.stat().st_mtime
        info.update(iteration=iterations_done(info_path.parent),
                    updated=datetime.fromtimestamp(changed, timezone.utc).isoformat(timespec="seconds"))
        out.append(info)
    return out
