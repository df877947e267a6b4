"""The train-step benchmark runs end to end and records its figures with provenance (no timing asserted)."""

import json

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


def test_bench_rejects_bad_size(capsys):
    assert main(["bench", "train-step", "--size", "big", "--no-save"]) == 2
    assert "--size must look like HxW" in capsys.readouterr().err
