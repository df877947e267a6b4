"""Small file helpers: atomic writes and JSON reading with errors that name the file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import ReplicateError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename. The file gets
    the mode a plain ``open`` would give it (a replaced file's own, else 0666 less the umask), not the
    temporary file's 0600: records on a shared cluster file system stay readable by the team."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def dump_json(obj: Any, *, indent: int | None = None) -> str:
    """Deterministic JSON text (key order as given, no NaN)."""
    return json.dumps(obj, indent=indent, allow_nan=False, separators=(",", ":") if indent is None else None)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = None) -> Path:
    return atomic_write_text(path, dump_json(obj, indent=indent) + "\n")


def read_json(path: str | os.PathLike, *, what: str = "JSON file") -> Any:
    """Read a JSON file; a missing file or malformed JSON raises :class:`ReplicateError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ReplicateError(f"{path}: {what} not found")
    try:
        with open(path, "rb") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise ReplicateError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise ReplicateError(f"{path}: not UTF-8 text ({exc.reason})") from None
