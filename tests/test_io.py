"""Atomic writes: the whole file or the old one, with the mode a plain open gives, and no temporary left."""

import os
import stat

import pytest

from replicate.io import atomic_write_json, read_json


def test_atomic_write_gives_the_umask_mode_and_keeps_a_replaced_files_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_json(tmp_path / "sub" / "r.json", {"a": 1})
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600: teammates read the records
        path.chmod(0o640)
        atomic_write_json(path, {"a": 2})
        assert stat.S_IMODE(path.stat().st_mode) == 0o640 and read_json(path) == {"a": 2}
    finally:
        os.umask(old)
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]


def test_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = atomic_write_json(tmp_path / "r.json", {"a": 1})

    def interrupted(src, dst):
        raise KeyboardInterrupt  # stopped between writing the temporary file and the rename

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_json(path, {"a": 2})
    assert read_json(path) == {"a": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
