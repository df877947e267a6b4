"""SLURM integration: submitit on the local single-node cluster, requeue, cluster profiles.

The cluster has no accounting (sacct), so submitit cannot see that SLURM killed a job and
``job.result()`` could block forever; every wait here is bounded (:func:`wait_done`) and a test that
runs out of time cancels its jobs and fails with their logs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit
import torch

from replicate.errors import ReplicateError
from replicate.experiments.clusters import ClusterProfile, available_clusters, load_cluster

# the jobs import this module's functions on the node, where tests/ is not importable
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def wait_done(jobs, timeout: float, cluster=None) -> None:
    """Wait until every job wrote its result, at most ``timeout`` s; else cancel them and fail."""
    deadline = time.monotonic() + timeout
    while not all(job.paths.result_pickle.exists() for job in jobs):
        if time.monotonic() > deadline:
            logs = []
            for job in jobs:
                if cluster is not None:
                    cluster.run("scancel", str(job.job_id))
                for path in (job.paths.stdout, job.paths.stderr):
                    if path.exists():
                        logs.append(f"--- {path}\n{path.read_text()[-1500:]}")
            pytest.fail(f"jobs {[j.job_id for j in jobs]} not done after {timeout} s\n" + "\n".join(logs))
        time.sleep(0.25)


def executor(folder: Path, profile: ClusterProfile | None = None, **overrides) -> submitit.AutoExecutor:
    ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    ex.update_parameters(**(profile or load_cluster("local")).submitit_parameters())
    ex.update_parameters(timeout_min=5, **overrides)
    return ex


def _describe(x: int, tag: str) -> dict:
    return {"square": x * x, "tag": tag, "job": os.environ.get("SLURM_JOB_ID"),
            "array_task": os.environ.get("SLURM_ARRAY_TASK_ID")}


def test_map_array_runs_on_slurm(slurm_cluster, tmp_path):
    ex = executor(tmp_path)
    jobs = ex.map_array(_describe, [3, 4], ["a", "b"])
    assert len(jobs) == 2 and jobs[0].job_id.endswith("_0")
    wait_done(jobs, 60, slurm_cluster)
    results = [job.result() for job in jobs]
    assert [r["square"] for r in results] == [9, 16]
    assert [r["tag"] for r in results] == ["a", "b"]
    assert sorted(r["array_task"] for r in results) == ["0", "1"]
    assert len({r["job"] for r in results}) == 2  # two array tasks, two SLURM jobs


def _fail() -> None:
    raise ValueError("boom from the node")


def test_failing_job_reports_the_remote_error(slurm_cluster, tmp_path):
    job = executor(tmp_path).submit(_fail)
    wait_done([job], 60, slurm_cluster)
    with pytest.raises(submitit.core.utils.FailedJobError, match="boom from the node"):
        job.result()


class Counter(submitit.helpers.Checkpointable):
    """Counts ``steps`` steps of ``step_s`` s, a hash chain as result, checkpointing each step to
    ``workdir/state.json``; a restarted job resumes from that file.

    Stops the way ``replicate.engine.train`` does: its ``stop_flag`` (SIGTERM/SIGUSR2 handlers) is
    set, the current step finishes and is checkpointed. Then, as a SLURM job function must, it does
    not return (a returned value would be the job's result while SLURM runs the requeued attempt):
    it asks for a requeue itself (needed after SIGUSR2; after `scontrol requeue` the job is already
    requeued) and exits without a result. Signals received are logged to ``workdir/signals.log``.
    """

    def __call__(self, workdir: str, steps: int, step_s: float) -> dict:
        from replicate.engine.train import stop_flag

        work = Path(workdir)
        state_file = work / "state.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else {"step": 0, "value": 1, "starts": []}
        state["starts"].append(state["step"])
        self._save(state_file, state)
        with stop_flag() as stop:
            train_handler = signal.getsignal(signal.SIGTERM)

            def record(signum, frame):
                with open(work / "signals.log", "a") as fh:
                    fh.write(f"{signal.Signals(signum).name} at step {state['step']}\n")
                train_handler(signum, frame)

            for s in (signal.SIGTERM, signal.SIGUSR2):
                signal.signal(s, record)
            while state["step"] < steps:
                time.sleep(step_s)
                state["value"] = (state["value"] * 31 + state["step"]) % 1_000_003
                state["step"] += 1
                self._save(state_file, state)
                if stop.is_set():  # train(): checkpoint at the end of the iteration, "interrupted"
                    job_id = os.environ.get("SLURM_JOB_ID")
                    if job_id:
                        subprocess.run(["scontrol", "requeue", job_id], capture_output=True, timeout=30)
                    sys.stdout.flush()
                    os._exit(0)
        return {"value": state["value"], "steps": state["step"], "starts": state["starts"]}

    @staticmethod
    def _save(path: Path, state: dict) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(path)


@pytest.mark.slow
def test_requeued_checkpointable_job_resumes_from_its_checkpoint(slurm_cluster, tmp_path):
    steps, step_s = 12, 0.5
    (tmp_path / "reference").mkdir()
    reference = Counter()(str(tmp_path / "reference"), steps, 0.0)  # uninterrupted, in-process

    work = tmp_path / "work"
    work.mkdir()
    job = executor(tmp_path / "submitit").submit(Counter(), str(work), steps, step_s)
    deadline = time.monotonic() + 60
    while True:  # wait until it is mid-run
        state = json.loads((work / "state.json").read_text()) if (work / "state.json").exists() else {}
        if state.get("step", 0) >= 3:
            break
        if time.monotonic() > deadline:
            slurm_cluster.run("scancel", job.job_id)
            pytest.fail(f"job {job.job_id} did not reach step 3 in 60 s")
        time.sleep(0.2)
    requeue = slurm_cluster.run("scontrol", "requeue", job.job_id)
    assert requeue.returncode == 0, requeue.stderr
    wait_done([job], 90, slurm_cluster)

    result = job.result()
    signals = (work / "signals.log").read_text()
    assert signals.startswith("SIGTERM"), signals  # what `scontrol requeue` sends (then SIGKILL)
    assert result["value"] == reference["value"] and result["steps"] == steps
    assert len(result["starts"]) == 2 and 3 <= result["starts"][1] < steps, result  # resumed, not redone
    restarts = slurm_cluster.run("scontrol", "show", "job", job.job_id).stdout
    assert "Restarts=1" in restarts


def test_load_cluster_profiles():
    assert {"local", "example-gpu"} <= set(available_clusters())
    local = load_cluster("local")
    assert local.partition == "debug" and local.submitit_parameters()["gpus_per_node"] == 0
    gpu = load_cluster("example-gpu")
    params = gpu.submitit_parameters()
    assert params["slurm_partition"] == "gpu"
    assert params["slurm_additional_parameters"] == {"account": "my-project"}
    assert params["slurm_constraint"] == "a100"
    assert params["gpus_per_node"] == params["tasks_per_node"] == 4
    assert params["slurm_setup"][0].startswith("module load")
    assert {"cpus_per_task", "mem_gb", "timeout_min", "slurm_array_parallelism", "slurm_signal_delay_s"} <= set(params)
    # submitit accepts them all and renders the sbatch options
    ex = submitit.AutoExecutor(folder="/tmp/unused-%j", cluster="slurm")
    ex.update_parameters(**params)
    sbatch = ex._executor._make_submission_file_text("python -m x", "1")
    for option in ("--partition=gpu", "--account=my-project", "--constraint=a100", "--gpus-per-node=4",
                   "--ntasks-per-node=4", "--cpus-per-task=8", "--mem=128GB", "--time=1440",
                   "--signal=USR2@120", "module load cuda/12.1"):
        assert option in sbatch, option


def test_load_cluster_by_path_and_errors(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("partition: p\ngpus_per_node: 2\nsetup: ['source venv/bin/activate']\n")
    profile = load_cluster(good)
    assert profile == ClusterProfile(name="mine", partition="p", gpus_per_node=2,
                                     setup=("source venv/bin/activate",))

    bad_key = tmp_path / "typo.yaml"
    bad_key.write_text("partition: p\ngpu_per_node: 2\n")
    with pytest.raises(ReplicateError, match=r"typo\.yaml: unknown key\(s\) gpu_per_node"):
        load_cluster(bad_key)

    bad_yaml = tmp_path / "broken.yaml"
    bad_yaml.write_text("partition: [p\n")
    with pytest.raises(ReplicateError, match=r"broken\.yaml: malformed YAML"):
        load_cluster(bad_yaml)

    bad_type = tmp_path / "typed.yaml"
    bad_type.write_text("cpus_per_task: many\n")
    with pytest.raises(ReplicateError, match=r"typed\.yaml: cpus_per_task must be int"):
        load_cluster(bad_type)

    with pytest.raises(ReplicateError, match=r"unknown cluster 'nope'; available: .*example-gpu.*local"):
        load_cluster("nope")


# ------------------------------------------------------------------ sweeps through the slurm executor
TINY = {"iters": 4}


@pytest.fixture(scope="module")
def slurm_demo():
    """A tiny paper registered for this module (two 4-iteration rows, one 12-iteration row)."""
    from replicate.experiments import sweep as sweep_module
    from replicate.experiments.spec import REGISTRY, Row, TableSpec, register

    sweep_module.load_papers()
    saved = {paper: dict(tables) for paper, tables in REGISTRY.items()}
    tables = [register(TableSpec("slurmdemo", "table1", "Demo", "slurmdemo, Table 1", ("AP",),
                                 rows=(Row("fcos", "fcos", train_overrides=TINY),
                                       Row("fcos_giou", "fcos", model_overrides={"head.quality": "giou"},
                                           train_overrides=TINY)))),
              register(TableSpec("slurmdemo", "long", "Longer", "slurmdemo", ("AP",),
                                 rows=(Row("fcos", "fcos", train_overrides={"iters": 12}),))),
              # frozen BatchNorm: batch statistics over 2 images per rank legitimately differ from 4
              register(TableSpec("slurmdemo", "ddp", "Two tasks", "slurmdemo", ("AP",),
                                 rows=(Row("fcos", "fcos", model_overrides={"backbone.norm": "frozen_bn"},
                                           train_overrides={"iters": 3}),)))]
    yield tables
    REGISTRY.clear()
    REGISTRY.update(saved)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:no detections in")
def test_smoke_sweep_on_slurm_records_results(slurm_cluster, slurm_demo, smoke_root, tmp_path):
    from replicate.experiments.store import ResultsStore
    from replicate.experiments.sweep import sweep

    lines: list[str] = []
    report = sweep("slurmdemo:table1", "smoke", "slurm", cluster="local", results_dir=tmp_path / "results",
                   work_dir=tmp_path / "work", data_root=smoke_root, poll_s=1, timeout_s=240,
                   lost_after_s=60, log=lines.append)
    assert [r.status for r in report.runs] == ["finished", "finished"], "\n".join(lines)
    store = ResultsStore(tmp_path / "results")
    for run in report.runs:
        record = store.get("smoke", run.key)
        assert record is not None and "AP" in record["metrics"]
        assert record["provenance"]["job_id"]  # ran as a SLURM job


INTERRUPTIONS = {
    # what SLURM does on preemption / `scontrol requeue`: SIGTERM to every process, then requeue itself
    "requeue": ("scontrol", "requeue"),
    # what it sends signal_delay_s before the time limit (sbatch --signal=USR2@N): the job must checkpoint
    # and ask for its own requeue
    "usr2": ("scancel", "--signal=USR2"),
}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:no detections in")
@pytest.mark.parametrize("interruption", sorted(INTERRUPTIONS))
def test_sweep_job_interrupted_by_slurm_resumes_with_the_same_metrics(slurm_cluster, slurm_demo, smoke_root, tmp_path,
                                                                       interruption):
    import threading

    from replicate.experiments.runs import requests_for
    from replicate.experiments.store import ResultsStore
    from replicate.experiments.sweep import sweep

    [request] = requests_for(slurm_demo[1], "smoke", data_root=smoke_root, results_dir=tmp_path / "results",
                             work_dir=tmp_path / "work")
    requeued: list[str] = []

    def requeue_mid_training():
        info, log, deadline = request.run_dir / "run.json", request.run_dir / "log.jsonl", time.monotonic() + 180
        while time.monotonic() < deadline and not (log.is_file() and len(log.read_text().splitlines()) >= 2):
            time.sleep(0.1)
        if info.is_file():
            job = json.loads(info.read_text())["job_id"]
            result = slurm_cluster.run(*INTERRUPTIONS[interruption], str(job))
            requeued.append(f"{job}: rc={result.returncode} {result.stderr.strip()}")

    thread = threading.Thread(target=requeue_mid_training, daemon=True)
    thread.start()
    lines: list[str] = []
    report = sweep("slurmdemo:long", "smoke", "slurm", cluster="local", results_dir=tmp_path / "results",
                   work_dir=tmp_path / "work", data_root=smoke_root, poll_s=1, timeout_s=300,
                   lost_after_s=60, log=lines.append)
    thread.join(timeout=5)
    assert requeued and "rc=0" in requeued[0], requeued
    assert [r.status for r in report.runs] == ["finished"], "\n".join(lines)
    info = json.loads((request.run_dir / "run.json").read_text())
    assert info["attempts"] == 2, info
    iters = [json.loads(line)["iter"] for line in (request.run_dir / "log.jsonl").read_text().splitlines()]
    assert iters == list(range(1, 13))
    if interruption == "usr2":  # the job asked for its own requeue (SLURM requeues on SIGTERM by itself)
        stdout = "".join(p.read_text() for p in (tmp_path / "work").rglob("*_0_log.out"))
        assert "interrupted at iteration" in stdout and "requeueing SLURM job" in stdout, stdout[-3000:]

    # the same run uninterrupted, in this process
    reference = sweep("slurmdemo:long", "smoke", "debug", results_dir=tmp_path / "ref-results",
                      work_dir=tmp_path / "ref-work", data_root=smoke_root, log=lambda line: None)
    got = ResultsStore(tmp_path / "results").get("smoke", request.key)["metrics"]
    want = ResultsStore(tmp_path / "ref-results").get("smoke", reference.runs[0].key)["metrics"]
    assert {k: got[k] for k in want if k in METRIC_KEYS} == {k: want[k] for k in want if k in METRIC_KEYS}


METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:no detections in")
def test_sweep_job_of_two_tasks_trains_one_ddp_run(slurm_cluster, slurm_demo, smoke_root, tmp_path):
    """A cluster profile with ``tasks_per_node: 2`` runs each row as one DDP job of two processes (gloo here,
    NCCL on GPUs): one record, written by rank 0, whose weights equal a one-process run on the same
    global batch (tolerance as in test_engine's DDP test: only float summation order differs)."""
    from replicate.engine.checkpoint import load_checkpoint
    from replicate.experiments.runs import requests_for
    from replicate.experiments.store import ResultsStore
    from replicate.experiments.sweep import sweep

    two_tasks = {**load_cluster("local").submitit_parameters(), "tasks_per_node": 2}
    lines: list[str] = []
    report = sweep("slurmdemo:ddp", "smoke", "slurm", cluster=two_tasks, results_dir=tmp_path / "results",
                   work_dir=tmp_path / "work", data_root=smoke_root, poll_s=1, timeout_s=300,
                   lost_after_s=60, log=lines.append)
    assert [r.status for r in report.runs] == ["finished"], "\n".join(lines)
    [request] = requests_for(slurm_demo[2], "smoke", data_root=smoke_root, results_dir=tmp_path / "results",
                             work_dir=tmp_path / "work")
    record = ResultsStore(tmp_path / "results").get("smoke", request.key)
    assert record["provenance"]["world_size"] == 2 and record["provenance"]["job_id"], record["provenance"]
    stdout = "".join(p.read_text() for p in (tmp_path / "work").rglob("*_0_log.out"))
    assert "(2 process(es))" in stdout, stdout[-2000:]

    reference = sweep("slurmdemo:ddp", "smoke", "debug", results_dir=tmp_path / "ref-results",
                      work_dir=tmp_path / "ref-work", data_root=smoke_root, log=lambda line: None)
    ref_dir = Path(ResultsStore(tmp_path / "ref-results").get("smoke", reference.runs[0].key)["work_dir"])
    assert ResultsStore(tmp_path / "ref-results").get("smoke", request.key)["provenance"]["world_size"] == 1
    one = load_checkpoint(ref_dir / "checkpoint.pt")["model"]
    two = load_checkpoint(request.run_dir / "checkpoint.pt")["model"]
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-5, msg=k)
