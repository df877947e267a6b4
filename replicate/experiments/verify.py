"""``replicate verify RECORD...``: re-train a committed record's run and check that it reproduces exactly.

A record names its run by key (:func:`.store.run_key`: the hash of the model and training configs, the
profile and the seed). Verification finds the registered table row whose run has that key, checks that
the row's configuration today is the record's (``config``), trains it from scratch in a scratch folder
(never the results store; ``keep``: in the record's own run folder, whose checkpoint the figures' analyses
then read) and compares every COCO metric and the loss curves' first, last and lowest values of the new
run with the stored ones: equal to the last bit, as the same config on CPU with the
same thread count gives the same numbers. That promise holds on a CPU like the one the record names
(``provenance.device``: the model, and since 2026-12-05 its instruction set and family): another CPU runs
other float kernels (MKL and oneDNN dispatch by vendor and instruction set), so a re-run there differs in
the last bits and soon in the metrics; the report says so when the two machines differ. A bf16 run (the
proxy profile's) is refused at once on a CPU without native bf16, which would emulate it.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ..engine.config import with_later_fields
from ..engine.train import train
from ..errors import ReplicateError
from ..io import atomic_write_json, read_json
from ..models.detector import without_later_fields
from ..provenance import code_version, cpu_has_native_bf16, device_name, jsonable, versions
from .runs import RunRequest, loss_summary, requests_for
from .store import without_later_test_fields
from .spec import REGISTRY


@dataclass
class Verification:
    record: Path
    key: str
    request: RunRequest
    stored: dict[str, float]
    reproduced: dict[str, float]
    differences: dict[str, tuple[float, float]] = field(default_factory=dict)
    recorded_on: str = ""  # the record's CPU (its provenance's device)
    here: str = ""  # this machine's
    threads: int = 1  # the intra-op threads it was re-trained with
    code: dict[str, Any] = field(default_factory=dict)  # the commit it was re-trained with (code_version at start)
    recorded_commit: str = ""  # the commit the record was made at (its provenance's)

    @property
    def same_machine(self) -> bool:
        return not self.recorded_on or self.recorded_on == self.here

    @property
    def exact(self) -> bool:
        return not self.differences

    def format(self) -> str:
        head = f"{self.record}: run {self.key} ({self.request.spec_key} row {self.request.row_label!r} seed " \
               f"{self.request.seed})"
        if self.exact:
            return f"{head}: reproduced exactly (AP {100 * self.stored['AP']:.2f}; {len(self.stored)} metrics and loss " \
                   f"statistics equal; {self.threads} thread(s))"
        lines = [f"  {k}: stored {a!r}, re-trained {b!r}" for k, (a, b) in sorted(self.differences.items())]
        lines.append(f"  re-trained with {self.threads} thread(s): a record made with another count differs")
        if not self.same_machine:
            lines.append(f"  recorded on {self.recorded_on!r}, re-trained on {self.here!r}: exact reproduction is "
                         "promised on a CPU like the record's only (other float kernels run on another CPU)")
        now = str(self.code.get("commit") or "")
        if self.recorded_commit and now and now != "unknown" and now != self.recorded_commit:
            lines.append(f"  recorded at commit {self.recorded_commit[:10]}, re-trained at {now[:10]}: a change of "
                         "float path since (an operator's summation order) also differs in the last bits; re-train at "
                         f"the record's commit to tell (git worktree add ../at-record {self.recorded_commit[:10]})")
        return "\n".join([f"{head}: NOT reproduced ({len(self.differences)} metric(s) differ)", *lines])


    def to_json(self) -> dict[str, Any]:
        """The verification as a record of its own (:func:`save_verification`): which run, how it compared, and
        where, when and with what code it was re-trained."""
        return {"key": self.key, "profile": self.request.profile, "seed": self.request.seed,
                "table": self.request.spec_key, "row": self.request.row_label, "exact": self.exact,
                "compared": len(self.stored), "differences": {k: list(v) for k, v in self.differences.items()},
                "stored_AP": self.stored.get("AP"), "reproduced_AP": self.reproduced.get("AP"),
                "recorded_on": self.recorded_on, "here": self.here, "threads": self.threads,
                "verified": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **self.code, "versions": versions()}


def save_verification(result: Verification, results_dir: str | Path = "results") -> Path:
    """Write ``result`` to ``<results_dir>/verifications/<profile>/<key>.json`` (atomically; a later
    verification of the same record replaces it), where the book's provenance page reads it."""
    path = Path(results_dir) / "verifications" / result.request.profile / f"{result.key}.json"
    return atomic_write_json(path, jsonable(result.to_json()), indent=1)


def find_request(record: dict[str, Any], where: Path) -> RunRequest:
    """The registered table row and seed whose run has ``record``'s key, with the record's config."""
    from .sweep import load_papers

    load_papers()
    for tables in REGISTRY.values():
        for spec in tables.values():
            for request in requests_for(spec, record["profile"], record["seed"] + 1):
                if request.key == record["key"] and request.seed == record["seed"]:
                    stored = {"model": _comparable(record["config"]["model"]),
                              "train": with_later_fields(record["config"]["train"])}
                    now = {"model": _comparable(jsonable(request.model)), "train": jsonable(request.train)}
                    if now != stored:
                        raise ReplicateError(f"{where}: run {record['key']} hashes the same but its config differs "
                                             "from the record's; the record is not verifiable with this code")
                    return request
    raise ReplicateError(f"{where}: no registered table row has run {record['key']} on profile {record['profile']} "
                         "(its configuration changed since it was recorded, or its table was removed)")


def _comparable(model: dict[str, Any]) -> dict[str, Any]:
    """A model config as JSON without the fields added since records existed that hold their earlier values,
    its test config's included (the test config the record's metrics were scored with)."""
    model = without_later_fields(model)
    if isinstance(model.get("test"), dict):
        model = {**model, "test": without_later_test_fields(model["test"])}
    return model


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def verify(record_path: str | Path, *, data_root: str | Path | None = None, work_dir: str | Path | None = None,
           threads: int | None = None, progress: bool = True, keep: bool = False) -> Verification:
    """Re-train the run of the record at ``record_path`` and compare its metrics with the stored ones.

    ``keep``: train in the record's own run folder (its ``work_dir``) and leave the run there, so that the
    analyses that read a run's final checkpoint (:mod:`replicate.analysis.cache`) can use it on this machine;
    refused when that folder already holds a checkpoint (the run would resume instead of training from scratch).

    ``threads``: intra-op threads while training; float reductions depend on the thread count, so the default is
    the record's own (its provenance's ``threads``), or 1 for a record made before that was recorded (the sweeps
    run one thread per run)."""
    path = Path(record_path)
    record = read_json(path, what="run record")
    if not isinstance(record, dict) or not {"key", "profile", "seed", "config", "metrics"} <= set(record):
        raise ReplicateError(f"{path}: not a run record (needs key, profile, seed, config and metrics)")
    if not record["metrics"]:
        raise ReplicateError(f"{path}: the record holds no metrics to compare")
    if (record["config"].get("train") or {}).get("amp") == "bf16" and not cpu_has_native_bf16():
        recorded = (record.get("provenance") or {}).get("device") or "an unrecorded CPU"
        raise ReplicateError(f"{path}: run {record['key']} trained with bf16 autocast on {recorded!r}, and this CPU "
                             f"({device_name('cpu')}) has no native bf16: PyTorch would emulate it, many times "
                             "slower and with other float results, so it cannot reproduce the record; verify it on "
                             "a CPU with native bf16 (AVX-512 BF16 or AMX) like the record's")
    request = find_request(record, path)
    kept = Path(record.get("work_dir") or "") if keep else None
    if kept is not None:
        if not record.get("work_dir"):
            raise ReplicateError(f"{path}: the record names no run folder (work_dir) to keep the re-trained run in")
        if (kept / "checkpoint.pt").exists():
            raise ReplicateError(f"{path}: {kept} already holds a checkpoint, so the run would resume from it rather "
                                 "than train from scratch; its analyses can use it as it is (or move it away to verify)")
    if threads is None:
        threads = int((record.get("provenance") or {}).get("threads") or 1)
    code = code_version()  # before training: edits made meanwhile do not change what ran
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(dir=work_dir) as scratch:
            out = kept or Path(scratch) / request.key
            result = train(request.model, request.profile, out, request.train, data_root=data_root, device="cpu",
                           progress=progress)
            losses = loss_summary(out / "log.jsonl")
    finally:
        torch.set_num_threads(before)
    new = dict(result["metrics"] or {})
    stored = dict(record["metrics"])
    # the loss curves too: a run that reproduces its metrics by luck (a run that detects nothing) still differs here
    for term, summary in (record.get("loss_summary") or {}).items():
        for stat in ("first", "last", "min"):
            stored[f"{term}.{stat}"] = summary.get(stat)
            new[f"{term}.{stat}"] = (losses.get(term) or {}).get(stat)
    differences = {k: (stored.get(k), new.get(k)) for k in sorted(set(stored) | set(new))
                   if not _same(stored.get(k), new.get(k))}
    return Verification(path, record["key"], request, stored, new, differences,
                        recorded_on=str((record.get("provenance") or {}).get("device") or ""), here=device_name("cpu"),
                        threads=threads, code=code,
                        recorded_commit=str((record.get("provenance") or {}).get("commit") or ""))
