"""The training engine: schedule, resumable sampling, checkpoint/resume, signals, DDP parity, CLI."""

import json
import signal
import socket
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from replicate.cli import main
from replicate.data.profiles import build_dataset, data_config
from replicate.engine import SCHEDULES, TrainConfig, lr_at, with_overrides
from replicate.engine import train as train_module
from replicate.engine.checkpoint import load_checkpoint
from replicate.engine.distributed import detect_env, init_distributed
from replicate.engine.sampler import EpochDataset, IterationBatchSampler
from replicate.engine.train import train
from replicate.errors import ReplicateError
from replicate.io import read_json
from replicate.models.zoo import model_config

TIMING_KEYS = ("time", "data_time", "imgs_per_s")


pytestmark = pytest.mark.usefixtures("one_thread")


def short(iters: int, **changes) -> TrainConfig:
    return with_overrides(SCHEDULES["smoke"], iters=iters, **changes)


def read_log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def model_state(out) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "checkpoint.pt")["model"]


# ---------------------------------------------------------------------------------------- schedule
def test_lr_linear_warmup_and_steps():
    cfg = TrainConfig(iters=100, batch_size=2, lr=0.1, warmup="linear", warmup_iters=10, warmup_ratio=0.1,
                      steps=(50, 80))
    # mmcv: lr * (1 - (1 - i / warmup_iters) * (1 - ratio)) during warmup, then lr * gamma ** #steps passed
    assert lr_at(cfg, 0) == pytest.approx(0.01)
    assert lr_at(cfg, 5) == pytest.approx(0.1 * (1 - 0.5 * 0.9))
    assert lr_at(cfg, 10) == pytest.approx(0.1)
    assert lr_at(cfg, 49) == pytest.approx(0.1)
    assert lr_at(cfg, 50) == pytest.approx(0.01)
    assert lr_at(cfg, 79) == pytest.approx(0.01)
    assert lr_at(cfg, 80) == pytest.approx(0.001)


def test_lr_constant_and_no_warmup():
    cfg = TrainConfig(iters=100, batch_size=2, lr=0.1, warmup="constant", warmup_iters=10, warmup_ratio=1 / 3,
                      steps=(5,))
    assert lr_at(cfg, 0) == pytest.approx(0.1 / 3)
    assert lr_at(cfg, 9) == pytest.approx(0.01 / 3)  # the step at 5 applies inside the warmup too
    assert lr_at(cfg, 10) == pytest.approx(0.01)
    assert lr_at(replace(cfg, warmup="none"), 0) == pytest.approx(0.1)


def test_presets_and_overrides():
    one_x = SCHEDULES["1x"]
    assert (one_x.iters, one_x.batch_size, one_x.lr, one_x.steps) == (90_000, 16, 0.01, (60_000, 80_000))
    assert SCHEDULES["synthetic"].iters == 12 * 4000 // 16
    assert with_overrides(one_x, iters=9000).steps == (60_000, 80_000)  # never reached: documented
    scaled = with_overrides(one_x, iters=9000, scale_schedule=True)
    assert (scaled.steps, scaled.warmup_iters) == ((6000, 8000), 50)
    with pytest.raises(ReplicateError, match="warmup"):
        TrainConfig(iters=1, batch_size=1, lr=0.1, warmup="cosine")


# ----------------------------------------------------------------------------------------- sampler
def test_sampler_resumes_exactly():
    full = list(IterationBatchSampler(10, 4, seed=3, end=12))
    assert list(IterationBatchSampler(10, 4, seed=3, start=5, end=12)) == full[5:]
    assert full != list(IterationBatchSampler(10, 4, seed=4, end=12))


def test_sampler_epochs_are_permutations():
    s = IterationBatchSampler(12, 4, seed=0, end=9)  # 3 iterations per epoch
    epochs = [[i for it in range(3 * e, 3 * e + 3) for i in s.batch_at(it)] for e in range(3)]
    for e, keys in enumerate(epochs):
        assert {k[0] for k in keys} == {e}
        assert sorted(k[1] for k in keys) == list(range(12))
    assert [k[1] for k in epochs[0]] != [k[1] for k in epochs[1]]


def test_rank_shares_partition_the_global_batch():
    one = IterationBatchSampler(20, 8, seed=1, end=6)
    ranks = [list(IterationBatchSampler(20, 8, seed=1, end=6, rank=r, world_size=4)) for r in range(4)]
    for it, batch in enumerate(one):
        assert [k for r in range(4) for k in ranks[r][it]] == batch
    with pytest.raises(ReplicateError, match="not divisible"):
        IterationBatchSampler(20, 8, end=1, world_size=3)


def test_augmentation_follows_the_batch_epoch(smoke_root):
    ds = build_dataset(data_config("smoke", smoke_root), "train", train=True, seed=0)
    wrapped = EpochDataset(ds)
    flips = [[wrapped[(e, i)][1]["flipped"] for e in range(6)] for i in range(4)]
    assert any(len(set(f)) == 2 for f in flips)  # the flip is redrawn each epoch
    ds.set_epoch(3)
    image, target = ds[2]
    again, target_again = wrapped[(3, 2)]
    assert torch.equal(image, again) and target["flipped"] == target_again["flipped"]
    # DataLoader workers read the epoch from the sampler, not from the (copied) dataset's state
    sampler = IterationBatchSampler(len(ds), 4, seed=0, start=9, end=12)  # crosses an epoch boundary
    batches = [DataLoader(wrapped, batch_sampler=sampler, num_workers=w, collate_fn=list) for w in (0, 2)]
    for serial, parallel in zip(*batches):
        for (a, ta), (b, tb) in zip(serial, parallel):
            assert torch.equal(a, b) and ta["flipped"] == tb["flipped"]


def test_slurm_env_layout():
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123",
           "SLURM_JOB_NODELIST": "node[1-2]", "MASTER_ADDR": "node1"}
    layout = detect_env(env)
    assert (layout.rank, layout.world_size, layout.local_rank) == (3, 8, 1)
    assert layout.master_port == "15123" and layout.master_addr  # scontrol's first host, or MASTER_ADDR
    assert detect_env({}).world_size == 1


# -------------------------------------------------------------------------------- resume and signals
@pytest.mark.parametrize("name", ["fcos", "tsd"])  # TSD: its RPN and RoI samplers draw from the random stream
def test_resume_equals_uninterrupted(name, smoke_root, tmp_path):
    model = model_config(name, "smoke", 10)
    model = replace(model, test=replace(model.test, score_thr=0.0))  # detections even after 6 iterations
    cfg = short(6, checkpoint_every=0)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    done = train(model, "smoke", whole, cfg, data_root=smoke_root, progress=False)
    first = train(model, "smoke", parts, cfg, data_root=smoke_root, progress=False, stop_after=3)
    assert (first["status"], first["iteration"]) == ("interrupted", 3)
    with open(parts / "log.jsonl", "a") as fh:  # a line written after the checkpoint, before a crash
        fh.write(json.dumps({"iter": 4, "loss": 99.0}) + "\n")
    resumed = train(model, "smoke", parts, cfg, data_root=smoke_root, progress=False)
    assert done["status"] == resumed["status"] == "finished"

    a, b = model_state(whole), model_state(parts)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_json(whole / "detections.json") == read_json(parts / "detections.json") != []
    assert read_json(whole / "metrics.json")["metrics"] == read_json(parts / "metrics.json")["metrics"]
    strip = lambda log: [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in log]  # noqa: E731
    assert strip(read_log(whole)) == strip(read_log(parts))
    assert [row["iter"] for row in read_log(parts)] == list(range(1, 7))

    with pytest.raises(ReplicateError, match="checkpoint.pt: checkpoint of another configuration"):
        train(model, "smoke", parts, replace(cfg, lr=0.5), data_root=smoke_root, progress=False)


def test_sigterm_checkpoints_and_stops(smoke_root, tmp_path, monkeypatch):
    def lr_then_signal(cfg, iteration):
        if iteration == 1:
            signal.raise_signal(signal.SIGTERM)
        return lr_at(cfg, iteration)

    monkeypatch.setattr(train_module, "lr_at", lr_then_signal)
    before = signal.getsignal(signal.SIGTERM)
    result = train("fcos", "smoke", tmp_path, short(10), data_root=smoke_root, progress=False)
    assert (result["status"], result["iteration"]) == ("interrupted", 2)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 2
    assert len(read_log(tmp_path)) == 2 and not (tmp_path / "metrics.json").exists()
    assert signal.getsignal(signal.SIGTERM) is before


# ------------------------------------------------------------------------------------------ DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, model_cfg, root, out, cfg) -> None:
    torch.set_num_threads(1)
    init_distributed({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                      "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    try:
        train(model_cfg, "smoke", out, cfg, data_root=root, device="cpu", progress=False)
    finally:
        dist.destroy_process_group()


def test_ddp_matches_single_process(smoke_root, tmp_path):
    """Two gloo processes with 2 images each == one process with the batch of 4, after 3 iterations.

    Heads normalise by the mean number of positives over ranks and DDP averages gradients, so the
    update is mathematically the single-process one; only float summation order differs (per-rank
    partial sums, the all-reduce), hence a tolerance of 1e-5 rather than bitwise equality. BatchNorm
    is frozen because batch statistics of 2 images legitimately differ from those of 4.
    """
    cfg = model_config("fcos", "smoke", 10)
    cfg = replace(cfg, backbone=replace(cfg.backbone, norm="frozen_bn"))
    schedule = short(3, eval_at_end=False)
    train(cfg, "smoke", tmp_path / "one", schedule, data_root=smoke_root, progress=False)
    mp.spawn(_ddp_worker, args=(_free_port(), cfg, smoke_root, tmp_path / "two", schedule), nprocs=2)
    one, two = model_state(tmp_path / "one"), model_state(tmp_path / "two")
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-5, msg=k)
    losses = lambda out: [row["loss"] for row in read_log(out)]  # noqa: E731
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)


# ------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("words", [["train"], ["models"]])
def test_cli_help(words, capsys):
    with pytest.raises(SystemExit) as exc:
        main(words + ["--help"])
    assert exc.value.code == 0 and "usage: replicate" in capsys.readouterr().out


def test_cli_models_lists_presets(capsys):
    assert main(["models"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert "retinanet" in names and "fcos" in names


def test_cli_bad_model_is_a_user_error(tmp_path, capsys):
    assert main(["train", "--model", "nope", "--profile", "smoke", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("replicate: error: unknown model 'nope'")


def test_cli_train_end_to_end(smoke_root, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "fcos", "--profile", "smoke", "--data-root", str(smoke_root), "--iters", "5",
            "--out", str(out), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "status: finished" in printed and str(out / "metrics.json") in printed
    metrics = read_json(out / "metrics.json")
    assert metrics["status"] == "finished" and metrics["provenance"]["config"]["train"]["iters"] == 5
    assert len(metrics["provenance"]["config_hash"]) == 12


def test_cli_set_reads_json_values_else_strings():
    from replicate.cli import model_overrides
    assert model_overrides(["task_split.stride=8", "head.roi.sibling=false", "head.salt=exp",
                            "backbone.dcn_stages=[2, 3, 4]", "task_split.stride=null"]) == {
        "task_split.stride": None, "head.roi.sibling": False, "head.salt": "exp", "backbone.dcn_stages": [2, 3, 4]}


@pytest.mark.parametrize("pair, message", [("stride", "expected KEY=VALUE"),
                                           ("head.nope=1", "has no field 'nope'")])
def test_cli_bad_set_is_a_user_error(smoke_root, tmp_path, capsys, pair, message):
    argv = ["train", "--model", "fcos", "--profile", "smoke", "--data-root", str(smoke_root), "--set", pair,
            "--out", str(tmp_path / "run"), "--quiet"]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_train_with_overrides_trains_the_changed_preset(smoke_root, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "tsd", "--profile", "smoke", "--data-root", str(smoke_root), "--iters", "2",
            "--no-eval", "--out", str(out), "--quiet", "--set", "task_split.stride=32"]
    for switch in ("sibling", "pc_cls", "pc_loc", "spatial"):
        argv += ["--set", f"head.roi.{switch}=false"]
    assert main(argv) == 0
    capsys.readouterr()
    model = torch.load(out / "checkpoint.pt", weights_only=False)["config"]["model"]
    assert model["task_split"] == {"stride": 32, "rpn": "cls"} and model["head"]["roi"]["sibling"] is False


def test_bench_result_names_carry_the_overrides(tmp_path, monkeypatch):
    from replicate.bench.cost import write_result
    monkeypatch.chdir(tmp_path)
    result = {"benchmark": "threads", "profile": "smoke", "model": "tsd",
              "overrides": {"task_split.stride": 8, "head.salt": "exp", "backbone.dcn_stages": [2, 3]}}
    path = write_result(result)
    assert path.name == "threads_smoke_tsd_task_split.stride-8_head.salt-exp_backbone.dcn_stages-2-3.json"
    assert read_json(path)["overrides"]["task_split.stride"] == 8
