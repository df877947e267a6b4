"""Time COCO evaluation: pycocotools against faster-coco-eval on a COCO-sized result file (``replicate bench eval``).

The problem mimics COCO val2017 (5,000 images, 80 categories, about 7.3 objects per image, COCO's mix
of sizes) with a detector's output of 100 detections per image: jittered copies of the objects (the
true positives, scores rising with their IoU) and boxes scattered over the image (false positives),
500,000 detections in all. Both backends get the same validated results
(:func:`replicate.evaluation.coco_eval.evaluate` with ``backend=``); the time is that of the whole call
(reading the ground truth excepted) and the stats are compared number by number.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_json
from ..provenance import provenance


def make_problem(images: int = 5000, categories: int = 80, objects_per_image: float = 7.3,
                 dets_per_image: int = 100, seed: int = 0, size: tuple[int, int] = (480, 640)):
    """A COCO ground-truth dict and a result list of ``dets_per_image`` detections per image."""
    rng = np.random.default_rng(seed)
    h, w = size
    counts = rng.poisson(objects_per_image, images)
    anns, dets = [], []
    for image_id, n in enumerate(counts, start=1):
        side = np.exp(rng.uniform(np.log(8), np.log(400), (n, 2)))  # log-uniform sides: small, medium and large
        side = np.minimum(side, [w - 1, h - 1])
        xy = rng.uniform(0, 1, (n, 2)) * ([w, h] - side)
        boxes = np.concatenate([xy, side], axis=1)
        cats = rng.integers(1, categories + 1, n)
        anns += [{"id": len(anns) + i + 1, "image_id": image_id, "category_id": int(c), "bbox": b.tolist(),
                  "area": float(b[2] * b[3]), "iscrowd": 0} for i, (b, c) in enumerate(zip(boxes, cats))]
        tp = min(n * 3, dets_per_image)
        src = rng.integers(0, max(n, 1), tp) if n else np.zeros(0, int)
        noise = rng.normal(0, 0.1, (tp, 4)) * np.repeat(boxes[src][:, 2:], 2, axis=1) if n else np.zeros((0, 4))
        tp_boxes = boxes[src] + noise if n else np.zeros((0, 4))
        tp_boxes[:, 2:] = np.maximum(tp_boxes[:, 2:], 1)
        fp = dets_per_image - tp
        fp_side = np.exp(rng.uniform(np.log(4), np.log(300), (fp, 2)))
        fp_boxes = np.concatenate([rng.uniform(0, 1, (fp, 2)) * ([w, h] - np.minimum(fp_side, [w - 1, h - 1])),
                                   np.minimum(fp_side, [w - 1, h - 1])], axis=1)
        all_boxes = np.concatenate([tp_boxes, fp_boxes])
        all_cats = np.concatenate([cats[src] if n else np.zeros(0, int), rng.integers(1, categories + 1, fp)])
        scores = np.concatenate([rng.uniform(0.3, 1, tp) * np.exp(-np.abs(noise).sum(1) / 50), rng.uniform(0, 0.6, fp)])
        dets += [{"image_id": image_id, "category_id": int(c), "bbox": [round(v, 2) for v in b.tolist()],
                  "score": round(float(s), 5)} for b, c, s in zip(all_boxes, all_cats, scores)]
    gt = {"images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": w, "height": h} for i in range(1, images + 1)],
          "categories": [{"id": c, "name": f"class{c}"} for c in range(1, categories + 1)], "annotations": anns}
    return gt, dets


def bench_eval(images: int = 5000, dets_per_image: int = 100, seed: int = 0) -> dict[str, Any]:
    """Seconds of each backend on one problem of ``images`` images, their ratio and the largest stat difference."""
    from ..data.validate import load_coco
    from ..evaluation.coco_eval import BACKENDS, SUMMARY_KEYS, evaluate

    gt_dict, dets = make_problem(images=images, dets_per_image=dets_per_image, seed=seed)
    result: dict[str, Any] = {"benchmark": "eval", "images": images, "dets_per_image": dets_per_image,
                              "detections": len(dets), "objects": len(gt_dict["annotations"]), "seed": seed}
    stats = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gt.json"
        path.write_text(json.dumps(gt_dict))
        gt = load_coco(path)
        for backend in BACKENDS:
            start = time.perf_counter()
            stats[backend] = evaluate(gt, dets, backend=backend)
            result[f"{backend}_seconds"] = time.perf_counter() - start
    reference, other = BACKENDS
    result["speedup"] = result[f"{reference}_seconds"] / result[f"{other}_seconds"]
    result["AP"] = stats[reference]["AP"]
    result["max_stat_difference"] = max(abs(stats[reference][k] - stats[other][k]) for k in SUMMARY_KEYS)
    result["max_breakdown_difference"] = max(abs(stats[reference][k] - stats[other][k]) for k in stats[reference])
    return result


def format_result(result: dict[str, Any]) -> str:
    return (f"eval: {result['detections']:,} detections on {result['images']:,} images ({result['objects']:,} objects): "
            f"pycocotools {result['pycocotools_seconds']:.1f} s, faster-coco-eval {result['faster-coco-eval_seconds']:.1f} s "
            f"(x{result['speedup']:.1f}); AP {100 * result['AP']:.2f}; largest stat difference "
            f"{result['max_stat_difference']:.1e}, breakdown {result['max_breakdown_difference']:.1e}")


def write_result(result: dict[str, Any], out: Path | None = None) -> Path:
    config = {k: result[k] for k in ("benchmark", "images", "dets_per_image", "seed")}
    path = out or Path("results") / "bench" / "eval_cpu.json"
    return atomic_write_json(path, {**result, "provenance": provenance(config, device="cpu")}, indent=1)
