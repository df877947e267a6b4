"""The replicate command line: help everywhere, exit codes, one-line errors."""

import json
import subprocess
import sys

import pytest

from replicate.cli import build_parser, main
from replicate.data import synth
from replicate.io import read_json

SUBCOMMANDS = [["data"], ["data", "synth"], ["data", "check"], ["data", "stats"], ["eval"], ["book"]]


@pytest.mark.parametrize("words", [[]] + SUBCOMMANDS)
def test_help_everywhere(words, capsys):
    with pytest.raises(SystemExit) as exc:
        main(words + ["--help"])
    assert exc.value.code == 0
    assert "usage: replicate" in capsys.readouterr().out


def test_console_script_installed():
    out = subprocess.run([sys.executable, "-m", "replicate.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("replicate ")


def test_synth_check_stats_eval(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["data", "synth", "--profile", "smoke", "--out", str(out), "--quiet"]) == 0
    ann, images = synth.dataset_paths(out, "val")
    assert ann.is_file() and "val:" in capsys.readouterr().out
    assert main(["data", "check", str(ann), "--images", str(images), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert main(["data", "stats", str(ann), "--json"]) == 0
    capsys.readouterr()
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in read_json(ann)["annotations"] if not a["iscrowd"]]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    assert main(["eval", str(ann), str(tmp_path / "dets.json"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert list(metrics) == ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    assert metrics["AP"] == pytest.approx(1.0)
    assert main(["eval", str(ann), str(tmp_path / "dets.json"), "--json", "--all"]) == 0
    assert "AP70_s" in json.loads(capsys.readouterr().out)


def test_check_reports_problems_with_exit_1(tmp_path, capsys):
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
            "annotations": [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0}],
            "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "bad.json").write_text(json.dumps(data))
    assert main(["data", "check", str(tmp_path / "bad.json")]) == 1
    assert "error" in capsys.readouterr().out


@pytest.mark.parametrize("argv_tail, message", [
    (["eval", "{missing}", "{missing}"], "not found"),
    (["eval", "{malformed}", "{malformed}"], "malformed JSON"),
])
def test_user_errors_are_one_line_exit_2(tmp_path, argv_tail, message):
    (tmp_path / "malformed.json").write_text("{ not json")
    argv = [a.format(missing=tmp_path / "missing.json", malformed=tmp_path / "malformed.json") for a in argv_tail]
    proc = subprocess.run([sys.executable, "-m", "replicate.cli", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and message in proc.stderr
    assert proc.stderr.startswith("replicate: error: ") and str(tmp_path) in proc.stderr


def test_parser_lists_every_command():
    text = build_parser().format_help()
    for name in ("data", "eval", "book"):
        assert name in text


def test_sweep_warns_where_the_cpu_would_emulate_the_profiles_bf16(monkeypatch, capsys, tmp_path):
    from replicate import provenance

    dry = ["--seeds", "1", "--dry-run", "--results", str(tmp_path), "--work", str(tmp_path / "work")]
    for native in (True, False):
        monkeypatch.setattr(provenance, "cpu_has_native_bf16", lambda: native)
        assert main(["sweep", "mod:table5", "--profile", "proxy", *dry]) == 0
        assert ("trains with bf16 autocast, which this CPU" in capsys.readouterr().err) is not native
    assert main(["sweep", "mod:table5", "--profile", "smoke", *dry]) == 0  # float32: nothing to say
    assert "bf16" not in capsys.readouterr().err
