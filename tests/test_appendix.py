"""The provenance appendix's frames on hand-built run records and benchmark results."""

import json

import pandas as pd
import pytest

from replicate.experiments import appendix



def _record(seed: int, ap: float) -> dict:
    return {"key": f"base-s{seed}", "profile": "smoke", "seed": seed, "model": "fcos", "metrics": {"AP": ap},
            "timings": {"train_imgs_per_s": 12.5, "train_seconds": 90.0},
            "provenance": {"commit": "0123456789abcdef", "dirty": False, "versions": {"torch": "2.14.1"},
                           "device": "cpu", "started": "2026-01-01T00:00:00", "finished": "2026-01-01T00:01:00"}}


RECORDS = {"base": [_record(0, 0.300), _record(1, 0.320)]}


def test_provenance_frame():
    records = RECORDS["base"] + [{"key": "bare", "model": "atss", "profile": "smoke", "seed": 0}]
    frame = appendix.provenance_frame(records)
    assert list(frame["key"]) == ["base-s0", "base-s1", "bare"]
    first = frame.iloc[0]
    assert first["commit"] == "01234567" and first["torch"] == "2.14.1" and first["train min"] == 1.5
    assert first["device"] == "cpu" and not first["dirty"] and first["finished (UTC)"] == "2026-01-01 00:01"
    assert appendix._utc_minute("2026-12-02T05:21:23+02:00") == "2026-12-02 03:21" and appendix._utc_minute("n/a") == "n/a"
    assert pd.isna(frame.iloc[2]["commit"]) and pd.isna(frame.iloc[2]["AP"]) and pd.isna(frame.iloc[2]["train min"])
    assert frame.iloc[0]["AP"] == 30.0 and frame.iloc[1]["AP"] == 32.0 and "table rows" not in frame.columns
    assert frame.iloc[0]["model"] == "fcos"
    # with the rows each run serves: in the tables' order (a run no table reads last), seed by seed
    uses = {"bare": [("demo:table1", "atss")], "base-s1": [("demo:table2", "base"), ("demo:table3", "base"),
                                                           ("other:table1", "base"), ("demo:table4", "base (R50)")]}
    ordered = appendix.provenance_frame(records, uses)
    assert list(ordered["key"]) == ["bare", "base-s1", "base-s0"] and "model" not in ordered.columns
    assert list(ordered["table rows"]) == [
        "demo:table1 · atss", "demo:table2, table3 · base; other:table1 · base; demo:table4 · base (R50)", "—"]
    # shown: the values every run shares are said once, above the table, and left out of it
    shown = appendix.render_provenance(appendix.provenance_frame(RECORDS["base"], {}))
    assert "2 runs; every one: profile smoke, from a clean checkout, device cpu, torch 2.14.1." in shown
    assert ">device<" not in shown and ">torch<" not in shown and ">commit<" in shown and ">AP<" in shown
    mixed = appendix.render_provenance(frame)  # "bare" records no device, torch or checkout state
    assert "every one: profile smoke." in mixed and ">device<" in mixed and ">dirty<" in mixed
    devices = appendix.devices_frame(records, "results").set_index("device")
    assert devices.loc["cpu", "records"] == 2 and devices.loc["unrecorded", "records"] == 1
    assert devices.loc["cpu", "check one"] == "replicate verify results/smoke/base-s0.json"
    assert devices.loc["cpu", "last finished"] >= devices.loc["cpu", "first finished"]
    from replicate.provenance import _REPO  # a store inside the repository is shown relative to it

    inside = appendix.devices_frame(records, _REPO / "results").set_index("device")
    assert inside.loc["cpu", "check one"] == "replicate verify results/smoke/base-s0.json"


def test_a_resumed_run_names_the_commits_of_its_earlier_attempts():
    def attempt(commit, dirty=False):
        return {"started": "2026-01-01T00:00:00", "commit": commit, "dirty": dirty, "hostname": "h"}

    one = _record(0, 0.3)
    one["provenance"]["attempts"] = [attempt("0123456789abcdef")]
    resumed = _record(1, 0.3)
    resumed["provenance"]["attempts"] = [attempt("fedcba9876543210", dirty=True), attempt("0123456789abcdef")]
    legacy = _record(2, 0.3)
    legacy["provenance"].update(attempts=[attempt("0123456789abcdef")], attempts_unrecorded=2)
    frame = appendix.provenance_frame([one, resumed, legacy, _record(3, 0.3)])
    assert list(frame["commit"]) == ["01234567", "01234567 (earlier attempts at fedcba98)",
                                     "01234567 (resumed; 2 earlier attempts unrecorded)", "01234567"]
    # the checkout state is any attempt's: the first attempt of the resumed run trained uncommitted code
    assert list(frame["dirty"]) == [False, True, False, False]
    assert appendix.dirty_state({"key": "bare"}) is None


def test_bench_and_environment_frames(tmp_path):
    (tmp_path / "train-step_fcos_cpu.json").write_text(json.dumps({
        "benchmark": "train-step", "model": "fcos", "batch_size": 2, "size": [512, 512],
        "ours": {"median_s": 0.5}, "torchvision": {"median_s": 0.4}, "ratio": 1.25, "note": "",
        "provenance": {"device": "cpu"}}))
    (tmp_path / "aps_paper_cpu.json").write_text(json.dumps({
        "benchmark": "aps", "score": "paper", "images": 16, "boxes_per_image": 7, "num_points": 100,
        "reference": {"median_s": 0.3}, "ours": {"median_s": 0.02}, "identical": True, "threads": 1,
        "provenance": {"device": "cpu"}}))
    (tmp_path / "eval_cpu.json").write_text(json.dumps({
        "benchmark": "eval", "images": 5000, "detections": 500000, "pycocotools_seconds": 90.0,
        "faster-coco-eval_seconds": 10.0, "max_stat_difference": 2e-16, "provenance": {"device": "cpu"}}))
    (tmp_path / "norm_cpu.json").write_text(json.dumps({
        "benchmark": "norm", "threads": 1, "provenance": {"device": "cpu"}, "rows": [
            {"shape": [8, 64, 26, 26], "dtype": "float32", "ours_ms": 3.0, "channels_last_ms": 7.5, "speedup": 2.5,
             "max_abs_diff": 2e-6},
            {"shape": [8, 64, 26, 26], "dtype": "bf16", "ours_ms": 2.0, "channels_last_ms": 12.0, "speedup": 6.0,
             "max_abs_diff": 1e-2},
            {"shape": [8, 64, 7, 7], "dtype": "bf16", "ours_ms": 0.2, "channels_last_ms": 0.8, "speedup": 4.0,
             "max_abs_diff": 0.0}]}))
    (tmp_path / "train-step_fcos_cuda_bf16_cl.json").write_text(json.dumps({
        "benchmark": "train-step", "model": "fcos", "batch_size": 8, "size": [800, 1333], "amp": "bf16",
        "channels_last": True, "ours": {"median_s": 0.08}, "torchvision": {"median_s": 0.09},
        "provenance": {"device": "NVIDIA H200"}}))
    (tmp_path / "parity_cuda_cpu.json").write_text(json.dumps({
        "benchmark": "parity", "model": "fcos", "iters": 20, "initial_iters": 3, "initial_max_rel_diff": 1.04e-7,
        "trajectory_rel_diff": 7.0e-4, "agree": True, "provenance": {"device": "NVIDIA H200"}}))
    frame = appendix.bench_frame(tmp_path).set_index("file")
    assert frame.loc["train-step_fcos_cuda_bf16_cl.json", "load"] == "batch 8 at 800x1333, bf16, channels_last"
    parity = frame.loc["parity_cuda_cpu.json"]
    assert parity["same result"] is True and parity["device"] == "NVIDIA H200" and pd.isna(parity["speed-up"])
    assert parity["load"] == "20 iterations, float32: first 3 losses within 1e-07, mean loss within 7e-04 (relative)"
    norm = frame.loc["norm_cpu.json"]  # the headline: bf16 on the largest map
    assert norm["speed-up"] == pytest.approx(6.0) and norm["ours ms"] == pytest.approx(2.0)
    assert norm["same result"] is True and norm["load"] == "forward + backward, 8x64x26x26, bf16"
    step, aps = frame.loc["train-step_fcos_cpu.json"], frame.loc["aps_paper_cpu.json"]
    coco = frame.loc["eval_cpu.json"]
    assert coco["speed-up"] == pytest.approx(9.0) and coco["same result"] is True
    assert coco["baseline"] == "pycocotools (reference)" and coco["load"] == "500,000 detections, 5,000 images"
    assert step["speed-up"] == pytest.approx(0.8) and step["baseline ms"] == pytest.approx(400.0)
    assert step["baseline"] == "torchvision" and step["load"] == "batch 2 at 512x512"
    assert aps["speed-up"] == pytest.approx(15.0) and aps["same result"] is True
    assert aps["what"] == "APS, paper score" and aps["load"] == "16 images x 7 boxes, 100 points"
    assert aps["device"] == "cpu, 1 thread" and step["device"] == "cpu"  # threads where the result records them
    assert appendix.bench_frame(tmp_path / "none").empty
    env = appendix.environment_frame()
    assert {"commit", "torch", "device"} <= set(env.index)
