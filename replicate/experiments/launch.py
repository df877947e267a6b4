"""Running :class:`~.runs.RunRequest` s as submitit jobs: in this process, as local subprocesses, or on SLURM.

``make_executor`` builds the executor: ``debug`` (submitit's DebugExecutor: in this process, one run
after the other), ``local`` (LocalExecutor: one subprocess per run) or ``slurm`` (AutoExecutor with
a cluster profile's partition, account, GPUs, ...). :func:`run_requests` submits the runs as one job
array (SLURM bounds how many run at once with ``--array=...%N``; locally at most ``parallelism``
subprocesses are kept alive) and waits for them without ever blocking for good: each poll asks the
results store first, then the job; a SLURM job that has left the queue without a result (killed, and
no ``sacct`` to say why) is reported as failed after ``lost_after_s``, and ``timeout_s`` bounds the
whole wait.

Each job runs :class:`TrainJob`, a submitit ``Checkpointable``. The training engine turns SIGUSR2 /
SIGTERM into a checkpoint and an ``"interrupted"`` result, which :func:`~.runs.execute_run` does not
record; :class:`TrainJob` then hands the signal to submitit, which calls :meth:`TrainJob.checkpoint`
and requeues the same request, and the requeued job resumes training from the checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
import torch
from submitit.core.core import Job
from submitit.core.utils import DelayedSubmission
from submitit.local.debug import DebugJob
from submitit.slurm.slurm import SlurmJob

from ..engine import distributed as du
from ..errors import ReplicateError
from .runs import DeadlineReached, RunInterrupted, RunRequest, execute_run, missing_tests, stop_file
from .store import Record, ResultsStore

EXECUTORS = ("local", "slurm", "debug")
RESOURCE_DEFAULTS: dict[str, Any] = {"timeout_min": 24 * 60, "gpus_per_node": 1, "cpus_per_task": 8,
                                     "mem_gb": 32.0, "array_parallelism": 16}
"""SLURM resources when neither the cluster profile nor the caller gives them (one GPU per run)."""
POLL_S = {"debug": 0.0, "local": 1.0, "slurm": 30.0}
SIGNAL_DELAY_S = 120  # SLURM sends SIGUSR2 this long before the time limit (time to checkpoint)


REQUEUE_EXIT = 3  # exit status of an attempt that handed over to its requeued successor


class TrainJob(submitit.helpers.Checkpointable):
    """The callable of every job: :func:`~.runs.execute_run` of its request, requeued when interrupted."""

    def __call__(self, request: RunRequest) -> Record | None:
        """Task 0's return value is the job's result: the record (``None`` from the other tasks)."""
        executor = os.environ.get("SUBMITIT_EXECUTOR")
        environ = du.job_environ() if executor in ("slurm", "local") else None
        if environ is not None:  # a job of several tasks: one DDP process per task
            os.environ.update(environ)
            du.init_distributed(environ)
        try:
            return execute_run(request)
        except DeadlineReached:
            raise
        except RunInterrupted as exc:
            if executor == "slurm":
                # SIGTERM comes from SLURM itself (scontrol requeue, preemption): SLURM already requeues the
                # job and submitit's own requeue would fail and be recorded as the job's error. SIGUSR2 (time
                # limit) needs a requeue. Ask for one (task 0 for the whole job), accept "already requeuing",
                # and leave without a result (SystemExit is not recorded by submitit) so the requeued
                # attempt produces it.
                job_id = os.environ.get("SLURM_JOB_ID", "")
                if du.is_main():
                    print(f"{exc}; requeueing SLURM job {job_id}", flush=True)
                    subprocess.run(["scontrol", "requeue", job_id], capture_output=True, timeout=60, check=False)
                sys.exit(REQUEUE_EXIT)
            if executor == "local":  # submitit's handlers are installed
                print(f"{exc}; handing over to submitit to requeue", flush=True)
                # The engine's handler took the signal (and restored submitit's on return): raise it again
                # so that submitit checkpoints (see checkpoint below) and requeues, or gives up with an error.
                signal.raise_signal(submitit.JobEnvironment._usr_sig())
            raise

    def checkpoint(self, request: RunRequest) -> DelayedSubmission:
        """The same request again: the requeued job resumes from the run's checkpoint on disk."""
        return DelayedSubmission(self, request)


def cluster_parameters(cluster: Any) -> dict[str, Any]:
    """submitit parameters of a cluster profile: a mapping of them as is, or an object with a
    ``submitit_parameters()`` method (:class:`replicate.experiments.clusters.ClusterProfile`)."""
    if cluster is None:
        return {}
    if isinstance(cluster, Mapping):
        return dict(cluster)
    if callable(getattr(cluster, "submitit_parameters", None)):
        return dict(cluster.submitit_parameters())
    raise ReplicateError(f"a cluster profile must be a mapping of submitit parameters or have "
                         f"submitit_parameters(); got {type(cluster).__name__}")


def make_executor(kind: str, folder: str | Path, *, cluster: Any = None, timeout_min: float | None = None,
                  gpus_per_node: int | None = None, cpus_per_task: int | None = None, mem_gb: float | None = None,
                  array_parallelism: int | None = None, name: str = "replicate") -> submitit.Executor:
    """A submitit executor writing its job files under ``folder`` (``%j``: the job id).

    Resources: the arguments given, else the cluster profile's, else :data:`RESOURCE_DEFAULTS`.
    ``local`` uses only ``timeout_min`` and ``gpus_per_node`` (default: one GPU if there is one; submitit
    sets ``CUDA_VISIBLE_DEVICES`` to the first ``gpus_per_node`` GPUs for every local job, so parallel local
    jobs share them); ``debug`` uses none.
    """
    if kind not in EXECUTORS:
        raise ReplicateError(f"unknown executor {kind!r}; choose from {list(EXECUTORS)}")
    if kind == "debug":
        return submitit.DebugExecutor(folder)
    given = {"timeout_min": timeout_min, "gpus_per_node": gpus_per_node, "cpus_per_task": cpus_per_task,
             "mem_gb": mem_gb, "array_parallelism": array_parallelism}
    params = {**RESOURCE_DEFAULTS, **cluster_parameters(cluster), **{k: v for k, v in given.items() if v is not None}}
    if kind == "local":
        executor = submitit.LocalExecutor(folder)
        gpus = gpus_per_node if gpus_per_node is not None else min(1, torch.cuda.device_count())
        executor.update_parameters(timeout_min=float(params["timeout_min"]),
                                   **({"gpus_per_node": gpus} if gpus else {}))
        return executor
    executor = submitit.AutoExecutor(folder, cluster="slurm")
    params["slurm_array_parallelism"] = int(params.pop("array_parallelism"))
    params.setdefault("slurm_signal_delay_s", SIGNAL_DELAY_S)
    params["timeout_min"] = int(params["timeout_min"])
    executor.update_parameters(name=name, **params)
    return executor


@dataclass(frozen=True)
class Outcome:
    """Where a run stands after :func:`run_requests`: ``finished`` (with its record), ``failed``
    (``message`` says why and where the logs are) or ``running`` (submitted, not waited for)."""

    request: RunRequest
    status: str
    record: Record | None = None
    message: str = ""
    job_id: str | None = None


def run_requests(requests: Sequence[RunRequest], executor: str = "debug", *, folder: str | Path | None = None,
                 cluster: Any = None, parallelism: int | None = None, wait: bool = True,
                 poll_s: float | None = None, lost_after_s: float = 600.0, timeout_s: float | None = None,
                 deadline: float | None = None, expected: Callable[[RunRequest], float | None] | None = None,
                 log: Callable[[str], None] = print, **resources: Any) -> list[Outcome]:
    """Submit ``requests`` through ``executor`` and (with ``wait``) wait for every one of them.

    ``folder``: submitit's job files (default ``WORK/submitit/%j`` of the first request). ``parallelism``:
    runs at once (default: the cluster's array parallelism for SLURM, 1 locally). ``wait=False`` is
    for SLURM only (local and debug jobs need this process). ``resources`` go to :func:`make_executor`.
    ``deadline`` (a ``time.time()`` value): a clean stop. No run starts after it, and the runs still
    training then checkpoint and stop (``interrupted``, not requeued); sweeping again resumes them. A stop
    request (:func:`~.runs.stop_file` in the requests' work folder) does the same at once. ``expected``
    (with a deadline; :func:`.durations.estimator`): a run's expected wall time in seconds, or ``None`` when
    unknown; a run expected to end after the deadline, with a margin (:data:`FIT_MARGIN`), is not started
    (``missing``, saying so), so that a machine that stops at the deadline loses no half-trained run.
    Returns one :class:`Outcome` per request, in order.
    """
    if not requests:
        return []
    if not wait and executor != "slurm":
        raise ReplicateError(f"not waiting is only possible with the slurm executor: {executor} jobs are "
                             "run (debug) or scheduled (local) by this process")
    folder = Path(folder) if folder is not None else Path(requests[0].work_dir) / "submitit" / "%j"
    if executor == "local":
        parallelism = parallelism or 1
    ex = make_executor(executor, folder, cluster=cluster, array_parallelism=parallelism, **resources)
    max_active = parallelism if executor == "local" else len(requests)
    watch = _Watch(lost_after_s)
    active, outcomes = [], {}
    wait_until = time.monotonic() + timeout_s if timeout_s is not None else None
    poll = POLL_S[executor] if poll_s is None else poll_s
    if deadline is not None:
        requests = [dataclasses.replace(r, deadline=deadline) for r in requests]
    queue = list(enumerate(requests))
    while queue or active:
        if queue and deadline is not None and time.time() > deadline:
            log(f"deadline reached: {len(queue)} run(s) not started")
            queue = []
        if queue and stop_file(queue[0][1].work_dir).exists():
            log(f"stop requested ({stop_file(queue[0][1].work_dir)}): {len(queue)} run(s) not started")
            queue = []
        if queue and len(active) < max_active and deadline is not None and expected is not None:
            queue = _fitting(queue, deadline, expected, outcomes, log)
        if queue and len(active) < max_active:
            batch, queue = queue[:max_active - len(active)], queue[max_active - len(active):]
            jobs = ex.map_array(TrainJob(), [r for _, r in batch])
            active += list(zip(jobs, batch))
            log(f"submitted {len(jobs)} run(s) ({executor}): "
                + ", ".join(f"{r.key} as job {j.job_id}" for j, (_, r) in zip(jobs, batch)))
        if not wait:
            break
        still = []
        for job, (index, request) in active:
            outcome = watch.check(job, request)
            if outcome is None:
                still.append((job, (index, request)))
                continue
            outcomes[index] = outcome
            log(f"{outcome.status}: {request.describe()}" + (f": {outcome.message}" if outcome.message else ""))
        active = still
        if wait_until is not None and time.monotonic() > wait_until and active:
            log(f"stopped waiting after {timeout_s:.0f} s with {len(active)} run(s) still running")
            break
        if active:
            time.sleep(poll)
    for job, (index, request) in active:
        outcomes[index] = Outcome(request, "running", job_id=str(job.job_id),
                                  message=f"job {job.job_id}, logs in {job.paths.stdout.parent}")
    return [outcomes.get(i, Outcome(r, "missing", message="not submitted")) for i, r in enumerate(requests)]


# How much longer than its expected time a run must have left before the deadline to start. The estimate is
# a median (durations.py): left out of the estimate in turn, the 175 proxy runs recorded by 2026-12-06 took
# from 0.66 (10th percentile) to 1.52 (95th) times their estimate, 1.21 at the 80th percentile. A run that
# overruns the deadline only checkpoints and stops (sweeping again resumes it), so the margin need not cover
# every run: with 1.2 about four in five of those started at the edge end in time.
FIT_MARGIN = 1.2


def _fitting(queue: list[tuple[int, RunRequest]], deadline: float, expected: Callable[[RunRequest], float | None],
             outcomes: dict[int, Outcome], log: Callable[[str], None]) -> list[tuple[int, RunRequest]]:
    """The queued runs expected to finish before ``deadline`` with :data:`FIT_MARGIN` to spare (or of unknown
    duration); the others get their outcome (``missing``, with the estimate) and leave the queue (time left
    only shrinks)."""
    left = deadline - time.time()
    kept = []
    for index, request in queue:
        need = expected(request)
        if need is not None and need * FIT_MARGIN > left:
            message = (f"not started: expected to take {need / 60:.0f} min ({need * FIT_MARGIN / 60:.0f} with "
                       f"the {FIT_MARGIN - 1:.0%} margin), {max(left, 0) / 60:.0f} min left before the deadline")
            outcomes[index] = Outcome(request, "missing", message=message)
            log(f"{message}: {request.describe()}")
        else:
            kept.append((index, request))
    return kept


class _Watch:
    """Decides whether a job has ended: from the results store, submitit's result file, or the SLURM queue."""

    def __init__(self, lost_after_s: float) -> None:
        self.lost_after_s = lost_after_s
        self.gone_since: dict[str, float] = {}

    def check(self, job: Job, request: RunRequest) -> Outcome | None:
        store = ResultsStore(request.results_dir)
        if isinstance(job, DebugJob):
            # Runs the job here and now. (DebugJob.done() would open pdb on a failure, stalling notebooks.)
            error = job.exception()
        elif job.done():
            error = job.exception()
        else:
            record = store.get(request.profile, request.key)
            if record is not None and not missing_tests(record, request.all_tests):
                # recorded and evaluated; the job is only writing its result file
                return Outcome(request, "finished", record, job_id=str(job.job_id))
            return self._lost(job, request) if isinstance(job, SlurmJob) else None
        record = store.get(request.profile, request.key)
        if error is not None:
            if isinstance(error, DeadlineReached) or "DeadlineReached" in str(error):
                return Outcome(request, "interrupted", message=_summary(error, job), job_id=str(job.job_id))
            return Outcome(request, "failed", message=_summary(error, job), job_id=str(job.job_id))
        if record is None:
            expected = store.path(request.profile, request.key)
            return Outcome(request, "failed", job_id=str(job.job_id),
                           message=f"job {job.job_id} ended without a record in {expected} "
                                   "(is the results folder shared with the node running the job?)")
        return Outcome(request, "finished", record, job_id=str(job.job_id))

    def _lost(self, job: Job, request: RunRequest) -> Outcome | None:
        """``failed`` once a SLURM job has been out of the queue for ``lost_after_s`` without a result."""
        if _in_slurm_queue(str(job.job_id)) is not False:
            self.gone_since.pop(job.job_id, None)
            return None
        since = self.gone_since.setdefault(job.job_id, time.monotonic())
        if time.monotonic() - since < self.lost_after_s:
            return None
        return Outcome(request, "failed", job_id=str(job.job_id),
                       message=f"job {job.job_id} left the SLURM queue {self.lost_after_s:.0f} s ago without a result "
                               f"(killed? its state is unknown without sacct); logs: {job.paths.stderr}; "
                               "sweeping again resumes it from its checkpoint")


def _in_slurm_queue(job_id: str) -> bool | None:
    """Whether ``squeue`` lists the job; ``None`` when squeue cannot tell (not installed, no controller)."""
    try:
        out = subprocess.run(["squeue", "--noheader", "--jobs", job_id, "--format", "%T"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode == 0:
        return bool(out.stdout.strip())
    return False if "invalid job id" in out.stderr.lower() else None


def _summary(error: BaseException, job: Job) -> str:
    """The error of an in-process job; for others the last exception line of the job's traceback (or
    submitit's first line when the job left none) and where its logs are."""
    if isinstance(job, DebugJob):
        return f"{type(error).__name__}: {error}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupted|Exit)\b", line)]
    head = raised[-1] if raised else (lines[0] if lines else type(error).__name__)
    return f"{head} (logs: {job.paths.stderr})"
