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

