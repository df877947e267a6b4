"""The benchmarks run end to end and record their figures with provenance (no timing asserted); the APS
benchmark's per-GT reference selects the same points as the batched aps_select."""

import json
from pathlib import Path

import numpy as np
import pytest

from replicate.cli import main


def test_bench_train_step_writes_result(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "train-step", "--model", "fcos", "--size", "64x96", "--batch-size", "1",
                 "--iters", "1", "--warmup", "0", "--num-classes", "3", "--device", "cpu", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["model"] == "fcos" and record["size"] == [64, 96]
    assert record["ours"]["median_s"] > 0 and record["torchvision"]["median_s"] > 0
    assert record["ratio"] == record["ours"]["median_s"] / record["torchvision"]["median_s"]
    assert {"commit", "versions", "device", "config_hash"} <= set(record["provenance"])
    assert "ratio ours/torchvision" in capsys.readouterr().out
    assert record["device"] == "cpu"


def test_bench_train_step_names_the_gpu_it_ran_on(tmp_path, monkeypatch):
    """A CUDA result's provenance names the GPU, not the host's CPU (the first H200 results named the Xeon)."""
    import torch

    from replicate.bench.train_step import write_result

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    out = write_result({"benchmark": "train-step", "model": "fcos", "device": "cuda"}, tmp_path / "r.json")
    assert json.loads(out.read_text())["provenance"]["device"] == "NVIDIA H200"


def test_bench_train_step_default_file_name_is_plain(tmp_path, monkeypatch):
    """The default file name carries the device with its instruction set, in plain characters only."""
    from replicate import provenance
    from replicate.bench.train_step import write_result

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(provenance, "device_name", lambda device=None: "AMD EPYC (AVX512, BF16; family 25, model 17)")
    out = write_result({"benchmark": "train-step", "model": "fcos", "device": "cpu", "amp": "bf16",
                        "channels_last": True})
    assert out == Path("results/bench/train-step_fcos_AMD-EPYC-AVX512-BF16-family-25-model-17_bf16_cl.json")
    assert json.loads(out.read_text())["provenance"]["device"] == "AMD EPYC (AVX512, BF16; family 25, model 17)"


def test_bench_rejects_bad_size(capsys):
    assert main(["bench", "train-step", "--size", "big", "--no-save"]) == 2
    assert "--size must look like HxW" in capsys.readouterr().err


@pytest.mark.parametrize("score", ["paper", "code"])
def test_reference_aps_matches_batched_aps_select(score):
    from replicate.bench.aps import make_problem, reference_aps_select
    from replicate.models.aps import aps_select

    problem = make_problem(images=2, boxes_per_image=3, seed=1)
    candidate = problem.candidate.clone()
    # edge cases on half of the GTs: a single candidate, no candidate, candidates on a single level
    candidate[0] = False
    candidate[0, problem.candidate[0].nonzero()[0, 0]] = True
    candidate[1] = False
    candidate[2] &= problem.level_of_point == 0
    args = (problem.cost_cls, problem.cost_reg, candidate, problem.level_of_point)
    ours = aps_select(*args, problem.num_levels, score=score)
    reference = reference_aps_select(*args, score=score)
    assert reference.shape == tuple(ours.shape) and reference.dtype == np.bool_
    np.testing.assert_array_equal(reference, ours.numpy())
    counts = ours.sum(dim=1).tolist()
    assert counts[0] == 1 and counts[1] == 0 and all(1 <= c <= 18 for c in counts[2:])
    assert not bool((ours & ~candidate).any())


def test_bench_aps_writes_result(tmp_path, capsys):
    out = tmp_path / "aps.json"
    assert main(["bench", "aps", "--images", "2", "--boxes-per-image", "2", "--iters", "1", "--warmup", "0",
                 "--device", "cpu", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert {"benchmark", "images", "boxes_per_image", "num_gt", "num_points", "score", "device", "reference", "ours",
            "speedup", "identical", "differing_gts", "targets", "provenance"} <= set(record)
    assert record["benchmark"] == "aps" and record["num_gt"] == 4 and record["num_points"] == 22300
    assert record["score"] == "paper" and record["device"] == "cpu"
    assert record["identical"] is True and record["differing_gts"] == 0
    assert record["reference"]["median_s"] > 0 and record["ours"]["median_s"] > 0
    assert record["speedup"] == record["reference"]["median_s"] / record["ours"]["median_s"]
    assert record["targets"] == {"cpu": 10, "cuda": 50}
    assert {"commit", "versions", "device", "config_hash"} <= set(record["provenance"])
    printed = capsys.readouterr().out
    assert "speedup" in printed and "identical assignments: yes" in printed and "WARNING" not in printed


def test_bench_eval_writes_result(tmp_path, capsys):
    from replicate.bench.eval import make_problem

    gt, dets = make_problem(images=20, categories=5, dets_per_image=30, seed=2)
    assert len(dets) == 20 * 30 and {d["image_id"] for d in dets} == set(range(1, 21))
    assert {a["category_id"] for a in gt["annotations"]} <= set(range(1, 6))
    out = tmp_path / "eval.json"
    assert main(["bench", "eval", "--images", "20", "--dets-per-image", "30", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["benchmark"] == "eval" and record["detections"] == 20 * 30
    assert record["pycocotools_seconds"] > 0 and record["faster-coco-eval_seconds"] > 0
    assert record["speedup"] == record["pycocotools_seconds"] / record["faster-coco-eval_seconds"]
    assert record["max_stat_difference"] < 1e-12 and 0 < record["AP"] < 1
    assert {"commit", "versions", "device", "config_hash"} <= set(record["provenance"])
    assert "faster-coco-eval" in capsys.readouterr().out


def test_bench_norm_writes_result(tmp_path, capsys):
    out = tmp_path / "norm.json"
    assert main(["bench", "norm", "--iters", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["benchmark"] == "norm" and len(record["rows"]) == 4
    for row in record["rows"]:
        assert row["speedup"] == row["channels_last_ms"] / row["ours_ms"]
        assert row["max_abs_diff"] < (0.05 if row["dtype"] == "bf16" else 1e-4)  # the same operator
    assert {"commit", "versions", "device", "config_hash"} <= set(record["provenance"])
    assert "ours (NCHW path)" in capsys.readouterr().out


def test_bench_dcn_writes_result_and_the_book_lists_each_case(tmp_path, capsys):
    from replicate.experiments.appendix import bench_frame

    out = tmp_path / "dcn_cpu.json"
    assert main(["bench", "dcn", "--batch-size", "1", "--iters", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["benchmark"] == "dcn" and [r["kernel"] for r in record["rows"]] == [7, 3]
    for row in record["rows"]:
        assert row["speedup"] == row["torchvision_ms"] / row["ours_ms"]
        assert row["max_abs_diff"] < 1e-3  # the same operator as torchvision's (the oracle)
    assert {"commit", "versions", "device", "config_hash"} <= set(record["provenance"])
    assert "torchvision" in capsys.readouterr().out
    frame = bench_frame(tmp_path)
    assert list(frame["benchmark"]) == ["dcn", "dcn"] and frame["same result"].all()
    assert list(frame["speed-up"]) == [r["speedup"] for r in record["rows"]]


def test_parity_judges_first_steps_tightly_and_the_trajectory_loosely():
    from replicate.bench.parity import judge

    cpu = [2.0, 1.9, 1.8, 1.7, 1.6]
    # float32 rounding on the first steps, then chaotic drift that averages out: agree
    cuda = [2.0 + 2e-7, 1.9 - 1e-7, 1.8, 1.72, 1.58]
    verdict = judge(cpu, cuda)
    assert verdict["initial_max_rel_diff"] == pytest.approx(1e-7)
    assert verdict["trajectory_rel_diff"] == pytest.approx(0.0, abs=1e-7)
    assert verdict["max_rel_diff"] == pytest.approx(0.02 / 1.6)
    assert verdict["agree"]
    # a first forward pass that already differs by 1e-4 is a real difference
    assert not judge(cpu, [2.0002, 1.9, 1.8, 1.7, 1.6])["agree"]
    # so is a run that trains differently: mean loss 2% higher
    assert not judge(cpu, [2.0, 1.9, 1.8, 1.7 * 1.1, 1.6 * 1.1])["agree"]
    with pytest.raises(ValueError, match="equal length"):
        judge(cpu, cuda[:4])
