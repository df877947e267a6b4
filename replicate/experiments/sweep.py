"""Sweeps: every run of a paper (``mod``) or of one of its tables (``mod:table3``) on a data profile.

:func:`sweep` resolves the target against :data:`~.spec.REGISTRY`, makes the runs of every reproduced
row for seeds ``0 .. seeds - 1``, counts a run shared by several tables once (same key), skips the
runs the results store already holds and submits the others as one job array (:mod:`.launch`).
Running the same sweep again therefore only does what is left: after an interruption, a failure or a
changed row. :func:`table_status` is the per-row view behind ``replicate list``.

Paper specs register themselves when their module is imported; :func:`load_papers` imports every
module of :data:`PAPERS_PACKAGE` (once it exists) so that the command line knows them.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import pkgutil
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .. import profiles
from ..errors import ReplicateError
from .launch import run_requests
from .runs import RunRequest, is_complete, merge_requests, missing_tests, requests_for, row_view
from .spec import REGISTRY, TableSpec
from .store import Record, ResultsStore

PAPERS_PACKAGE = "replicate.experiments.papers"
STATUSES = ("finished", "running", "interrupted", "failed", "missing")


def load_papers() -> dict[str, dict[str, TableSpec]]:
    """Import the paper modules (registering their specs) and return :data:`~.spec.REGISTRY`."""
    if importlib.util.find_spec(PAPERS_PACKAGE) is not None:
        package = importlib.import_module(PAPERS_PACKAGE)
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{PAPERS_PACKAGE}.{module.name}")
    return REGISTRY


def known_targets() -> list[str]:
    return [f"{paper}:{table}" for paper in sorted(REGISTRY) for table in sorted(REGISTRY[paper])]


def resolve_target(target: str) -> list[TableSpec]:
    """The tables of ``PAPER`` or the one table of ``PAPER:TABLE``, or of several such targets separated by
    commas (in that order, each table once: a sweep's priority order, one job array for all); unknown ones
    are an error listing the known."""
    load_papers()
    specs: list[TableSpec] = []
    for part in target.split(","):
        for spec in _resolve_one(part.strip(), target):
            if spec not in specs:
                specs.append(spec)
    return specs


def _resolve_one(part: str, target: str) -> list[TableSpec]:
    paper, _, table = part.partition(":")
    tables = REGISTRY.get(paper, {})
    if tables and not table:
        return [tables[t] for t in sorted(tables)]
    if table in tables:
        return [tables[table]]
    known = ", ".join(known_targets()) or "none registered"
    where = f" in {target!r}" if part != target else ""
    raise ReplicateError(f"unknown sweep target {part!r}{where}: give PAPER or PAPER:TABLE (several: comma-separated); "
                         f"known tables: {known}")


@dataclass(frozen=True)
class RunStatus:
    """One table row's run in a sweep report."""

    key: str
    table: str
    row: str
    seed: int
    status: str  # one of STATUSES
    ap: float | None = None  # COCO AP as a fraction
    message: str = ""


@dataclass
class SweepReport:
    target: str
    profile: str
    executor: str
    runs: list[RunStatus] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Distinct runs per status (a run shared by several tables counts once)."""
        by_key = {r.key: r.status for r in self.runs}
        return {s: sum(1 for v in by_key.values() if v == s) for s in STATUSES}

    def format(self) -> str:
        """A text table: one line per table row and seed, then the counts."""
        header = ("key", "table", "row", "seed", "status", "AP")
        lines = [(r.key, r.table, r.row, str(r.seed), r.status, f"{100 * r.ap:.1f}" if r.ap is not None else "-")
                 for r in self.runs]
        widths = [max(len(x) for x in col) for col in zip(header, *lines)]
        text = ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in [header, *lines]]
        text += [f"  {r.key}: {r.message}" for r in self.runs if r.status == "failed" and r.message]
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items() if n)
        return "\n".join(text + [f"{self.target} on {self.profile}: {counts or 'no runs'}"])


def resolve_requests(specs: Sequence[TableSpec], profile: str, seeds: int, *, results_dir: str | Path = "results",
                     work_dir: str | Path = "work", data_root: str | Path | None = None) -> list[RunRequest]:
    """One request per (table row, seed) of ``specs`` on ``profile`` (rows shared by tables repeat); a table
    that caps its seeds (:meth:`TableSpec.seeds_for`, a one-seed check) gets at most its own."""
    return [r for spec in specs
            for r in requests_for(spec, profile, seeds, data_root=data_root, results_dir=results_dir,
                                  work_dir=work_dir)]


@dataclass
class Launch:
    """What :func:`launch_missing` did: the distinct runs, their records and each run's (status, message)."""

    runs: dict[str, RunRequest]
    records: dict[str, Record | None]
    status: dict[str, tuple[str, str]]

    def view(self, request: RunRequest) -> Record | None:
        """The record as ``request``'s table row sees it (its test config), or ``None``."""
        record = self.records[request.key]
        return row_view(record, request.model.test) if record is not None else None


def launch_missing(requests: Sequence[RunRequest], executor: str = "local", *, run: bool = True, dry_run: bool = False,
                   cluster: Any = None, log: Callable[[str], None] = print, **launch_options: Any) -> Launch:
    """The one path of ``replicate sweep`` and of the notebooks: merge the requests into distinct runs,
    find those the store lacks (or lacks an evaluation of), launch them (unless ``run`` is false or
    ``dry_run``) and collect their records."""
    unique = {r.key: r for r in merge_requests(requests)}
    store = ResultsStore(requests[0].results_dir) if requests else None
    records = {key: store.get(r.profile, key) for key, r in unique.items()}
    to_run = [r for key, r in unique.items() if missing_tests(records[key], r.all_tests)]
    status = {key: ("finished", "") for key, r in unique.items() if not missing_tests(records[key], r.all_tests)}
    if dry_run or not run:
        expected = launch_options.get("expected") if dry_run else None
        needs = {r.key: expected(r) if expected else None for r in to_run}
        for r in to_run:
            if dry_run:
                need = needs[r.key]
                log(f"would run {r.describe()} in {r.run_dir}" + (f" (expected {need / 60:.0f} min)" if need else ""))
            status[r.key] = ("missing", "dry run" if dry_run else "not run")
        if expected and to_run:
            known = [n for n in needs.values() if n is not None]
            slots = launch_options.get("parallelism") or 1
            log(f"expected: {sum(known) / 3600:.1f} run-hours for {len(known)} of the {len(to_run)} runs to do, "
                f"about {sum(known) / 3600 / slots:.1f} h at {slots} at once")
        return Launch(unique, records, status)
    if executor == "slurm" and isinstance(cluster, (str, Path)):
        cluster = _load_cluster(cluster)
    for outcome in run_requests(to_run, executor, cluster=cluster, log=log, **launch_options):
        status[outcome.request.key] = (outcome.status, outcome.message)
        records[outcome.request.key] = outcome.record
    return Launch(unique, records, status)


def sweep(target: str, profile: str, executor: str = "local", seeds: int = 1, *, cluster: Any = None,
          results_dir: str | Path = "results", work_dir: str | Path = "work", data_root: str | Path | None = None,
          wait: bool = True, dry_run: bool = False, log: Callable[[str], None] = print,
          **launch_options: Any) -> SweepReport:
    """Run what is missing of ``target`` (``PAPER`` or ``PAPER:TABLE``) on ``profile``; see the module doc.

    ``cluster``: a cluster profile name or YAML path (:mod:`.clusters`), or submitit parameters as a
    mapping. ``dry_run``: report what would run, submit nothing. ``launch_options`` go to
    :func:`.launch.run_requests` (``parallelism``, ``timeout_s``, ``deadline``, resources such as
    ``gpus_per_node``).
    """
    requests = resolve_requests(resolve_target(target), profile, seeds, results_dir=results_dir,
                                work_dir=work_dir, data_root=data_root)
    pending = merge_requests(requests)
    store = ResultsStore(results_dir)
    todo = sum(1 for r in pending if missing_tests(store.get(profile, r.key), r.all_tests))
    log(f"{target} on {profile}: {len(pending)} runs ({len(requests)} table rows x seeds), "
        f"{len(pending) - todo} finished, {todo} to run")
    launched = launch_missing(requests, executor, dry_run=dry_run, cluster=cluster, log=log, wait=wait,
                              **launch_options)
    report = SweepReport(target, profile, "dry run" if dry_run else executor)
    for r in requests:
        view = launched.view(r)
        ap = (view["metrics"] or {}).get("AP") if view else None
        state, message = launched.status[r.key]
        report.runs.append(RunStatus(r.key, r.spec_key, r.row_label, r.seed, state, ap, message))
    return report


def ensure_runs(spec: TableSpec, profile: str, executor: str = "debug", seeds: int = 1, *,
                results_dir: str | Path = "results", data_root: str | Path | None = None,
                run_missing: bool | None = None, work_dir: str | Path = "work",
                **launch_options: Any) -> dict[str, list[Record]]:
    """Row label -> the stored records of that row (by seed) for the book's notebooks.

    ``seeds < 1`` means the profile's default number of seeds (:data:`replicate.profiles.Profile.seeds`).
    With ``run_missing`` (``None``: :func:`replicate.profiles.trains_missing_by_default`, smoke only) the
    runs not yet in the store are run first through ``executor`` (``debug``: in this process; ``local``:
    subprocesses; ``slurm``) and waited for; runs that fail are warned
    about. Without it the missing runs are only warned about. Rows without records (not run, or cited
    from the paper only) map to ``[]``. ``launch_options`` go to :func:`.launch.run_requests`.
    """
    if seeds < 1:
        seeds = profiles.get(profile).seeds
    if run_missing is None:
        run_missing = profiles.trains_missing_by_default(profile)
    requests = resolve_requests([spec], profile, seeds, results_dir=results_dir, work_dir=work_dir,
                                data_root=data_root)
    # the runs' own log lines go to stderr: a book page keeps them out of its body (replicate.book.build.present)
    with contextlib.redirect_stdout(sys.stderr):
        launched = launch_missing(requests, executor, run=run_missing, log=lambda line: None, **launch_options)
    unfinished = [(launched.runs[k], s, m) for k, (s, m) in launched.status.items() if s != "finished"]
    if unfinished and run_missing:
        warnings.warn(f"{spec.key} on {profile}: {len(unfinished)} of {len(launched.runs)} runs did not finish: "
                      + "; ".join(f"{r.describe()}: {s} ({m})" for r, s, m in unfinished))
    elif unfinished:
        warnings.warn(f"{spec.key} on {profile}: {len(unfinished)} of {len(requests)} runs missing from "
                      f"{Path(results_dir)} (" + ", ".join(r.describe() for r, _, _ in unfinished) + "); run "
                      f"`replicate sweep {spec.key} --profile {profile} --seeds {seeds}` to produce them")
    by_row: dict[str, list[Record]] = {row.label: [] for row in spec.rows}
    for r in requests:
        view = launched.view(r)
        if view is not None:
            by_row[r.row_label].append(view)
    return by_row


def _load_cluster(name_or_path: str | Path) -> Any:
    """A cluster profile from ``slurm/clusters/`` (name) or a YAML file (path)."""
    try:
        from .clusters import load_cluster
    except ImportError:
        raise ReplicateError(f"--cluster {name_or_path}: cluster profiles (replicate.experiments.clusters) "
                             "are not available in this version") from None
    return load_cluster(str(name_or_path))


def table_status(spec: TableSpec, profile: str, seeds: int = 1, *,
                 results_dir: str | Path = "results") -> list[tuple[str, str]]:
    """(row label, status) of every row of ``spec``: ``finished n/seeds``, ``missing`` or ``cited only`` (``seeds``
    capped by the table's own, :meth:`TableSpec.seeds_for`)."""
    store = ResultsStore(results_dir)
    by_row: dict[str, list[bool]] = {}
    for r in requests_for(spec, profile, seeds, results_dir=results_dir):
        by_row.setdefault(r.row_label, []).append(is_complete(store, r))
    out = []
    for row in spec.rows:
        done = by_row.get(row.label)
        if done is None:
            out.append((row.label, "cited only"))
        else:
            out.append((row.label, f"finished {sum(done)}/{len(done)}" if any(done) else "missing"))
    return out


def run_uses(profile: str, seeds: int, *, results_dir: str | Path = "results") -> dict[str, list[tuple[str, str]]]:
    """Which table rows each run of ``profile`` serves (seeds ``0 .. seeds - 1``): run key -> ``("paper:table",
    row label)`` pairs, keys and pairs in the registry's order (papers, then tables, by name; rows as the
    table lists them). A run several rows share (a baseline; one trained model under several test configs)
    lists them all."""
    load_papers()
    uses: dict[str, list[tuple[str, str]]] = {}
    for paper in sorted(REGISTRY):
        for table in sorted(REGISTRY[paper]):
            for r in requests_for(REGISTRY[paper][table], profile, seeds, results_dir=results_dir):
                pairs = uses.setdefault(r.key, [])
                if (r.spec_key, r.row_label) not in pairs:
                    pairs.append((r.spec_key, r.row_label))
    return uses


def _duration(minutes: float) -> str:
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.0f} h"


@dataclass(frozen=True)
class RunPlan:
    total: int
    missing: int
    minutes_per_run: float
    measured: bool  # minutes_per_run from finished runs of the store (else a default guess)
    device: str = "cpu"  # what the default guess assumes

    def describe(self, profile: str) -> str:
        if self.total == 0:
            return f"no table runs are registered yet for {profile}"
        if self.missing == 0:
            return f"all {self.total} run(s) of the registered tables are in the store for {profile}"
        how = "measured from finished runs" if self.measured else f"a rough guess on {self.device}"
        return (f"{self.missing} of {self.total} run(s) missing for {profile}; about "
                f"{_duration(self.missing * self.minutes_per_run)} of training "
                f"({_duration(self.minutes_per_run)} per run, {how})")


def plan(profile: str, seeds: int = 1, *, results_dir: str | Path = "results", device: str | None = None) -> RunPlan:
    """How many runs of every registered table are missing on ``profile``, and roughly how long they take:
    the median training time of the profile's finished runs, else a guess for ``device`` (default: cuda if
    available, else cpu)."""
    load_papers()
    store = ResultsStore(results_dir)
    runs = merge_requests([r for papers in REGISTRY.values() for spec in papers.values()
                           for r in requests_for(spec, profile, seeds, results_dir=results_dir)])
    missing = sum(not is_complete(store, r) for r in runs)
    measured = _measured_minutes(store, profile)
    if measured is not None:
        return RunPlan(len(runs), missing, measured, True)
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return RunPlan(len(runs), missing, profiles.get(profile).minutes.get(device, 60.0), False, device)


def _measured_minutes(store: ResultsStore, profile: str) -> float | None:
    """The median training minutes of the profile's finished runs, or ``None`` without any."""
    seconds = sorted(s for s in (rec["timings"].get("train_seconds") for rec in store.records(profile)) if s)
    return seconds[len(seconds) // 2] / 60 if seconds else None


def progress(profile: str, seeds: int, *, results_dir: str | Path = "results",
             papers: Sequence[str] | None = None) -> pd.DataFrame:
    """Per registered paper (or those of ``papers``): the distinct runs its tables ask for on ``profile`` at
    seeds ``0 .. seeds - 1``, how many the results store holds, how many are missing and the hours of
    training those need at the profile's median run (:func:`plan`). A run several papers share counts in
    each."""
    load_papers()
    store = ResultsStore(results_dir)
    minutes = _measured_minutes(store, profile)
    if minutes is None:
        minutes = plan(profile, seeds, results_dir=results_dir).minutes_per_run  # the profile's guess
    rows = []
    for paper in sorted(papers if papers is not None else REGISTRY):
        runs = merge_requests([r for spec in REGISTRY.get(paper, {}).values()
                               for r in requests_for(spec, profile, seeds, results_dir=results_dir)])
        finished = sum(is_complete(store, r) for r in runs)
        rows.append({"paper": paper, "runs": len(runs), "finished": finished, "missing": len(runs) - finished,
                     "hours of training left": (len(runs) - finished) * minutes / 60})
    return pd.DataFrame(rows, columns=["paper", "runs", "finished", "missing", "hours of training left"])
