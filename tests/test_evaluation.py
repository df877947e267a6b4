"""COCO evaluation: hand-computed AP values, pycocotools as an oracle, conversion, and bad input.

Ground truth is a small COCO dict written to ``tmp_path`` with non-contiguous category ids 3 and 7.
pycocotools computes precision as ``tp / (tp + fp + eps)``, so "1.0" is compared with ``approx``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from replicate.data.validate import load_coco
from replicate.errors import EvaluationError
from replicate.evaluation import (
    IOU_BREAKDOWN,
    SUMMARY_KEYS,
    evaluate,
    evaluate_files,
    format_summary,
    to_coco_results,
    write_detections,
)

CATS = (3, 7)
AREAS = {"": "all", "_s": "small", "_m": "medium", "_l": "large"}
BREAKDOWN_KEYS = [f"AP{t}{suffix}" for t in IOU_BREAKDOWN for suffix in AREAS]

# Most hand-built files use one of the two categories; load_coco's warning about that is expected.
pytestmark = pytest.mark.filterwarnings("ignore:.*without any annotation:UserWarning")


# --- building ground truth and detections ----------------------------------------------------


def gt_ann(ann_id: int, image_id: int, cat: int, box: list[float]) -> dict:
    x, y, w, h = box
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": list(box), "area": w * h,
            "iscrowd": 0, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}


def crowd_ann(ann_id: int, image_id: int, cat: int, box: list[int], size: tuple[int, int]) -> dict:
    """An iscrowd=1 region with a compressed-RLE segmentation, as in COCO."""
    x, y, w, h = box
    mask = np.zeros(size, dtype=np.uint8)
    mask[y:y + h, x:x + w] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": list(box), "area": w * h,
            "iscrowd": 1, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}}


def write_gt(tmp_path: Path, annotations: list[dict], images: dict[int, tuple[int, int]] | None = None) -> Path:
    """A COCO file with ``images`` {id: (width, height)} (default: image 1, 200x200)."""
    images = images or {1: (200, 200)}
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": w, "height": h} for i, (w, h) in images.items()],
        "categories": [{"id": c, "name": f"class{c}"} for c in CATS],
        "annotations": annotations,
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return path


def det(image_id: int, cat: int, box: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": cat, "bbox": list(box), "score": score}


@pytest.fixture
def two_class_gt(tmp_path: Path) -> Path:
    """Small, medium and large objects of both categories over two images."""
    anns = [
        gt_ann(1, 1, 3, [10, 10, 20, 20]),    # small (400)
        gt_ann(2, 1, 7, [50, 50, 60, 60]),    # medium (3600)
        gt_ann(3, 1, 3, [30, 100, 150, 90]),  # large (13500)
        gt_ann(4, 2, 7, [5, 5, 12, 25]),      # small (300)
        gt_ann(5, 2, 3, [40, 20, 50, 40]),    # medium (2000)
        gt_ann(6, 2, 7, [20, 70, 110, 110]),  # large (12100)
    ]
    return write_gt(tmp_path, anns, {1: (200, 200), 2: (160, 200)})


def gt_as_detections(path: Path, iou_type: str) -> list[dict]:
    anns = json.loads(path.read_text())["annotations"]
    key = "bbox" if iou_type == "bbox" else "segmentation"
    return [{"image_id": a["image_id"], "category_id": a["category_id"], key: a[key], "score": 1.0} for a in anns]


def silent(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


# --- hand-computed cases ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("det_box", "iou"),
    [
        ([0, 0, 10, 6], 0.60),  # intersection 60, union 100
        ([0, 0, 8, 8], 0.64),   # 64 / 100
        ([0, 0, 10, 9], 0.90),  # 90 / 100
        ([0, 0, 10, 4], 0.40),  # 40 / 100: below every threshold, a false positive
    ],
)
def test_single_detection_ap_counts_thresholds_reached(tmp_path, det_box, iou):
    gt = write_gt(tmp_path, [gt_ann(1, 1, 3, [0, 0, 10, 10])])
    metrics = evaluate(gt, [det(1, 3, det_box, 0.9)])
    # COCO matches when IoU >= threshold; one GT, one detection: AP is 1 at a matched threshold, 0 otherwise.
    reached = sum(1 for t in np.arange(50, 100, 5) if iou * 100 >= t)
    assert metrics["AP"] == pytest.approx(reached / 10)
    assert metrics["APs"] == pytest.approx(reached / 10)  # the GT (area 100) is small
    assert metrics["APm"] == -1.0 and metrics["APl"] == -1.0  # no medium/large GT: undefined
    assert metrics["AP50"] == pytest.approx(float(iou >= 0.5))
    assert metrics["AP75"] == pytest.approx(float(iou >= 0.75))
    for t in IOU_BREAKDOWN:
        assert metrics[f"AP{t}"] == pytest.approx(float(iou * 100 >= t)), t
        assert metrics[f"AP{t}_s"] == pytest.approx(float(iou * 100 >= t)), t
        assert metrics[f"AP{t}_m"] == -1.0 and metrics[f"AP{t}_l"] == -1.0


@pytest.mark.parametrize(
    ("n_gt", "ranking", "expected_ap"),
    [
        # FP, TP, TP: precision 0, 1/2, 2/3 at recall 0, 1/2, 1; interpolation (max precision at
        # recall >= r) gives 2/3 at all 101 recall points.
        (2, "FTT", 2 / 3),
        # FP, TP with one GT missed: precision 1/2 up to recall 1/2 (recall points 0.00..0.50, 51 of
        # them), then 0: 51 * 0.5 / 101.
        (2, "FT", 51 * 0.5 / 101),
        # TP, FP, TP over 3 GTs: precision 1 for recall <= 1/3 (0.00..0.33, 34 points), 2/3 up to
        # recall 2/3 (0.34..0.66, 33 points), 0 beyond: (34 + 33 * 2/3) / 101 = 56 / 101.
        (3, "TFT", 56 / 101),
    ],
)
def test_false_positive_ranking_gives_101_point_interpolated_ap(tmp_path, n_gt, ranking, expected_ap):
    gt_boxes = [[50 * i, 0, 40, 40] for i in range(n_gt)]
    gt = write_gt(tmp_path, [gt_ann(i + 1, 1, 3, b) for i, b in enumerate(gt_boxes)])
    unmatched = iter(gt_boxes)
    dets = [
        det(1, 3, next(unmatched) if kind == "T" else [150, 150, 40, 40], 0.9 - 0.1 * rank)
        for rank, kind in enumerate(ranking)
    ]
    metrics = evaluate(gt, dets)
    # Exact boxes, so the IoU is 1 or 0 and every threshold gives the same AP.
    assert metrics["AP"] == pytest.approx(expected_ap)
    assert metrics["AP50"] == pytest.approx(expected_ap)
    assert metrics["AP90_m"] == pytest.approx(expected_ap)


def test_detection_on_crowd_region_is_ignored_not_false_positive(tmp_path):
    annotations = [gt_ann(1, 1, 3, [0, 0, 40, 40]), crowd_ann(2, 1, 3, [100, 100, 60, 60], (200, 200))]
    dets = [det(1, 3, [110, 110, 30, 30], 0.9), det(1, 3, [0, 0, 40, 40], 0.8)]
    assert evaluate(write_gt(tmp_path, annotations), dets)["AP"] == pytest.approx(1.0)
    # Control: without the crowd region the same top-ranked detection is a false positive,
    # precision 1/2 at recall 1 -> AP 0.5.
    assert evaluate(write_gt(tmp_path, annotations[:1]), dets)["AP"] == pytest.approx(0.5)


def test_per_size_keys_use_the_gt_area_ranges(tmp_path):
    small, large = [0, 0, 10, 10], [50, 50, 120, 120]  # areas 100 (< 32^2) and 14400 (> 96^2)
    gt = write_gt(tmp_path, [gt_ann(1, 1, 7, small), gt_ann(2, 1, 7, large)])
    metrics = evaluate(gt, [det(1, 7, large, 0.9), det(1, 7, [0, 0, 8, 8], 0.8)])  # IoU 1 and 0.64
    assert metrics["APl"] == pytest.approx(1.0)
    assert metrics["APs"] == pytest.approx(0.3)  # matched at 0.50, 0.55, 0.60
    assert metrics["ARs"] == pytest.approx(0.3) and metrics["ARl"] == pytest.approx(1.0)
    assert metrics["APm"] == -1.0 and metrics["ARm"] == -1.0
    assert metrics["AP60_s"] == pytest.approx(1.0) and metrics["AP70_s"] == pytest.approx(0.0)
    assert metrics["AP90_l"] == pytest.approx(1.0) and metrics["AP90_m"] == -1.0


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_ground_truth_as_detections_scores_one_everywhere(two_class_gt, iou_type):
    dets = gt_as_detections(two_class_gt, iou_type)
    before = copy.deepcopy(dets)
    metrics = evaluate(two_class_gt, dets, iou_type)
    assert list(metrics) == list(SUMMARY_KEYS) + [k for k in BREAKDOWN_KEYS if k not in SUMMARY_KEYS]
    assert all(isinstance(v, float) for v in metrics.values())
    # AR1 keeps one detection per image and category: 2 of 3 GTs of each category are reachable.
    assert metrics.pop("AR1") == pytest.approx(2 / 3)
    for key, value in metrics.items():
        assert value == pytest.approx(1.0), key
    assert dets == before  # the caller's list is not modified by pycocotools' loadRes


def test_segm_accepts_compressed_rle(two_class_gt):
    """Masks as pycocotools encodes them (compressed RLE, counts as str after JSON), mask AP 1."""
    dets = []
    for d in gt_as_detections(two_class_gt, "segm"):
        rle = mask_utils.merge(mask_utils.frPyObjects(d["segmentation"], 200, 200 if d["image_id"] == 1 else 160))
        dets.append({**d, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    assert evaluate(two_class_gt, dets, "segm")["AP"] == pytest.approx(1.0)


# --- pycocotools as the oracle -----------------------------------------------------------------


def noisy_detections(gt_path: Path, seed: int = 0) -> list[dict]:
    """Jittered GT boxes (some with the wrong class), plus random false positives."""
    rng = np.random.default_rng(seed)
    anns = json.loads(gt_path.read_text())["annotations"]
    boxes = np.array([a["bbox"] for a in anns], dtype=float)
    jitter = boxes + rng.normal(0, 0.12, boxes.shape) * boxes[:, [2, 3, 2, 3]]
    jitter[:, 2:] = np.maximum(jitter[:, 2:], 1)
    dets = [det(a["image_id"], int(rng.choice(CATS, p=[0.2, 0.8] if a["category_id"] == 7 else [0.8, 0.2])),
                b.tolist(), float(rng.uniform(0.2, 1))) for a, b in zip(anns, jitter)]
    corners = rng.uniform(0, 120, (8, 2))
    sizes = rng.uniform(5, 80, (8, 2))
    dets += [det(int(rng.choice([1, 2])), int(rng.choice(CATS)), [*c, *s], float(rng.uniform(0, 1)))
             for c, s in zip(corners.tolist(), sizes.tolist())]
    return dets


def oracle_stats(gt_path: Path, dets: list[dict], iou_thrs: np.ndarray | None = None) -> np.ndarray:
    """pycocotools' own COCOeval.stats, optionally evaluated at the given IoU thresholds only."""
    gt = silent(COCO, str(gt_path))
    cocoeval = COCOeval(gt, silent(gt.loadRes, copy.deepcopy(dets)), "bbox")
    if iou_thrs is not None:
        cocoeval.params.iouThrs = iou_thrs
    for step in (cocoeval.evaluate, cocoeval.accumulate, cocoeval.summarize):
        silent(step)
    return cocoeval.stats


def test_summary_and_breakdown_agree_with_pycocotools(tmp_path, two_class_gt):
    annotations = json.loads(two_class_gt.read_text())["annotations"]
    annotations.append(crowd_ann(7, 2, 3, [100, 10, 50, 50], (200, 160)))
    gt_path = write_gt(tmp_path, annotations, {1: (200, 200), 2: (160, 200)})
    dets = noisy_detections(gt_path)
    metrics = evaluate(gt_path, dets)

    stats = oracle_stats(gt_path, dets)
    assert [metrics[k] for k in SUMMARY_KEYS] == stats.tolist()
    assert 0 < metrics["AP"] < metrics["AP50"] < 1  # a non-trivial case
    # With a single IoU threshold t, pycocotools' stats[0] and stats[3:6] are _summarize(1, iouThr=t)
    # for all / small / medium / large areas: the breakdown must reproduce them exactly.
    default_thrs = Params("bbox").iouThrs
    for t in IOU_BREAKDOWN:
        single = oracle_stats(gt_path, dets, default_thrs[np.isclose(default_thrs, t / 100)])
        assert [metrics[f"AP{t}{s}"] for s in AREAS] == [single[0], single[3], single[4], single[5]], t
    assert metrics["AP50"] == stats[1]


# --- files and conversion ------------------------------------------------------------------


def test_to_coco_results_maps_labels_and_converts_xyxy(tmp_path, two_class_gt):
    annotations = json.loads(two_class_gt.read_text())["annotations"]
    per_image = {i: [a for a in annotations if a["image_id"] == i] for i in (1, 2)}
    xyxy = {i: np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                         for a in anns], dtype=np.float32) for i, anns in per_image.items()}
    labels = {i: [CATS.index(a["category_id"]) for a in anns] for i, anns in per_image.items()}
    results = to_coco_results(
        [1, 2, 5],
        [torch.from_numpy(xyxy[1]), xyxy[2], np.zeros((0, 4))],
        [torch.tensor([0.9, 0.8, 0.123456789]), np.array([0.5, 0.25, 0.75]), []],
        [torch.tensor(labels[1]), np.array(labels[2]), []],
        {0: 3, 1: 7},
    )
    assert results[0] == {"image_id": 1, "category_id": 3, "bbox": [10.0, 10.0, 20.0, 20.0], "score": 0.9}
    assert results[1]["category_id"] == 7 and results[1]["bbox"] == [50.0, 50.0, 60.0, 60.0]
    assert results[2]["score"] == 0.12346
    assert [r["image_id"] for r in results] == [1, 1, 1, 2, 2, 2]
    assert all(type(r["image_id"]) is int and type(r["category_id"]) is int for r in results)
    assert all(type(v) is float for r in results for v in [*r["bbox"], r["score"]])
    assert [r["bbox"] for r in results] == [a["bbox"] for a in annotations]

    path = write_detections(tmp_path / "out" / "dets.json", results)
    assert json.loads(path.read_text()) == results
    assert evaluate_files(two_class_gt, path)["AP"] == pytest.approx(1.0)


def test_to_coco_results_rounds_and_accepts_a_label_sequence():
    results = to_coco_results([4], [[[1.23456, 2.5, 11.0, 3.0]]], [[0.5]], [[1]], [3, 7])
    assert results == [{"image_id": 4, "category_id": 7, "bbox": [1.23, 2.5, 9.77, 0.5], "score": 0.5}]
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        to_coco_results([4], [[[0, 0, 1, 1]]], [[0.5]], [[2]], [3, 7])


def test_format_summary_lists_every_metric_in_percent(two_class_gt):
    text = format_summary(evaluate(two_class_gt, gt_as_detections(two_class_gt, "bbox")))
    lines = text.splitlines()
    for key in SUMMARY_KEYS:
        shown = "66.7" if key == "AR1" else "100.0"
        assert any(line.split()[0] == key and line.endswith(shown) for line in lines), key
    assert any(line.split() == ["0.90", "100.0", "100.0", "100.0", "100.0"] for line in lines)


# --- bad input -------------------------------------------------------------------------------


def test_malformed_detections_file_names_the_path(tmp_path, two_class_gt):
    path = tmp_path / "dets.json"
    path.write_text('[{"image_id": 1,')
    with pytest.raises(EvaluationError, match="malformed JSON") as err:
        evaluate(two_class_gt, path)
    assert str(err.value).startswith(str(path))


@pytest.mark.parametrize(
    ("dets", "iou_type", "message"),
    [
        ({"annotations": []}, "bbox", "must be a list"),
        ([det(1, 3, [0, 0, 5, 5], 0.5), "box"], "bbox", r"1 entries are not objects, e.g. at index \[1\]"),
        ([{"image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5]}], "bbox", "lack 'score'"),
        ([det(1, 5, [0, 0, 5, 5], 0.5), det(1, 3, [0, 0, 5, 5], 0.5)], "bbox", r"category ids .*: \[5\]"),
        ([det(99, 3, [0, 0, 5, 5], 0.5)] * 2 + [det(100, 3, [0, 0, 5, 5], 0.5)], "bbox",
         r"3 detections refer to 2 image ids .*\[99, 100\]"),
        ([det(1, 3, [0, 0, 5, 5], float("nan"))], "bbox", "non-finite score"),
        ([det(1, 3, [0, 0, 5, float("inf")], 0.5)], "bbox", "non-finite bbox"),
        ([det(1, 3, [0, 0, 5], 0.5)], "bbox", r"bbox must be 4 finite numbers.*index \[0\]"),
        ([det(1, 3, [0, 0, 5, 5], "high")], "bbox", "score must be a finite number"),
        ([det("1", 3, [0, 0, 5, 5], 0.5)], "bbox", "image_id must be an integer"),
        ([det(1, 3, [0, 0, 5, 5], 0.5)], "segm", "lack 'segmentation'"),
        ([{**det(1, 3, [0, 0, 5, 5], 0.5), "segmentation": [[1, 2]]}], "segm", "neither polygons"),
        ([{**det(1, 3, [0, 0, 5, 5], 0.5), "segmentation": {"size": [10, 10], "counts": "PP"}}], "segm",
         r"RLE of the image's size \[200, 200\]"),
        ([det(1, 3, [0, 0, 5, 5], 0.5)], "keypoints", "iou_type must be one of"),
    ],
)
def test_bad_detections_raise_evaluation_error_naming_the_source(two_class_gt, dets, iou_type, message):
    with pytest.raises(EvaluationError, match=message) as err:
        evaluate(two_class_gt, dets, iou_type, dets_source="run42")
    assert str(err.value).startswith("run42: ")


def test_bad_detections_file_errors_start_with_the_path(tmp_path, two_class_gt):
    path = tmp_path / "dets.json"
    path.write_text(json.dumps([det(1, 3, [0, 0, 5, 5], 0.5), det(1, 4, [0, 0, 5, 5], 0.5)]))
    with pytest.raises(EvaluationError, match=r"category ids .*: \[4\] \(known ids: \[3, 7\]\)") as err:
        evaluate(two_class_gt, path)
    assert str(err.value).startswith(f"{path}: ")


def test_empty_detections_warn_and_score_zero_where_gt_exists(tmp_path):
    gt = write_gt(tmp_path, [gt_ann(1, 1, 3, [0, 0, 10, 10]), gt_ann(2, 1, 7, [0, 0, 150, 150])])
    path = tmp_path / "empty.json"
    path.write_text("[]")
    with pytest.warns(UserWarning, match=f"no detections in {path}"):
        metrics = evaluate(gt, path)
    for key in ("AP", "AP50", "AP75", "APs", "APl", "AR1", "AR100", "ARs", "ARl", "AP50_s", "AP90_l"):
        assert metrics[key] == 0.0, key
    assert metrics["APm"] == -1.0 and metrics["AP50_m"] == -1.0  # no medium GT: undefined, as pycocotools


def test_degenerate_boxes_are_dropped_with_a_warning(tmp_path):
    gt = load_coco(write_gt(tmp_path, [gt_ann(1, 1, 3, [0, 0, 10, 10])]))  # a COCO object works as well
    dets = [det(1, 3, [0, 0, 0, 10], 0.99), det(1, 3, [5, 5, 3, -1], 0.98), det(1, 3, [0, 0, 10, 10], 0.5)]
    with pytest.warns(UserWarning, match="dropped 2 of 3 detections with non-positive width or height"):
        metrics = evaluate(gt, dets)
    assert metrics["AP"] == pytest.approx(1.0)
