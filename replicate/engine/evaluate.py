"""Scoring a trained network on the val split under several test configs in one pass.

Both the end of training (:func:`replicate.engine.train.train`) and the later re-scoring of a finished
run (:func:`replicate.engine.rescore.evaluate_variants`) go through :func:`evaluate_tests`: every val
image goes through the network once (under the run's own mixed precision), each test config re-scores
the same raw head outputs (:meth:`replicate.models.detector.Detector.predict_variants`), and each set of
detections is written as a COCO results file and evaluated with pycocotools (boxes, and masks where the
detector predicts them: ``mask_AP``, ...). With several processes,
each predicts a contiguous shard of the val split and rank 0 gathers the shards in order.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..evaluation import evaluate, write_detections
from ..models.postprocess import TestConfig
from ..provenance import jsonable
from . import distributed as du
from .inference import EVAL_BATCH_SIZE, predict_variants


def evaluate_tests(net: torch.nn.Module, val_set, tests: Mapping[str, TestConfig | None], device: torch.device,
                   out_dir: str | Path, *, amp: str | None = None, num_workers: int = 0,
                   progress: bool = False) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """``(name -> {"test", "metrics", "detections"}, timings)`` for each named test config (``None``: the
    model's own); detections go to ``out_dir/<name>.json``. Rank 0 returns the evaluations, the other ranks
    ``{}``; ``timings`` (``inference_seconds``, ``inference_fps``) are the slowest rank's."""
    world = du.world_size()
    names, configs = list(tests), list(tests.values())
    shard = np.array_split(np.arange(len(val_set)), world)[du.rank()]
    results, timings = predict_variants(net, val_set, EVAL_BATCH_SIZE, device, configs, indices=shard.tolist(),
                                        num_workers=num_workers, amp=amp, progress=progress)
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, (results, timings["inference_seconds"]))
        results = [[r for part, _ in gathered for r in part[i]] for i in range(len(configs))]
        timings["inference_seconds"] = max(s for _, s in gathered)
        timings["inference_fps"] = len(val_set) / timings["inference_seconds"]
    if not du.is_main():
        return {}, timings
    own = unwrap_test(net)
    out = {}
    for name, test, dets in zip(names, configs, results):
        path = write_detections(Path(out_dir) / f"{name}.json", dets)
        out[name] = {"test": jsonable(test or own), "metrics": coco_metrics(val_set.coco, dets, str(path)),
                     "detections": str(path)}
    return out, timings


def coco_metrics(gt, dets: list[dict[str, Any]], source: str) -> dict[str, float]:
    """The box metrics of ``dets``; where they carry masks, also the mask metrics, named ``mask_<metric>``."""
    metrics = evaluate(gt, dets, dets_source=source)
    if dets and "segmentation" in dets[0]:
        metrics.update({f"mask_{k}": v for k, v in evaluate(gt, dets, "segm", dets_source=source).items()})
    return metrics


def unwrap_test(net: torch.nn.Module) -> TestConfig:
    """The model's own test config (through a DistributedDataParallel wrapper)."""
    return getattr(net, "module", net).cfg.test
