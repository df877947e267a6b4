"""Training checkpoints: one file ``OUT/checkpoint.pt``, replaced atomically at every save.

A checkpoint holds the model and optimiser (and fp16 grad-scaler) states, the number of completed
iterations, the random states of Python, numpy and torch (CPU and every CUDA device), the
configuration and its hash. The learning rate needs no state (:func:`replicate.engine.schedule.lr_at`)
and the data order none either (:mod:`replicate.engine.sampler`): both follow from the iteration.
Files are read with ``torch.load(weights_only=True)``, so the random states are stored as plain
lists and tensors.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ReplicateError
from ..io import atomic_write_bytes

CHECKPOINT_NAME = "checkpoint.pt"


def rng_states() -> dict[str, Any]:
    version, mt_state, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    return {
        "python": [version, list(mt_state), gauss],
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    version, mt_state, gauss = states["python"]
    random.setstate((version, tuple(mt_state), gauss))
    n = states["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "has_gauss": n["has_gauss"], "gauss": n["gauss"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]}})
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_checkpoint(path: str | os.PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    iteration: int, config: dict[str, Any], config_hash: str,
                    scaler: torch.amp.GradScaler | None = None) -> Path:
    """Write the checkpoint to a temporary file beside ``path`` and rename it over ``path``."""
    state = {
        "iteration": iteration,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_states(),
        "config": config,
        "config_hash": config_hash,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, *, expected_hash: str | None = None) -> dict[str, Any]:
    """Read a checkpoint onto the CPU; with ``expected_hash``, refuse one of another configuration."""
    path = Path(path)
    if not path.is_file():
        raise ReplicateError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: torch raises several types
        raise ReplicateError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None
    if expected_hash is not None and state.get("config_hash") != expected_hash:
        raise ReplicateError(
            f"{path}: checkpoint of another configuration (hash {state.get('config_hash')}, this run "
            f"{expected_hash}); resume with the same model, profile and schedule, or choose another --out"
        )
    return state


def restore(state: dict[str, Any], *, model: nn.Module, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler | None = None) -> int:
    """Load a checkpoint's states into the training objects; returns its iteration."""
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    set_rng_states(state["rng"])
    return int(state["iteration"])
