"""Where a result came from: code version, library versions, device and the exact configuration.

``provenance(config)`` is stored with every metrics file; ``config_hash(config)`` (the first 12 hex
digits of the SHA-256 of the canonical JSON of a configuration) names a configuration compactly and
guards resumption against a changed configuration.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from . import __version__

_PACKAGES = ("torch", "torchvision", "numpy", "pycocotools")
_REPO = Path(__file__).resolve().parent.parent


def repo_relative(path: str | os.PathLike) -> Path:
    """``path`` relative to the repository when it lies inside it (how pages show a results path, without the
    machine's absolute folders), else as given."""
    try:
        return Path(path).resolve().relative_to(_REPO)
    except ValueError:
        return Path(path)


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values: dataclasses -> dicts, tuples -> lists, paths -> strings, and
    non-finite floats -> the strings ``"inf"``, ``"-inf"``, ``"nan"`` (JSON has no infinity)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def config_hash(config: Any) -> str:
    """First 12 hex digits of the SHA-256 of ``config``'s canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(jsonable(config), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_version() -> dict[str, Any]:
    """``commit`` (``git rev-parse HEAD`` of the package's checkout, ``"unknown"`` outside one) and
    ``dirty`` (uncommitted changes to tracked files)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": "unknown", "dirty": False}
    return {"commit": commit, "dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["replicate"] = __version__
    return out


def device_name(device: torch.device | str | None = None) -> str:
    """The CUDA device's name, or the CPU's: its model with the instruction set of PyTorch's CPU kernels, whether
    it computes bf16 natively, and its family and model numbers, e.g. ``AMD EPYC (AVX512, BF16; family 25,
    model 17)``. A virtual machine's model name alone ("AMD EPYC") covers CPUs from AVX2-only to AVX-512 BF16,
    on which the same run gives other float results; the rest tells them apart."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine()
    isa = [torch.backends.cpu.get_cpu_capability()] + (["BF16"] if _native_bf16(info) else [])
    where = f"; family {info['cpu family']}, model {info['model']}" if {"cpu family", "model"} <= set(info) else ""
    return f"{name} ({', '.join(isa)}{where})"


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bf16 in hardware (AVX-512 BF16 or AMX); elsewhere PyTorch emulates bf16
    autocast, many times slower than float32 (see the calibration page's precision section)."""
    return _native_bf16(_cpuinfo())


def _native_bf16(cpuinfo: dict[str, str]) -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & set(cpuinfo.get("flags", "").split()))


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def provenance(config: Any, *, device: torch.device | str | None = None, world_size: int = 1) -> dict[str, Any]:
    """Code version, library versions, device, world size, intra-op threads (float reductions, hence a CPU run's
    exact numbers, depend on them), and ``config`` with its hash."""
    return {
        **code_version(),
        "versions": versions(),
        "device": device_name(device),
        "world_size": world_size,
        "threads": torch.get_num_threads(),
        "argv": sys.argv,
        "config_hash": config_hash(config),
        "config": jsonable(config),
    }
