"""Test-time variants of a trained model: one pass over the val split, every variant evaluated.

Inference-time ablations (RetinaNet-Conf Tables 4 and 5: which score ranks the candidates in NMS, the
fusion exponent alpha, the ``obj > 0.5`` filter) change only the :class:`TestConfig`, not the weights. A
run is therefore trained once (its name leaves the test config out, see
:func:`replicate.models.detector.weights_fields`); :func:`evaluate_variants` loads its final checkpoint,
sends each val image through the network once and re-scores the same raw head outputs under every test
config (:func:`replicate.engine.inference.predict_variants`), then evaluates each set of detections.
Re-scoring in memory keeps it exact without storing the dense outputs (on COCO these are ~100k anchors
x 80 classes per image).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ..data.profiles import build_dataset, data_config, ensure_data
from ..errors import ReplicateError
from ..evaluation import evaluate, write_detections
from ..models.detector import DetectorConfig, build_detector, weights_fields
from ..models.postprocess import TestConfig
from ..provenance import config_hash, jsonable
from .checkpoint import CHECKPOINT_NAME, load_checkpoint
from .inference import EVAL_BATCH_SIZE, predict_variants
from .train import resolve_device


def test_key(test: TestConfig) -> str:
    """The 12-hex-digit name of a test config (the key of a run record's ``evaluations``)."""
    return config_hash(jsonable(test))


test_key.__test__ = False  # not a pytest test


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


def evaluate_variants(run_dir: str | Path, model_cfg: DetectorConfig, profile: str, tests: Sequence[TestConfig], *,
                      data_root: str | Path | None = None, scale: str | None = None,
                      device: str | torch.device | None = None, progress: bool = False) -> dict[str, dict[str, Any]]:
    """``test_key -> {"test", "metrics", "detections", "inference"}`` for each config of ``tests``.

    ``scale``: the run's ``TrainConfig.scale`` (test images are read at it). Detections are written to
    ``run_dir/detections-<test_key>.json`` (COCO results format).
    """
    if not tests:
        return {}
    dev = resolve_device(device)
    net = load_trained(run_dir, model_cfg).to(dev)
    data = data_config(profile, data_root)
    if scale is not None:
        data = data.with_scale(scale)
    ensure_data(data, progress=progress)
    val_set = build_dataset(data, "val", train=False)
    results, timings = predict_variants(net, val_set, EVAL_BATCH_SIZE, dev, list(tests), progress=progress)
    out = {}
    for test, dets in zip(tests, results):
        key = test_key(test)
        path = write_detections(Path(run_dir) / f"detections-{key}.json", dets)
        out[key] = {"test": jsonable(test), "metrics": evaluate(val_set.coco, dets, dets_source=str(path)),
                    "detections": str(path), "inference": timings}
    return out
