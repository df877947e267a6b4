"""scripts/commit_records.py: the commit message it writes for new run records, from the records alone."""

import copy
import sys
from pathlib import Path

from replicate.io import read_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import commit_records  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _record(key: str) -> dict:
    return read_json(RESULTS / "proxy" / f"{key}.json", what="run record")


def test_message_names_rows_seeds_ap_device_and_commit():
    fcos_aps = _record("a63b32929098")  # MOD Table 2 'FCOS+APS', seed 2, recorded at 5d9473e on the AMD EPYC
    text = commit_records.message([fcos_aps])
    title, _, body = text.partition("\n\n")
    ap = 100 * fcos_aps["metrics"]["AP"]
    commit, device = fcos_aps["provenance"]["commit"][:7], fcos_aps["provenance"]["device"]
    assert title == f"Proxy records ({device}, {commit}): mod:table2 'FCOS+APS' seed 2 (AP {ap:.1f})"
    assert body == f"- proxy/a63b32929098.json: mod:table2 'FCOS+APS' seed 2 (AP {ap:.1f})\n"


def test_a_resumed_run_and_a_second_provenance_are_said():
    resumed = copy.deepcopy(_record("4ab01df47498"))  # MOD Table 1 'Reg-loss', seed 2
    commit = resumed["provenance"]["commit"]
    resumed["provenance"]["attempts"] = [{"commit": "5a42ab7d" + "0" * 32}, {"commit": commit}]
    text = commit_records.message([resumed, _record("a63b32929098")])
    title, _, body = text.partition("\n\n")
    assert title == "Records of 2 runs from 2 provenances (below)"
    assert f", {commit[:7]}; resumed, begun at 5a42ab7): mod:table1 'Reg-loss' seed 2 (AP " in body
    assert body.count("\nProxy records (") == 1 and body.count("\n- proxy/") == 2  # the 2 groups, then the 2 runs
    # a run shared by several table rows names the first and counts the others
    uses = {resumed["key"]: [("mod:table1", "Reg-loss"), ("mod:table3", "FCOS"), ("mod:table4", "FCOS")]}
    assert commit_records.describe(resumed, uses).startswith("mod:table1 'Reg-loss' (+2 more rows) seed 2 (AP ")
    assert commit_records.describe(resumed, {}).startswith("mod (no table reads it) seed 2 (AP ")
    variants_first = {resumed["key"]: [("mod:code_variants", "MOD (paper)"), ("mod:table2", "MOD")]}
    assert commit_records.describe(resumed, variants_first).startswith("mod:table2 'MOD' (+1 more rows) seed 2")


def test_new_weights_go_in_only_when_they_hash_to_their_record(tmp_path, monkeypatch, capsys):
    import hashlib
    import json
    import subprocess

    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True, text=True)
    git("init", "-q")
    (tmp_path / ".gitignore").write_text("/results/pretrained/**/*.pt\n")  # as the project's
    folder = tmp_path / "results" / "pretrained" / "proxy"
    folder.mkdir(parents=True)
    good, bad, lone = b"weights", b"other weights", b"no record"
    for name, data, recorded in (("narrow-aaaa", good, good), ("narrow_deep-bbbb", bad, good), ("lone-cccc", lone, None)):
        (folder / f"{name}.pt").write_bytes(data)
        if recorded is not None:
            (folder / f"{name}.json").write_text(json.dumps({"sha256": hashlib.sha256(recorded).hexdigest()}))
    monkeypatch.setattr(commit_records, "ROOT", tmp_path)
    keep, skipped = commit_records.new_weights(tmp_path / "results")
    assert keep == [folder / "narrow-aaaa.pt"]
    assert sorted(skipped) == [f"{folder / 'lone-cccc.pt'}: no record beside it",
                               f"{folder / 'narrow_deep-bbbb.pt'}: does not hash to its record's SHA-256 "
                               f"{hashlib.sha256(good).hexdigest()[:12]}"]
    git("config", "user.name", "t")
    git("config", "user.email", "t@t")
    assert commit_records.main(["--results", str(tmp_path / "results")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("Pretrained backbones' weights (1 file(s))\n\n- pretrained/proxy/narrow-aaaa.pt: ")
    assert "left out: " in err and "narrow_deep-bbbb.pt" in err
    assert git("ls-files").stdout.split() == ["results/pretrained/proxy/narrow-aaaa.pt"]
    assert commit_records.new_weights(tmp_path / "results")[0] == []  # held by git: not new
