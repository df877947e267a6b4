"""The results store: one small JSON record per finished run, named by the run's configuration.

A run is a (model config, training config, data profile, seed); :func:`run_key` names it by the hash of
exactly what determines its result, so that the same run asked for by two tables is trained once and a
changed configuration is a new run. Records live at ``ROOT/<profile>/<key>.json`` (``results/`` by
default: the book's ``results/proxy/`` and its dial profiles are committed with the repository,
``results/smoke/`` is not). A record
holds the run's metrics, a summary of its loss curves, timings and provenance; checkpoints, logs and
detections stay in the run's work folder (``work/runs/<profile>/<key>/``), which the record names.

Record fields: ``key``, ``profile``, ``seed``, ``model`` (preset name), ``config`` (``model`` and
``train``, as JSON), ``metrics`` (COCO metrics as fractions, under the test config ``test`` the run was
trained with), ``evaluations`` (test-config key -> ``test`` and ``metrics``: every test-time variant the
trained model was evaluated under, see :mod:`replicate.engine.evaluate`), ``loss_summary`` (per loss term:
``first``, ``last``, ``min``, ``curve``), ``timings``, ``provenance`` (that of ``metrics.json`` plus
``hostname``, ``started``, ``finished``, ``command``, ``job_id`` and ``attempts``: per attempt its start,
commit, checkout state and host, since a run resumed from a checkpoint trained under each attempt's code)
and ``work_dir``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .. import profiles
from ..engine.config import TrainConfig, run_identity
from ..errors import ReplicateError
from ..io import atomic_write_json, read_json
from ..models.detector import DetectorConfig, weights_fields
from ..models.postprocess import TestConfig
from ..provenance import config_hash, jsonable

Record = dict[str, Any]
RECORD_FIELDS = ("key", "profile", "seed", "model", "config", "metrics", "test", "evaluations", "loss_summary",
                 "timings", "provenance", "work_dir")


def run_key(model_cfg: DetectorConfig, train_cfg: TrainConfig, profile: str, seed: int) -> str:
    """The 12-hex-digit name of a run: the hash of its model config without the test config (with the
    head's type; :func:`~replicate.models.detector.weights_fields`), its training config without the
    fields that do not change results (``num_workers``, ``checkpoint_every``, ``eval_at_end``; the seed
    is ``seed``), its data profile and its seed. Test-time variants of one trained model share its key
    and are kept in its record's ``evaluations``."""
    return config_hash(run_identity(weights_fields(model_cfg), dataclasses.replace(train_cfg, seed=seed), profile))


LATER_TEST_FIELDS = {"boxes": "final", "score_voting": None}
"""Test config fields added after records existed, left out of a test config's name at these values, so
that the evaluations made before them keep their keys (as :data:`replicate.engine.config.LATER_FIELDS`)."""


def without_later_test_fields(test: dict[str, Any]) -> dict[str, Any]:
    """A test config as JSON without the :data:`LATER_TEST_FIELDS` that hold their earlier values."""
    return {k: v for k, v in test.items() if k not in LATER_TEST_FIELDS or v != LATER_TEST_FIELDS[k]}


def test_key(test: TestConfig) -> str:
    """The 12-hex-digit name of a test config: the key of a run record's ``evaluations``."""
    return config_hash(without_later_test_fields(jsonable(test)))


test_key.__test__ = False  # not a pytest test


class ResultsStore:
    """Run records under ``root``: ``root/<profile>/<key>.json``, written atomically."""

    def __init__(self, root: str | Path = "results") -> None:
        self.root = Path(root)

    def path(self, profile: str, key: str) -> Path:
        return self.root / profile / f"{key}.json"

    def get(self, profile: str, key: str) -> Record | None:
        """The record of run ``key``, or ``None`` if it has none; a malformed file is an error naming it."""
        path = self.path(profile, key)
        if not path.is_file():
            return None
        return _checked(read_json(path, what="run record"), path)

    def finished(self, profile: str, key: str) -> bool:
        return self.get(profile, key) is not None

    def put(self, record: Record) -> Path:
        """Write ``record`` (atomically) where :meth:`get` finds it; returns the file."""
        missing = [f for f in RECORD_FIELDS if f not in record]
        if missing:
            raise ReplicateError(f"run record {record.get('key', '?')!r} lacks fields {missing}")
        return atomic_write_json(self.path(record["profile"], record["key"]), jsonable(record), indent=1)

    def records(self, profile: str | None = None) -> list[Record]:
        """Every record (of one profile, or of every data profile), ordered by profile and key.

        Only the profiles' folders are read: ``results/`` also holds other results (``bench/``)."""
        folders = [self.root / p for p in ([profile] if profile else sorted(profiles.NAMES))]
        return [_checked(read_json(path, what="run record"), path)
                for folder in folders for path in sorted(folder.glob("*.json"))]


def _checked(record: Any, path: Path) -> Record:
    if not isinstance(record, dict):
        raise ReplicateError(f"{path}: a run record must be a JSON object, got {type(record).__name__}")
    missing = [f for f in RECORD_FIELDS if f not in record]
    if missing:
        raise ReplicateError(f"{path}: not a run record (missing fields {missing})")
    if record["key"] != path.stem:
        raise ReplicateError(f"{path}: record of run {record['key']!r} stored under another run's name")
    return record
