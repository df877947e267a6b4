"""Process-group setup from torchrun's or SLURM's environment, and small rank helpers.

* torchrun (``python -m torch.distributed.run``) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR`` and ``MASTER_PORT``.
* A SLURM job step (``srun``, one task per GPU) sets ``SLURM_PROCID``, ``SLURM_NTASKS`` and
  ``SLURM_LOCALID``; the master is the first host of ``SLURM_JOB_NODELIST`` (expanded by
  ``scontrol show hostnames`` when available, else ``MASTER_ADDR`` must be set) and the port,
  unless ``MASTER_PORT`` is set, is ``15000 + SLURM_JOB_ID % 20000`` so concurrent jobs differ.

* A submitit job of several tasks (``tasks_per_node`` > 1, SLURM or local executor): :func:`job_environ`
  derives the same variables from submitit's ``JobEnvironment`` (master: the job's first host).

Backend: NCCL when CUDA is available, gloo otherwise. Without either environment, or with a world
size of 1, nothing is initialised and the helpers answer for a single process.
"""

from __future__ import annotations

import os
import subprocess
import zlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ReplicateError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str | None
    master_port: str | None


def _first_slurm_host(nodelist: str) -> str | None:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    hosts = out.stdout.split() if out.returncode == 0 else []
    return hosts[0] if hosts else None


def detect_env(environ: dict[str, str] | None = None) -> DistEnv:
    """The distributed layout described by ``environ`` (default ``os.environ``)."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env:
        return DistEnv(int(env.get("RANK", 0)), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                       env.get("MASTER_ADDR"), env.get("MASTER_PORT"))
    if "SLURM_NTASKS" in env and "SLURM_PROCID" in env:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        addr = (_first_slurm_host(nodelist) if nodelist else None) or env.get("MASTER_ADDR")
        port = env.get("MASTER_PORT") or str(15000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
        return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
                       addr, port)
    return DistEnv(0, 1, 0, None, None)


def job_environ() -> dict[str, str] | None:
    """torch.distributed's ``env://`` variables for this submitit job's task, ``None`` for a one-task job.

    ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` are the task's, ``MASTER_ADDR`` the job's first host and
    ``MASTER_PORT`` (unless set) ``15000 + job id % 20000`` as for a plain SLURM step (a local job's id is
    hashed), so that concurrent jobs on one node do not collide.
    """
    import submitit

    job = submitit.JobEnvironment()
    if job.num_tasks <= 1:
        return None
    slurm_id = os.environ.get("SLURM_JOB_ID", "")
    number = int(slurm_id) if slurm_id.isdigit() else zlib.crc32(str(job.job_id).encode())
    return {"RANK": str(job.global_rank), "WORLD_SIZE": str(job.num_tasks), "LOCAL_RANK": str(job.local_rank),
            "MASTER_ADDR": job.hostnames[0], "MASTER_PORT": os.environ.get("MASTER_PORT") or str(15000 + number % 20000)}


def broadcast(value: object) -> object:
    """Rank 0's ``value`` on every rank (picklable objects; the value itself for a single process)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def init_distributed(environ: dict[str, str] | None = None) -> DistEnv:
    """Join the process group described by the environment (a no-op for a single process).

    On CUDA the process uses device ``LOCAL_RANK``. Returns the layout.
    """
    layout = detect_env(environ)
    if layout.world_size <= 1 or (dist.is_available() and dist.is_initialized()):
        return layout
    if not layout.master_addr or not layout.master_port:
        raise ReplicateError(
            f"distributed run of {layout.world_size} processes needs MASTER_ADDR and MASTER_PORT "
            f"(got {layout.master_addr!r}, {layout.master_port!r})"
        )
    os.environ.update(MASTER_ADDR=layout.master_addr, MASTER_PORT=str(layout.master_port))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(layout.local_rank)
    dist.init_process_group(backend, rank=layout.rank, world_size=layout.world_size)
    return layout


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0))) if is_distributed() else 0
