"""Cluster profiles: where and how SLURM jobs run, one YAML file per cluster.

``slurm/clusters/NAME.yaml`` holds the site-specific part of a submission (partition, account,
constraint, GPUs, CPUs, memory, time limit, array parallelism, signal delay, setup lines);
:func:`load_cluster` reads one by name (``--cluster NAME``) or path into a :class:`ClusterProfile`,
whose :meth:`ClusterProfile.submitit_parameters` are the keyword arguments of
``submitit.AutoExecutor.update_parameters``. See ``slurm/README.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ReplicateError

CLUSTERS_DIR = Path(__file__).resolve().parents[2] / "slurm" / "clusters"


@dataclass(frozen=True)
class ClusterProfile:
    """One cluster's submission settings (defaults: one CPU task for an hour)."""

    name: str
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    mem_gb: float | None = None
    timeout_min: int = 60
    array_parallelism: int = 256
    signal_delay_s: int = 120
    setup: tuple[str, ...] = field(default_factory=tuple)

    def submitit_parameters(self) -> dict[str, Any]:
        """Keyword arguments for ``submitit.AutoExecutor.update_parameters``."""
        params: dict[str, Any] = {
            "nodes": self.nodes,
            "gpus_per_node": self.gpus_per_node,  # 0 explicitly: callers may default to a GPU
            "tasks_per_node": self.tasks_per_node,
            "cpus_per_task": self.cpus_per_task,
            "timeout_min": self.timeout_min,
            "slurm_array_parallelism": self.array_parallelism,
            "slurm_signal_delay_s": self.signal_delay_s,
        }
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.constraint:
            params["slurm_constraint"] = self.constraint
        if self.qos:
            params["slurm_qos"] = self.qos
        if self.account:
            params["slurm_additional_parameters"] = {"account": self.account}
        if self.setup:
            params["slurm_setup"] = list(self.setup)
        return params


_FIELDS = {f.name: f for f in dataclasses.fields(ClusterProfile) if f.name != "name"}
_TYPES: dict[str, tuple[type, ...]] = {
    "partition": (str,), "account": (str,), "qos": (str,), "constraint": (str,),
    "nodes": (int,), "gpus_per_node": (int,), "tasks_per_node": (int,), "cpus_per_task": (int,),
    "mem_gb": (int, float), "timeout_min": (int,), "array_parallelism": (int,),
    "signal_delay_s": (int,), "setup": (list,),
}


def available_clusters() -> list[str]:
    return sorted(p.stem for p in CLUSTERS_DIR.glob("*.yaml"))


def load_cluster(name_or_path: str | Path) -> ClusterProfile:
    """The profile named ``slurm/clusters/NAME.yaml``, or the YAML file at a path.

    Raises :class:`ReplicateError` for an unknown name (listing the available ones), an unreadable
    or malformed file, unknown keys and values of the wrong type.
    """
    text = str(name_or_path)
    looks_like_path = isinstance(name_or_path, Path) or "/" in text or text.endswith((".yaml", ".yml"))
    path = Path(text) if looks_like_path else CLUSTERS_DIR / f"{text}.yaml"
    if not path.is_file():
        if looks_like_path:
            raise ReplicateError(f"{path}: no such cluster profile file")
        raise ReplicateError(f"unknown cluster {text!r}; available: {', '.join(available_clusters()) or 'none'}"
                             f" (profiles are {CLUSTERS_DIR}/NAME.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ReplicateError(f"{path}: cannot read cluster profile: {exc}") from None
    except yaml.YAMLError as exc:
        raise ReplicateError(f"{path}: malformed YAML: {exc}".replace("\n", " ")) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ReplicateError(f"{path}: a cluster profile must be a mapping of keys to values, "
                             f"got {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - set(_FIELDS))
    if unknown:
        raise ReplicateError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_FIELDS)}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if value is None:
            continue
        types = _TYPES[key]
        if isinstance(value, bool) or not isinstance(value, types):
            want = " or ".join(t.__name__ for t in types)
            raise ReplicateError(f"{path}: {key} must be {want}, got {value!r}")
        if key == "setup":
            if not all(isinstance(line, str) for line in value):
                raise ReplicateError(f"{path}: setup must be a list of shell lines (strings)")
            value = tuple(value)
        elif types[0] is int and value < (0 if key == "gpus_per_node" else 1):
            raise ReplicateError(f"{path}: {key} must be positive, got {value}")
        values[key] = value
    return ClusterProfile(name=path.stem, **values)
