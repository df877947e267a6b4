"""Run orchestration: run keys, the results store, execute_run, sweeps (debug and local executors), the CLI."""

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from submitit.slurm.slurm import SlurmJob

from replicate.cli import main
from replicate.engine.config import with_overrides
from replicate.profiles import schedule_for
from replicate.errors import ReplicateError
from replicate.experiments import launch, runs
from replicate.experiments import sweep as sweep_module
from replicate.experiments.launch import make_executor, run_requests
from replicate.experiments.runs import DeadlineReached, RunInterrupted, execute_run, requests_for
from replicate.experiments.spec import REGISTRY, Row, TableSpec, register
from replicate.models.zoo import apply_overrides
from replicate.experiments.store import test_key
from replicate.experiments.store import ResultsStore, run_key
from replicate.experiments.sweep import ensure_runs, sweep
from replicate.models.zoo import model_config

pytestmark = pytest.mark.filterwarnings("ignore:no detections in")  # 4 iterations detect nothing

TINY = {"iters": 4}
TABLE1 = TableSpec(
    "demo", "table1", "Demo table", "demo, Table 1 (p. 1)", ("AP",),
    rows=(Row("fcos", "fcos", train_overrides=TINY),
          Row("fcos_giou", "fcos", model_overrides={"head.quality": "giou"}, train_overrides=TINY),
          Row("cited", "fcos", paper={"AP": 40.0}, reproduce=False)))
TABLE2 = TableSpec("demo", "table2", "Demo table", "demo, Table 2 (p. 2)", ("AP",),
                   rows=(Row("baseline", "fcos", train_overrides=TINY),))  # the same run as table1's fcos


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo():
    """The demo paper registered for this module; the registry is restored afterwards."""
    sweep_module.load_papers()  # the real papers register once, outside what is restored
    saved = {paper: dict(tables) for paper, tables in REGISTRY.items()}
    yield [register(TABLE1), register(TABLE2)]
    REGISTRY.clear()
    REGISTRY.update(saved)


@pytest.fixture(scope="module")
def swept(demo, smoke_root, tmp_path_factory):
    """The demo paper swept once in this process (debug executor): (report, results dir, work dir, log)."""
    root = tmp_path_factory.mktemp("sweep")
    lines = []
    report = sweep("demo", "smoke", "debug", results_dir=root / "results", work_dir=root / "work",
                   data_root=smoke_root, log=lines.append)
    return report, root / "results", root / "work", lines


def demo_request(swept, label="fcos", **changes):
    _, results, work, _ = swept
    request = next(r for r in requests_for(TABLE1, "smoke", results_dir=results, work_dir=work) if r.row_label == label)
    return dataclasses.replace(request, **changes)


def no_training(*args, **kwargs):
    raise AssertionError("train() called for a finished run")


# ------------------------------------------------------------------------------------------------ run keys
def test_run_key_is_stable_and_names_what_changes_results():
    model, train = model_config("fcos", "smoke", 10), schedule_for("smoke")
    key = run_key(model, train, "smoke", 0)
    code = ("from replicate.profiles import schedule_for; from replicate.models.zoo import model_config; "
            "from replicate.experiments.store import run_key; "
            "print(run_key(model_config('fcos', 'smoke', 10), schedule_for('smoke'), 'smoke', 0))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "123"})
    assert other.stdout.strip() == key and len(key) == 12
    a = apply_overrides(model, {"head.quality": "giou", "head.center_radius": 2.0})
    b = apply_overrides(model, {"head.center_radius": 2.0, "head.quality": "giou"})
    assert run_key(a, train, "smoke", 0) == run_key(b, train, "smoke", 0) != key
    runtime_only = with_overrides(train, num_workers=3, checkpoint_every=7, eval_at_end=False)
    assert run_key(model, runtime_only, "smoke", 0) == key
    assert run_key(model, with_overrides(train, seed=5), "smoke", 0) == key  # the run's seed is the argument
    assert len({key, run_key(model, train, "smoke", 1), run_key(model, train, "synthetic", 0),
                run_key(model, with_overrides(train, iters=4), "smoke", 0)}) == 4


# --------------------------------------------------------------------------------------------------- store
def fake_record(key="0123456789ab", profile="smoke"):
    return {"key": key, "profile": profile, "seed": 0, "model": "fcos", "config": {}, "metrics": {"AP": 0.5},
            "test": {}, "evaluations": {}, "loss_summary": {}, "timings": {}, "provenance": {}, "work_dir": "w"}


def test_store_put_get_and_records(tmp_path):
    store = ResultsStore(tmp_path)
    assert store.get("smoke", "0123456789ab") is None and not store.finished("smoke", "0123456789ab")
    path = store.put(fake_record())
    assert path == tmp_path / "smoke" / "0123456789ab.json"
    assert store.get("smoke", "0123456789ab") == fake_record() and store.finished("smoke", "0123456789ab")
    store.put(fake_record("ba9876543210", "synthetic"))
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "train-step.json").write_text("{}")  # other results beside the profiles' folders
    assert [r["key"] for r in store.records()] == ["0123456789ab", "ba9876543210"]
    assert [r["key"] for r in store.records("synthetic")] == ["ba9876543210"]
    assert sorted(p.name for p in (tmp_path / "smoke").iterdir()) == ["0123456789ab.json"]  # no temp files left
    with pytest.raises(ReplicateError, match="lacks fields"):
        store.put({"key": "x", "profile": "smoke"})


def test_store_malformed_record_names_the_file(tmp_path):
    store = ResultsStore(tmp_path)
    path = tmp_path / "smoke" / "0123456789ab.json"
    path.parent.mkdir()
    path.write_text('{"key": ')
    with pytest.raises(ReplicateError, match=f"{path}: malformed JSON"):
        store.get("smoke", "0123456789ab")
    path.write_text("[]")
    with pytest.raises(ReplicateError, match=f"{path}: a run record must be a JSON object"):
        store.records("smoke")


# ------------------------------------------------------------------------------------- execute_run, sweeps
def test_sweep_runs_the_missing_runs_once(swept, monkeypatch):
    report, results, work, lines = swept
    assert "demo on smoke: 2 runs (3 table rows x seeds), 0 finished, 2 to run" in lines
    assert [(r.table, r.row, r.status) for r in report.runs] == [
        ("demo:table1", "fcos", "finished"), ("demo:table1", "fcos_giou", "finished"),
        ("demo:table2", "baseline", "finished")]
    assert report.runs[0].key == report.runs[2].key != report.runs[1].key  # shared across tables: run once
    assert report.counts() == {"finished": 2, "running": 0, "interrupted": 0, "failed": 0, "missing": 0}
    assert all(r.ap is not None for r in report.runs)
    monkeypatch.setattr(runs, "train", no_training)
    again = []
    second = sweep("demo", "smoke", "debug", results_dir=results, work_dir=work, log=again.append)
    assert again == ["demo on smoke: 2 runs (3 table rows x seeds), 2 finished, 0 to run"]
    assert [r.status for r in second.runs] == ["finished"] * 3


def test_record_holds_metrics_losses_and_provenance(swept):
    _, results, work, _ = swept
    request = demo_request(swept)
    record = ResultsStore(results).get("smoke", request.key)
    assert record["seed"] == 0 and record["model"] == "fcos" and record["config"]["train"]["iters"] == 4
    assert set(record["metrics"]) >= {"AP", "AP50", "AR100"}
    summary = record["loss_summary"]
    log = [json.loads(line) for line in (request.run_dir / "log.jsonl").read_text().splitlines()]
    assert set(summary) == {"loss"} | {k for k in log[0] if k.startswith("loss_")} and len(summary) >= 3
    assert summary["loss"]["first"] == log[0]["loss"] and summary["loss"]["last"] == log[-1]["loss"]
    assert summary["loss"]["min"] == min(line["loss"] for line in log)
    assert summary["loss"]["curve"] == [[line["iter"], line["loss"]] for line in log]
    prov = record["provenance"]
    assert prov["hostname"] and prov["started"] <= prov["finished"] and prov["config_hash"]
    assert isinstance(prov["command"], list) and "job_id" in prov
    assert record["work_dir"] == str(request.run_dir) and (request.run_dir / "checkpoint.pt").is_file()


def test_test_time_variants_share_the_trained_run(swept, smoke_root, monkeypatch):
    """Rows differing only in their test config reuse the trained run: no training, one evaluation pass."""
    _, results, work, _ = swept
    spec = TableSpec("demo", "variants", "Variants", "demo, Table 3", ("AP", "AR100"),
                     rows=(Row("own", "fcos", train_overrides=TINY),
                           Row("low thr", "fcos", model_overrides={"test.score_thr": 0.001, "test.fusion": "none"},
                               train_overrides=TINY)))
    own, low = requests_for(spec, "smoke", results_dir=results, work_dir=work)
    assert own.key == low.key == demo_request(swept).key and own.model.test != low.model.test
    [merged] = runs.merge_requests([own, low])
    assert merged.all_tests == (own.model.test, low.model.test)
    monkeypatch.setattr(runs, "train", no_training)
    by_row = ensure_runs(spec, "smoke", "debug", results_dir=results, work_dir=work, data_root=smoke_root)
    record = ResultsStore(results).get("smoke", own.key)
    assert set(record["evaluations"]) == {test_key(own.model.test), test_key(low.model.test)}
    assert by_row["own"][0]["metrics"] == record["metrics"]  # the training run's own evaluation
    assert by_row["low thr"][0]["test"]["score_thr"] == 0.001
    # one pass re-scoring the raw outputs gives what the training run's evaluation gave
    from replicate.engine.rescore import evaluate_variants

    again = evaluate_variants(own.run_dir, own.model, "smoke", {test_key(own.model.test): own.model.test},
                              data_root=smoke_root)
    assert again[test_key(own.model.test)]["metrics"] == record["metrics"]
    own_dets = json.loads((own.run_dir / "detections.json").read_text())
    low_dets = json.loads(open(record["evaluations"][test_key(low.model.test)]["detections"]).read())
    assert len(low_dets) > len(own_dets)  # the lower threshold keeps more boxes
    assert runs.is_complete(ResultsStore(results), merged)


def test_a_run_asked_for_with_variants_scores_them_at_the_end_of_training(swept, smoke_root, tmp_path, monkeypatch):
    """One pass at the end of training scores every test config the run is asked for: no re-scoring after."""
    request = demo_request(swept, results_dir=str(tmp_path / "results"), work_dir=str(tmp_path / "work"),
                           data_root=str(smoke_root))
    low = dataclasses.replace(request.model.test, score_thr=0.001, fusion="none")
    request = dataclasses.replace(request, tests=(low,))

    def no_rescoring(*args, **kwargs):
        raise AssertionError("evaluate_variants called for a run that was asked for its variants")

    monkeypatch.setattr(runs, "evaluate_variants", no_rescoring)
    record = execute_run(request)
    assert set(record["evaluations"]) == {test_key(request.model.test), test_key(low)}
    finished = ResultsStore(swept[1]).get("smoke", request.key)
    assert record["metrics"] == finished["metrics"]  # the model's own evaluation is unchanged
    assert record["evaluations"][test_key(low)]["test"]["score_thr"] == 0.001
    assert (request.run_dir / f"detections-{test_key(low)}.json").is_file()


def test_loss_curve_is_mean_pooled(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"iter": i, "loss": float(i), "loss_cls": 1.0}) + "\n" for i in range(1, 251)))
    summary = runs.loss_summary(log)
    curve = summary["loss"]["curve"]
    assert len(curve) == 84 and curve[0] == [2.0, 2.0] and curve[-1] == [250.0, 250.0]  # bins of 3
    assert summary["loss"]["first"] == sum(range(1, 26)) / 25 and summary["loss"]["last"] == sum(range(226, 251)) / 25
    assert summary["loss_cls"]["min"] == 1.0


def test_execute_run_of_a_finished_run_is_a_no_op(swept, monkeypatch):
    request = demo_request(swept)
    path = ResultsStore(request.results_dir).path("smoke", request.key)
    before = path.stat().st_mtime_ns
    monkeypatch.setattr(runs, "train", no_training)
    assert execute_run(request) == ResultsStore(request.results_dir).get("smoke", request.key)
    assert path.stat().st_mtime_ns == before


def test_interrupted_run_is_not_recorded_and_resumes(swept, tmp_path, monkeypatch):
    finished = ResultsStore(swept[1]).get("smoke", demo_request(swept).key)
    request = demo_request(swept, results_dir=str(tmp_path / "results"), work_dir=str(tmp_path / "work"))
    monkeypatch.setattr(runs, "train", functools.partial(runs.train, stop_after=2))
    with pytest.raises(RunInterrupted, match="interrupted at iteration 2/4; running it again resumes"):
        execute_run(request)
    assert ResultsStore(request.results_dir).get("smoke", request.key) is None
    assert (request.run_dir / "checkpoint.pt").is_file()
    [pending] = runs.unfinished_runs(request.work_dir, ResultsStore(request.results_dir))
    assert (pending["key"], pending["iteration"], pending["iters"], pending["row"]) == (request.key, 2, 4, "fcos")
    monkeypatch.undo()
    record = execute_run(request)
    assert record["metrics"] == finished["metrics"]
    for term, summary in finished["loss_summary"].items():
        assert record["loss_summary"][term] == summary, term  # the resumed log equals the uninterrupted one
    info = json.loads((request.run_dir / "run.json").read_text())
    assert info["attempts"] == 2 and len(info["history"]) == 2
    # each attempt's code version is in the record: a resumed run trained under both attempts' commits
    attempts = record["provenance"]["attempts"]
    assert attempts == info["history"] and "attempts_unrecorded" not in record["provenance"]
    assert [a["commit"] for a in attempts] == [record["provenance"]["commit"]] * 2
    assert all(set(a) == {"started", "commit", "dirty", "hostname"} for a in attempts)


def test_a_run_resumed_from_an_older_work_folder_counts_the_attempts_it_did_not_describe(tmp_path):
    request = demo_request_for(tmp_path)
    request.run_dir.mkdir(parents=True)
    # run.json as code before the attempt history wrote it: one attempt, no history
    (request.run_dir / "run.json").write_text(json.dumps({"started": "2026-01-01T00:00:00+00:00", "attempts": 1}))
    info = runs._start_attempt(request, request.run_dir)
    assert info["attempts"] == 2 and len(info["history"]) == 1 and info["started"] == "2026-01-01T00:00:00+00:00"
    (request.run_dir / "log.jsonl").write_text(json.dumps({"iter": 1, "loss": 1.0}) + "\n")
    result = {"provenance": {"commit": "abc", "dirty": False}, "metrics": None, "timings": {}}
    provenance = runs.build_record(request, result, info)["provenance"]
    assert provenance["attempts"] == info["history"] and provenance["attempts_unrecorded"] == 1
    assert provenance["started"] == "2026-01-01T00:00:00+00:00"


def test_ensure_runs(swept, tmp_path):
    _, results, work, _ = swept
    with pytest.warns(UserWarning, match="2 of 2 runs missing"):
        assert ensure_runs(TABLE1, "smoke", run_missing=False, results_dir=tmp_path) == \
            {"fcos": [], "fcos_giou": [], "cited": []}
    assert not list(tmp_path.iterdir())  # nothing ran
    found = ensure_runs(TABLE1, "smoke", run_missing=False, results_dir=results, work_dir=work)
    assert [len(v) for v in found.values()] == [1, 1, 0] and found["fcos"][0]["key"] == demo_request(swept).key


def test_dry_run_submits_nothing(demo, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_module, "run_requests", no_training)
    report = sweep("demo:table1", "smoke", "local", results_dir=tmp_path / "results", work_dir=tmp_path / "work",
                   dry_run=True, log=lambda line: None)
    assert [r.status for r in report.runs] == ["missing", "missing"] and report.executor == "dry run"
    assert not list(tmp_path.iterdir())


def test_local_executor_requeues_an_interrupted_run_and_records_it(demo, smoke_root, tmp_path):
    """One subprocess job, sent SIGTERM mid-training (as SLURM does): it checkpoints, submitit requeues it,
    the second attempt resumes, and the record is read back."""
    spec = TableSpec("demo", "long", "Longer", "demo", ("AP",),
                     rows=(Row("fcos", "fcos", train_overrides={"iters": 12}),))
    results, work = tmp_path / "results", tmp_path / "work"
    [request] = requests_for(spec, "smoke", data_root=smoke_root, results_dir=results, work_dir=work)

    def interrupt_once_training():
        info, log, deadline = request.run_dir / "run.json", request.run_dir / "log.jsonl", time.monotonic() + 120
        while time.monotonic() < deadline and not (log.is_file() and log.read_text().strip()):
            time.sleep(0.05)
        os.kill(int(json.loads(info.read_text())["job_id"]), signal.SIGTERM)  # the job's controller forwards it

    thread = threading.Thread(target=interrupt_once_training, daemon=True)
    thread.start()
    [outcome] = run_requests([request], "local", timeout_s=240, log=lambda line: None)
    thread.join(timeout=1)
    assert outcome.status == "finished", outcome.message
    assert outcome.record == ResultsStore(results).get("smoke", request.key)
    info = json.loads((request.run_dir / "run.json").read_text())
    assert info["attempts"] == 2
    log = [json.loads(line)["iter"] for line in (request.run_dir / "log.jsonl").read_text().splitlines()]
    assert log == list(range(1, 13))
    stdout = "".join(p.read_text() for p in (work / "submitit").rglob("*_log.out"))
    assert "handing over to submitit to requeue" in stdout
    assert outcome.record["provenance"]["job_id"] == info["job_id"]


def test_slurm_executor_parameters(tmp_path, slurm_cluster):
    # submitit's SLURM executor needs srun on the PATH: the slurm_cluster fixture installs and starts SLURM
    ex = make_executor("slurm", tmp_path / "%j", cluster={"slurm_partition": "gpu", "gpus_per_node": 4},
                       array_parallelism=2, cpus_per_task=6)
    script = ex._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=4", "--cpus-per-task=6", "--signal=USR2@120", "--time=1440"):
        assert f"#SBATCH {line}" in script
    assert ex._executor.parameters["array_parallelism"] == 2
    with pytest.raises(ReplicateError, match="unknown executor 'pbs'"):
        make_executor("pbs", tmp_path)
    with pytest.raises(ReplicateError, match="only possible with the slurm executor"):
        run_requests([demo_request_for(tmp_path)], "local", wait=False)


def demo_request_for(tmp_path):
    return requests_for(TABLE1, "smoke", results_dir=tmp_path / "results", work_dir=tmp_path / "work")[0]


def test_a_slurm_job_gone_from_the_queue_fails_instead_of_hanging(tmp_path, monkeypatch):
    request = demo_request_for(tmp_path)
    job = SlurmJob(tmp_path / "%j", "4242_0")
    monkeypatch.setattr(job, "done", lambda force_check=False: False)  # no sacct: never known to be done
    monkeypatch.setattr(launch, "_in_slurm_queue", lambda job_id: True)
    watch = launch._Watch(lost_after_s=0.0)
    assert watch.check(job, request) is None  # queued or running
    monkeypatch.setattr(launch, "_in_slurm_queue", lambda job_id: False)
    outcome = watch.check(job, request)
    assert outcome.status == "failed" and "4242_0 left the SLURM queue" in outcome.message
    record = fake_record(request.key)
    ResultsStore(request.results_dir).put(record)
    assert watch.check(job, request).status == "failed"  # recorded but never evaluated: still lost
    record["evaluations"] = {test_key(request.model.test): {"test": {}, "metrics": {"AP": 0.5}}}
    ResultsStore(request.results_dir).put(record)
    assert watch.check(job, request).status == "finished"  # the store knows better than the queue


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_list_status_and_sweep(swept, smoke_root, capsys):
    _, results, work, _ = swept
    assert main(["list", "--profile", "smoke", "--results", str(results)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["paper", "table", "row", "smoke"]
    assert ["demo", "table1", "fcos", "finished", "1/1"] in [line.split() for line in out]
    assert ["demo", "table1", "cited", "cited", "only"] in [line.split() for line in out]
    assert main(["status", "--results", str(results), "--work", str(work)]) == 0
    out = capsys.readouterr().out
    assert demo_request(swept).key in out and out.count("finished") == 2
    assert main(["sweep", "demo", "--executor", "debug", "--profile", "smoke", "--results", str(results),
                 "--work", str(work), "--data-root", str(smoke_root)]) == 0
    out = capsys.readouterr().out
    assert "2 finished, 0 to run" in out and "demo on smoke: 2 finished" in out


def test_cli_unknown_target(demo, capsys):
    assert main(["sweep", "nope", "--profile", "smoke", "--executor", "debug"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("replicate: error: unknown sweep target 'nope'") and "demo:table1, demo:table2" in err


def test_several_targets_in_their_order(demo):
    assert [s.key for s in sweep_module.resolve_target("demo:table2, demo")] == ["demo:table2", "demo:table1"]
    with pytest.raises(ReplicateError, match="unknown sweep target 'demo:nope' in 'demo:table1,demo:nope'"):
        sweep_module.resolve_target("demo:table1,demo:nope")


def test_run_uses_names_every_row_a_run_serves(demo):
    uses = sweep_module.run_uses("smoke", 2)
    fcos = [r.key for r in requests_for(TABLE1, "smoke", 2) if r.row_label == "fcos"]
    giou = [r.key for r in requests_for(TABLE1, "smoke", 2) if r.row_label == "fcos_giou"]
    # table2's baseline is table1's fcos run: one key, both rows, in the registry's order
    assert [uses[k] for k in fcos] == [[("demo:table1", "fcos"), ("demo:table2", "baseline")]] * 2
    assert [uses[k] for k in giou] == [[("demo:table1", "fcos_giou")]] * 2 and len(set(fcos + giou)) == 4
    assert not any(row == "cited" for pairs in uses.values() for _, row in pairs)  # not reproduced: no run


def test_a_table_that_caps_its_seeds_gets_at_most_its_own(demo):
    capped = dataclasses.replace(TABLE1, table="capped", seeds=1)
    assert (capped.seeds_for(3), capped.seeds_for(1), TABLE1.seeds_for(3)) == (1, 1, 3)
    requests = sweep_module.resolve_requests([capped, TABLE2], "smoke", 3)
    assert sorted((r.row_label, r.seed) for r in requests if r.spec_key == "demo:capped") == [("fcos", 0), ("fcos_giou", 0)]
    assert sorted(r.seed for r in requests if r.spec_key == "demo:table2") == [0, 1, 2]  # no cap: the seeds asked
    # the book's accounting reads the cap: the precision check serves its runs at seed 0 only, although the
    # profile-setting row's run (ATSS) is the ranking's at every seed
    precision = REGISTRY["benchmark"]["precision"]
    uses = sweep_module.run_uses("proxy", 3)
    served = {r.seed for r in requests_for(precision, "proxy", 3)
              if ("benchmark:precision", r.row_label) in uses.get(r.key, [])}
    assert precision.seeds == 1 and served == {0}


def test_table_status_counts_the_seeds_a_capped_table_asks_for(swept):
    _, results, _, _ = swept
    capped = dataclasses.replace(TABLE1, table="capped", seeds=1)
    assert sweep_module.table_status(capped, "smoke", 3, results_dir=results) == [
        ("fcos", "finished 1/1"), ("fcos_giou", "finished 1/1"), ("cited", "cited only")]
    assert sweep_module.table_status(TABLE1, "smoke", 3, results_dir=results)[0] == ("fcos", "finished 1/3")


def _real_paper_runs(seeds: int) -> int:
    """Runs of the project's own registered papers (registered beside the demo paper here)."""
    return len(runs.merge_requests([r for paper, tables in REGISTRY.items() if paper != "demo"
                                    for spec in tables.values()
                                    for r in requests_for(spec, "smoke", spec.seeds_for(seeds))]))


def test_plan_counts_missing_runs_and_estimates_time(demo, tmp_path):
    from replicate.experiments.sweep import plan
    from replicate.profiles import PROFILES

    p = plan("smoke", seeds=2, results_dir=tmp_path, device="cpu")
    n = 4 + _real_paper_runs(2)
    assert (p.total, p.missing, p.measured) == (n, n, False)
    assert p.minutes_per_run == PROFILES["smoke"].minutes["cpu"]
    assert f"{n} of {n} run(s) missing for smoke" in p.describe("smoke") and "a rough guess on cpu" in p.describe("smoke")
    synthetic = plan("synthetic", results_dir=tmp_path, device="cpu")
    assert synthetic.minutes_per_run == 275.0 and " h of training (5 h per run, " in synthetic.describe("synthetic")


def test_progress_per_paper_after_a_sweep(swept):
    _, results, _, _ = swept
    frame = sweep_module.progress("smoke", 2, results_dir=results).set_index("paper")
    # the demo paper's 2 runs per seed; the sweep ran seed 0 only
    assert frame.loc["demo", ["runs", "finished", "missing"]].tolist() == [4, 2, 2]
    minutes = sweep_module.plan("smoke", 2, results_dir=results).minutes_per_run
    assert frame.loc["demo", "hours of training left"] == pytest.approx(2 * minutes / 60)
    assert (frame["finished"] + frame["missing"] == frame["runs"]).all()
    only = sweep_module.progress("smoke", 2, results_dir=results, papers=["demo"])
    assert only["paper"].tolist() == ["demo"] and only["finished"].tolist() == [2]


def test_plan_after_a_sweep_has_nothing_missing_and_measures(swept):
    from replicate.experiments.sweep import plan

    _, results, _, _ = swept
    p = plan("smoke", results_dir=results)
    real = _real_paper_runs(1)
    assert (p.total, p.missing, p.measured) == (2 + real, real, True) and p.minutes_per_run > 0
    if not real:
        assert p.describe("smoke") == "all 2 run(s) of the registered tables are in the store for smoke"


# ------------------------------------------------------------------------------- deadlines and verification
def test_a_deadline_checkpoints_and_stops_without_a_record(swept, tmp_path):
    request = demo_request(swept, results_dir=str(tmp_path / "results"), work_dir=str(tmp_path / "work"),
                           deadline=time.time() - 1)
    with pytest.raises(DeadlineReached, match=r"deadline at iteration 1/4; sweeping again resumes"):
        execute_run(request)
    assert ResultsStore(request.results_dir).get("smoke", request.key) is None
    assert (request.run_dir / "checkpoint.pt").is_file()
    # a sweep whose deadline has passed starts nothing, and reports the run as not submitted
    outcomes = run_requests([dataclasses.replace(request, deadline=None)], "debug", deadline=time.time() - 1,
                            log=lambda line: None)
    assert [o.status for o in outcomes] == ["missing"]


def test_with_expected_durations_a_sweep_starts_only_the_runs_that_end_before_its_deadline(swept, tmp_path, capsys):
    request = demo_request(swept, results_dir=str(tmp_path / "results"), work_dir=str(tmp_path / "work"))
    lines = []
    outcomes = run_requests([request], "debug", deadline=time.time() + 600, expected=lambda r: 3600, log=lines.append)
    assert [o.status for o in outcomes] == ["missing"] and not request.run_dir.exists()
    assert outcomes[0].message.startswith("not started: expected to take 60 min (72 with the 20% margin), ")
    assert "not started" in lines[0]
    # one expected to end just before the deadline does not leave the margin: 550 s x 1.2 > 600 s
    outcomes = run_requests([request], "debug", deadline=time.time() + 600, expected=lambda r: 550,
                            log=lambda line: None)
    assert [o.status for o in outcomes] == ["missing"] and not request.run_dir.exists()
    # one that fits (or whose duration is unknown: None) runs as before
    outcomes = run_requests([request], "debug", deadline=time.time() + 600, expected=lambda r: None,
                            log=lambda line: None)
    assert [o.status for o in outcomes] == ["finished"]
    assert main(["sweep", "demo", "--profile", "smoke", "--fit", "--results", str(tmp_path)]) == 2
    # a dry run lists each missing run's expected time and their total (2 runs of 30 min, 2 at once: 0.5 h)
    lines = []
    fresh = requests_for(TABLE1, "smoke", results_dir=tmp_path / "fresh", work_dir=tmp_path / "work")
    sweep_module.launch_missing(fresh, "debug", dry_run=True, expected=lambda r: 1800, parallelism=2,
                                log=lines.append)
    assert [line.endswith("(expected 30 min)") for line in lines] == [True, True, False]
    assert lines[-1] == "expected: 1.0 run-hours for 2 of the 2 runs to do, about 0.5 h at 2 at once"
    assert "--fit starts only the runs that finish before the deadline: give --until" in capsys.readouterr().err


def test_a_stop_request_stops_like_a_deadline_and_a_new_sweep_clears_it(swept, smoke_root, tmp_path, capsys):
    from replicate import cli
    from replicate.experiments.runs import stop_file

    work = tmp_path / "work"
    request = demo_request(swept, results_dir=str(tmp_path / "results"), work_dir=str(work))
    assert not request.stop_requested
    assert cli.main(["stop", "--work", str(work)]) == 0 and stop_file(work).is_file()
    assert request.stop_requested
    # a running run checkpoints after its current iteration and is not requeued (DeadlineReached)
    with pytest.raises(DeadlineReached, match=r"at iteration 1/4; sweeping again resumes"):
        execute_run(request)
    assert ResultsStore(request.results_dir).get("smoke", request.key) is None
    assert (request.run_dir / "checkpoint.pt").is_file()
    # no run starts while the request stands
    lines = []
    outcomes = run_requests([request], "debug", log=lines.append)
    assert [o.status for o in outcomes] == ["missing"] and "stop requested" in lines[0]
    # `replicate sweep` removes it and resumes the run from its checkpoint
    assert cli.main(["sweep", "demo:table1", "--profile", "smoke", "--executor", "debug", "--data-root",
                     str(smoke_root), "--results", request.results_dir, "--work", str(work)]) == 0
    assert not stop_file(work).exists() and "removed the stop request" in capsys.readouterr().out
    assert ResultsStore(request.results_dir).get("smoke", request.key) is not None


def test_cli_deadline_parses_until_and_max_minutes(monkeypatch):
    from replicate import cli

    now = time.time()
    assert abs(cli._deadline(None, 10) - (now + 600)) < 5
    until = cli._deadline("00:00", None)
    assert now < until <= now + 24 * 3600 + 5  # the next midnight
    assert cli._deadline("00:00", 1) == pytest.approx(now + 60, abs=5)  # the earlier of the two
    assert cli._deadline(None, None) is None
    with pytest.raises(ReplicateError, match="HH:MM"):
        cli._deadline("25:99", None)


def test_verify_reproduces_a_record_exactly_and_names_what_differs(swept, smoke_root, tmp_path, monkeypatch):
    import pandas as pd

    from replicate.experiments.appendix import verifications_frame
    from replicate.experiments.verify import find_request, save_verification, verify
    from replicate.provenance import code_version

    path = ResultsStore(swept[1]).path("smoke", demo_request(swept).key)
    result = verify(path, data_root=smoke_root, progress=False)
    assert result.exact, result.format()
    assert "reproduced exactly" in result.format() and "loss.last" in result.stored
    assert result.threads == json.loads(path.read_text())["provenance"]["threads"]  # the record's own count
    # keep: the re-trained run stays in the record's run folder, checkpoint included, for the figures' analyses
    moved = json.loads(path.read_text())
    moved["work_dir"] = str(tmp_path / "kept" / moved["key"])
    (tmp_path / "moved.json").write_text(json.dumps(moved))
    kept = verify(tmp_path / "moved.json", data_root=smoke_root, progress=False, keep=True)
    assert kept.exact and (tmp_path / "kept" / moved["key"] / "checkpoint.pt").is_file()
    saved = save_verification(kept, tmp_path / "store")  # --save: the provenance page lists it
    assert saved == tmp_path / "store" / "verifications" / "smoke" / f"{moved['key']}.json"
    assert json.loads(saved.read_text())["commit"] == code_version()["commit"]
    with pytest.raises(ReplicateError, match="already holds a checkpoint"):  # it would resume, not re-train
        verify(tmp_path / "moved.json", data_root=smoke_root, progress=False, keep=True)
    tampered = json.loads(path.read_text())
    tampered["loss_summary"]["loss"]["last"] += 1e-6
    tampered["provenance"]["device"] = "Another CPU"  # a record made elsewhere: the report names both machines
    bad = tmp_path / path.name
    bad.write_text(json.dumps(tampered))
    result = verify(bad, data_root=smoke_root, progress=False)
    assert not result.exact and list(result.differences) == ["loss.last"] and "NOT reproduced" in result.format()
    assert "recorded on 'Another CPU'" in result.format() and not result.same_machine
    assert "re-trained at" not in result.format()  # the record's own commit
    other = dataclasses.replace(result, recorded_commit="0123456789abcdef")
    assert "recorded at commit 0123456789, re-trained at" in other.format()
    save_verification(result, tmp_path / "elsewhere")
    frame = pd.concat([verifications_frame(tmp_path / store, "smoke") for store in ("store", "elsewhere")])
    assert list(frame["outcome"]) == [f"exact ({len(kept.stored)} metrics and loss statistics equal)",
                                      f"NOT reproduced: 1 of {len(result.stored)} differ"]
    assert list(frame["recorded on"]) == [kept.here, "Another CPU"] and list(frame["re-trained on"]) == [kept.here] * 2
    assert list(frame["AP"]) == [round(100 * kept.stored["AP"], 2)] * 2
    older = json.loads(path.read_text())  # a record made before gn_nchw existed: it lacks the field
    assert older["config"]["train"].pop("gn_nchw") is False
    assert find_request(older, path).key == older["key"]
    older["config"]["train"]["gn_nchw"] = True  # the same key with another config: refused
    with pytest.raises(ReplicateError, match="hashes the same but its config differs"):
        find_request(older, path)
    older["config"]["train"]["gn_nchw"] = False
    assert older["config"]["model"]["head"].pop("reg_init_std") == 0.01  # made before the field: lacks it
    assert find_request(older, path).key == older["key"]
    older["config"]["model"]["head"]["reg_init_std"] = 0.02  # the same key with another config: refused
    with pytest.raises(ReplicateError, match="hashes the same but its config differs"):
        find_request(older, path)
    older["config"]["model"]["head"]["reg_init_std"] = 0.01
    assert older["config"]["model"]["test"].pop("score_voting") is None  # made before the test field
    assert find_request(older, path).key == older["key"]
    older["config"]["model"]["test"]["score_voting"] = 0.025  # scored with another test config: refused
    with pytest.raises(ReplicateError, match="hashes the same but its config differs"):
        find_request(older, path)
    tampered["key"] = "0" * 12
    bad.write_text(json.dumps(tampered))
    with pytest.raises(ReplicateError, match="no registered table row has run 000000000000"):
        verify(bad, data_root=smoke_root, progress=False)
    # a bf16 run (the proxy's) on a CPU that would emulate bf16: refused before any training
    from replicate.experiments import verify as verify_module

    monkeypatch.setattr(verify_module, "cpu_has_native_bf16", lambda: False)
    tampered["config"]["train"]["amp"] = "bf16"
    bad.write_text(json.dumps(tampered))
    with pytest.raises(ReplicateError, match="trained with bf16 autocast on 'Another CPU'.*has no native bf16"):
        verify(bad, data_root=smoke_root, progress=False)
