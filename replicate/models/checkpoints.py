"""Reading backbone weights from local files: torchvision, detectron2 and mmdetection formats.

Nothing is downloaded. Formats are recognised by their key names:
- torchvision / mmcls / mmdet ResNet: ``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``,
  ``layer1.0.downsample.0.weight`` (mmdetection detector checkpoints prefix them with ``backbone.``);
- detectron2: ``stem.conv1.weight``, ``stem.conv1.norm.*``, ``res2.0.conv1.weight``,
  ``res2.0.conv1.norm.*``, ``res2.0.shortcut.weight`` (``.pth`` or the ``.pkl`` of numpy arrays).
Missing or unexpected keys are a :class:`~replicate.errors.ReplicateError` listing them.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ReplicateError

_IGNORED_UNEXPECTED = re.compile(r"^fc\.")  # the ImageNet classifier
_REPO = Path(__file__).resolve().parents[2]


def resolve_weights(path: str | os.PathLike) -> Path:
    """A weights file named in a config: absolute, relative to the working directory, or else relative
    to the repository root (how the profiles name their pretrained backbones, so that a run's config and
    key do not depend on where the repository is checked out)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return _REPO / p


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from ``state_dict``/``model`` containers."""
    path = Path(path)
    if not path.is_file():
        raise ReplicateError(f"{path}: weights file not found (nothing is downloaded; give a local file)")
    try:
        if path.suffix == ".pkl":  # detectron2's model-zoo format: a pickle of numpy arrays
            with open(path, "rb") as fh:
                obj = pickle.load(fh, encoding="latin1")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise ReplicateError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ReplicateError(f"{path}: not a state dict (found {type(obj).__name__})")
    return {k: torch.as_tensor(np.asarray(v)) if not torch.is_tensor(v) else v for k, v in obj.items()}


def _from_detectron2(key: str) -> str:
    key = re.sub(r"^stem\.conv1\.norm\.", "bn1.", key)
    key = re.sub(r"^stem\.conv1\.", "conv1.", key)
    m = re.match(r"^res(\d)\.(\d+)\.(.*)$", key)
    if not m:
        return key
    stage, block, rest = int(m.group(1)) - 1, m.group(2), m.group(3)
    rest = re.sub(r"^conv(\d)\.norm\.", r"bn\1.", rest)
    rest = re.sub(r"^shortcut\.norm\.", "downsample.1.", rest)
    rest = re.sub(r"^shortcut\.", "downsample.0.", rest)
    return f"layer{stage}.{block}.{rest}"


def to_torchvision_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a backbone state dict of any supported format to torchvision's ResNet names."""
    if any(k.startswith("backbone.") for k in state):  # a whole mmdetection detector
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith(("stem.", "res2.")) for k in state):
        state = {_from_detectron2(k): v for k, v in state.items()}
    return state


def load_backbone_weights(body: nn.Module, path: str | os.PathLike) -> None:
    """Load a ResNet/ResNeXt body from ``path``; new modules (DCN offset convs) may stay uninitialised."""
    state = to_torchvision_names(read_state_dict(path))
    own = body.state_dict()
    unexpected = sorted(k for k in state if k not in own and not _IGNORED_UNEXPECTED.match(k)
                        and not k.endswith("num_batches_tracked"))
    missing = sorted(k for k in own if k not in state and "conv_offset" not in k and not k.endswith("num_batches_tracked"))
    mismatched = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
    if unexpected or missing or mismatched:
        show = lambda keys: ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")  # noqa: E731
        parts = [f"{name}: {show(keys)}" for name, keys in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched)) if keys]
        raise ReplicateError(f"{path}: weights do not fit the backbone; " + "; ".join(parts))
    body.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
