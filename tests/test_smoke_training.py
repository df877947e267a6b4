"""Every detector learns: a short CPU training through the engine on a few smoke images.

The run over-fits 8 smoke training images (used as the evaluation split too): a whole-pipeline check
(assignment, losses, decoding, coordinate mapping back to the original images, COCO evaluation)
that must give a falling loss and AP > 0. Generalisation is what the synthetic profile measures.
"""

import json
import multiprocessing
import shutil
import statistics
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest
import torch

from replicate.engine import SCHEDULES
from replicate.engine.train import train
from replicate.io import atomic_write_json, read_json
from replicate.models.zoo import MODELS

N_IMAGES = 8
SCHEDULE = replace(SCHEDULES["smoke"], iters=100, steps=(90,))  # the smoke book's 50 are too few to check learning
SEEDS = (0, 1)
# A cascade learns later: AlignDet's ADM trains on refined anchors at IoU >= 0.7, so it has few positives
# until its DPM regresses well. Its 3x3 ablation head (two 3x3 convs on the smoke width) had no detection
# above the 0.05 threshold after 100 iterations on either seed (losses 4.0 -> 2.7 and 4.1 -> 2.3), and AP
# 15.8 after 300 (seed 0).
ITERS = {"aligndet_3x3": 300}


@pytest.fixture(scope="module")
def tiny_root(smoke_root, tmp_path_factory):
    """The first 8 smoke training images with objects, as both the train and the val split."""
    root = tmp_path_factory.mktemp("tiny")
    coco = read_json(smoke_root / "annotations" / "train.json")
    with_objects = {a["image_id"] for a in coco["annotations"] if not a["iscrowd"]}
    images = [im for im in coco["images"] if im["id"] in with_objects][:N_IMAGES]
    ids = {im["id"] for im in images}
    subset = {**coco, "images": images, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}
    for split in ("train", "val"):
        atomic_write_json(root / "annotations" / f"{split}.json", subset)
        shutil.copytree(smoke_root / "images" / "train", root / "images" / split)
    shutil.copy(smoke_root / "dataset.json", root / "dataset.json")  # complete: nothing is regenerated
    return root


WORKERS = 2
"""Detectors trained at once, one thread each: two runs side by side train more images per second on the 2-core
machines than one run with two threads (``replicate bench threads``), and this test is CI's largest but one."""


def _learns(name: str, root: str, out: str) -> list[str]:
    """Train ``name`` on seed 0, else seed 1; ``[]`` if a run learned, else what each seed gave.

    100 iterations on 8 images are chaotic: float rounding (another summation order, another CPU) can tip a
    run of the assignment-by-loss detectors (MOD's APS decides positives from an untrained model's losses;
    the released-code variant's box branch can collapse to zero-size boxes) into giving no detection above
    the 0.05 score threshold. A detector learns if a run of seed 0, or else of seed 1, does; a detector
    that is broken fails both."""
    failures = []
    for seed in SEEDS:
        run = Path(out) / f"seed{seed}"
        iters = ITERS.get(name, SCHEDULE.iters)
        schedule = replace(SCHEDULE, seed=seed, iters=iters, steps=(iters - 10,))
        result = train(name, "smoke", run, schedule, data_root=root, progress=False)
        assert result["status"] == "finished"
        losses = [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]
        assert len(losses) == iters
        metrics = read_json(run / "metrics.json")
        assert metrics["timings"]["train_imgs_per_s"] > 0 and metrics["timings"]["inference_fps"] > 0
        assert metrics["provenance"]["config"]["model"]["name"] == name
        falls = statistics.median(losses[-20:]) < 0.9 * statistics.median(losses[:20])
        masks = metrics["metrics"].get("mask_AP50")  # a detector with a mask branch must learn its masks too
        if falls and metrics["metrics"]["AP50"] > 0 and (masks is None or masks > 0):
            return []
        failures.append(f"seed {seed}: loss {statistics.median(losses[:20]):.3f} -> "
                        f"{statistics.median(losses[-20:]):.3f}, AP50 {metrics['metrics']['AP50']}, mask AP50 {masks}")
    return failures


def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def learning(request, tiny_root, tmp_path_factory) -> Iterator[dict[str, Future]]:
    """The runs of every detector this session tests, :data:`WORKERS` at a time, the longest first."""
    names = {item.callspec.params["name"] for item in request.session.items
             if getattr(item, "originalname", "") == "test_detector_learns_on_smoke_images"}
    out = tmp_path_factory.mktemp("learning")
    pool = ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread)
    order = sorted(names, key=lambda n: -ITERS.get(n, SCHEDULE.iters))
    futures = {name: pool.submit(_learns, name, str(tiny_root), str(out / name)) for name in order}
    yield futures
    pool.shutdown(cancel_futures=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_detector_learns_on_smoke_images(name, learning):
    """Each detector's loss falls and it detects (and segments, with a mask branch) on its training images."""
    failures = learning[name].result()
    if failures:
        pytest.fail(f"{name} did not learn on any seed: " + "; ".join(failures))
