"""Test-time variants of a trained model: one pass over the val split, every variant evaluated.

Inference-time ablations (RetinaNet-Conf Tables 4 and 5: which score ranks the candidates in NMS, the
fusion exponent alpha, the ``obj > 0.5`` filter) change only the :class:`TestConfig`, not the weights. A
run is therefore trained once (its name leaves the test config out, see
:func:`replicate.models.detector.weights_fields`). The test configs a run is asked for are scored at the
end of its training; :func:`evaluate_variants` scores the ones asked for later, from the final
checkpoint, through the same one-pass :func:`replicate.engine.evaluate.evaluate_tests`.
Re-scoring in memory keeps it exact without storing the dense outputs (on COCO these are ~100k anchors
x 80 classes per image).
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Mapping
from typing import Any

import torch

from ..data.profiles import build_dataset, data_config, ensure_data
from ..errors import ReplicateError
from ..models.detector import DetectorConfig, build_detector, weights_fields
from ..models.postprocess import TestConfig
from ..provenance import config_hash
from .checkpoint import CHECKPOINT_NAME, load_checkpoint
from .evaluate import evaluate_tests
from .train import resolve_device


def load_trained(run_dir: str | Path, model_cfg: DetectorConfig) -> torch.nn.Module:
    """The model of ``model_cfg`` with the weights of the finished run in ``run_dir``.

    The checkpoint must be the final one of a model with the same weights config (test config aside);
    anything else is an error naming the file.
    """
    path = Path(run_dir) / CHECKPOINT_NAME
    state = load_checkpoint(path)
    config = state.get("config") or {}
    if config_hash(config.get("model")) != config_hash(weights_fields(model_cfg)):
        raise ReplicateError(f"{path}: checkpoint of another model than {model_cfg.name!r} "
                             "(its weights config differs)")
    iters = (config.get("train") or {}).get("iters")
    if iters is None or int(state["iteration"]) < int(iters):
        raise ReplicateError(f"{path}: training is not finished (iteration {state['iteration']} of {iters})")
    net = build_detector(model_cfg)
    net.load_state_dict(state["model"])
    return net


def evaluate_variants(run_dir: str | Path, model_cfg: DetectorConfig, profile: str, tests: Mapping[str, TestConfig], *,
                      data_root: str | Path | None = None, scale: str | None = None,
                      device: str | torch.device | None = None, progress: bool = False) -> dict[str, dict[str, Any]]:
    """``name -> {"test", "metrics", "detections", "inference"}`` for each named config of ``tests``, from the
    finished run in ``run_dir`` (evaluated as at the end of its training: the same mixed precision).

    ``scale``: the run's ``TrainConfig.scale`` (test images are read at it). Detections are written to
    ``run_dir/detections-<name>.json`` (COCO results format).
    """
    if not tests:
        return {}
    dev = resolve_device(device)
    net = load_trained(run_dir, model_cfg).to(dev)
    amp = (load_checkpoint(Path(run_dir) / CHECKPOINT_NAME).get("config") or {}).get("train", {}).get("amp")
    data = data_config(profile, data_root)
    if scale is not None:
        data = data.with_scale(scale)
    ensure_data(data, progress=progress)
    val_set = build_dataset(data, "val", train=False)
    scored, timings = evaluate_tests(net, val_set, {f"detections-{name}": t for name, t in tests.items()}, dev,
                                     run_dir, amp=amp, progress=progress)
    return {name: {**scored[f"detections-{name}"], "inference": timings} for name in tests}
