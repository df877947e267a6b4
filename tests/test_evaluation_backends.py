"""The optional faster-coco-eval backend against pycocotools, the reference, on COCOeval's pitfall cases.

Each case is a small hand-built ground truth and result set that exercises one rule of the protocol
where a re-implementation can go wrong. Parity means every number agrees to 1e-12: the same value up to
float rounding. (pycocotools computes precision as tp / (tp + fp + eps), with eps = 2.2e-16, and
faster-coco-eval as tp / (tp + fp): a perfect AP is 0.9999999999999998 in one and 1.0 in the other.)
The reference numbers of several cases are also checked by hand, so that a bug shared by both would
not pass unseen.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from replicate.errors import EvaluationError
from replicate.evaluation import SUMMARY_KEYS, evaluate
from replicate.evaluation.coco_eval import BACKENDS

pytest.importorskip("faster_coco_eval")  # a dev dependency (pyproject's [dev] and [fast-eval] extras)

CATS = (3, 7)
pytestmark = pytest.mark.filterwarnings("ignore:.*without any annotation:UserWarning",
                                        "ignore:no detections:UserWarning")


def ann(ann_id, image_id, cat, box, crowd=False, size=(200, 200)):
    x, y, w, h = box
    if crowd:
        mask = np.zeros(size[::-1], dtype=np.uint8)
        mask[int(y):int(y + h), int(x):int(x + w)] = 1
        rle = mask_utils.encode(np.asfortranarray(mask))
        segmentation = {"size": rle["size"], "counts": rle["counts"].decode()}
    else:
        segmentation = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": list(box), "area": float(w * h),
            "iscrowd": int(crowd), "segmentation": segmentation}


def det(image_id, cat, box, score):
    return {"image_id": image_id, "category_id": cat, "bbox": list(box), "score": score}


def write(tmp_path: Path, annotations, images=(1,)) -> Path:
    data = {"images": [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 200} for i in images],
            "categories": [{"id": c, "name": f"c{c}"} for c in CATS], "annotations": annotations}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return path


def both(gt: Path, dets, iou_type="bbox"):
    return [evaluate(gt, [dict(d) for d in dets], iou_type, backend=b) for b in BACKENDS]


def assert_parity(reference, faster):
    assert list(reference) == list(faster) and list(reference)[:len(SUMMARY_KEYS)] == list(SUMMARY_KEYS)
    for key in reference:
        assert faster[key] == pytest.approx(reference[key], abs=1e-12), key


def random_case(rng, images=6, per_image=5):
    anns, dets, next_id = [], [], 1
    for image in range(1, images + 1):
        for _ in range(per_image):
            w, h = rng.uniform(8, 120, 2)
            x, y = rng.uniform(0, 200 - w), rng.uniform(0, 200 - h)
            cat = int(rng.choice(CATS))
            anns.append(ann(next_id, image, cat, [x, y, w, h]))
            next_id += 1
            for _ in range(int(rng.integers(0, 3))):
                jitter = rng.normal(0, 0.15, 4) * [w, h, w, h]
                dets.append(det(image, cat, [x + jitter[0], y + jitter[1], max(w + jitter[2], 1), max(h + jitter[3], 1)],
                                float(rng.uniform(0.05, 1))))
        for _ in range(int(rng.integers(0, 6))):  # false positives
            w, h = rng.uniform(4, 90, 2)
            dets.append(det(image, int(rng.choice(CATS)), [*rng.uniform(0, 110, 2), w, h], float(rng.uniform(0, 1))))
    return anns, dets, tuple(range(1, images + 1))


def test_crowd_regions_absorb_detections(tmp_path):
    """Detections inside an iscrowd region are ignored, not false positives (IoU with a crowd = the
    detection's share of its own area inside the region); a crowd is never a missed object."""
    anns = [ann(1, 1, 3, [10, 10, 40, 40]), ann(2, 1, 3, [100, 100, 80, 80], crowd=True)]
    dets = [det(1, 3, [10, 10, 40, 40], 0.5), det(1, 3, [110, 110, 30, 30], 0.9), det(1, 3, [120, 100, 40, 60], 0.8)]
    reference, faster = both(write(tmp_path, anns), dets)
    assert_parity(reference, faster)
    assert reference["AP"] == pytest.approx(1.0)  # both crowd detections are ignored: one object, found


def test_images_and_categories_without_ground_truth(tmp_path):
    """Detections on an image without objects count as false positives; a category without ground truth
    is left out of the mean (-1 in the precision array), and its detections change nothing."""
    anns = [ann(1, 1, 3, [20, 20, 50, 50])]
    dets = [det(1, 3, [20, 20, 50, 50], 0.4), det(2, 3, [0, 0, 30, 30], 0.9), det(1, 7, [20, 20, 50, 50], 0.99)]
    reference, faster = both(write(tmp_path, anns, images=(1, 2)), dets)
    assert_parity(reference, faster)
    assert reference["AP"] == pytest.approx(0.5, abs=0.01)  # precision 1/2 at recall 1


def test_more_detections_than_max_dets(tmp_path):
    """Only the 100 (10, 1) top-scored detections per image and category count; the object's match is
    the 101st by score, so AP at maxDets 100 is 0 while the lower-ranked boxes are cut."""
    anns = [ann(1, 1, 3, [50, 50, 60, 60])]
    dets = [det(1, 3, [0, 0, 10 + i % 7, 10], 1.0 - i / 1000) for i in range(100)]
    dets.append(det(1, 3, [50, 50, 60, 60], 0.5))
    reference, faster = both(write(tmp_path, anns), dets)
    assert_parity(reference, faster)
    assert reference["AP"] == 0 and reference["AR100"] == 0


def test_tied_scores(tmp_path):
    """Equal scores: both backends keep the input order among ties (pycocotools' stable mergesort)."""
    anns = [ann(i, 1, 3, [10 + 40 * (i % 4), 10 + 40 * (i // 4), 30, 30]) for i in range(1, 9)]
    dets = []
    for i in range(1, 9):
        dets.append(det(1, 3, [10 + 40 * (i % 4), 10 + 40 * (i // 4), 30, 30], 0.7))
        dets.append(det(1, 3, [15 + 40 * (i % 4), 150, 20, 20], 0.7))  # false positives at the same score
    reference, faster = both(write(tmp_path, anns), dets)
    assert_parity(reference, faster)


def test_area_range_borders(tmp_path):
    """Objects of area exactly 32² and 96² (the buckets' borders), and unmatched detections whose own
    area decides whether they are ignored in a bucket."""
    anns = [ann(1, 1, 3, [0, 0, 32, 32]), ann(2, 1, 3, [50, 50, 96, 96]), ann(3, 1, 7, [0, 130, 16, 64])]
    dets = [det(1, 3, [0, 0, 32, 32], 0.9), det(1, 3, [52, 50, 96, 96], 0.8), det(1, 7, [0, 130, 16, 60], 0.7),
            det(1, 3, [150, 0, 31.9, 32], 0.95), det(1, 7, [100, 150, 96, 40], 0.6)]
    reference, faster = both(write(tmp_path, anns), dets)
    assert_parity(reference, faster)


def test_duplicates_of_one_object(tmp_path):
    """A second detection of a matched object is a false positive at every threshold it passes."""
    anns = [ann(1, 1, 3, [20, 20, 60, 60])]
    dets = [det(1, 3, [20, 20, 60, 60], 0.9), det(1, 3, [22, 20, 60, 60], 0.95)]
    reference, faster = both(write(tmp_path, anns), dets)
    assert_parity(reference, faster)


def test_no_detections_at_all(tmp_path):
    anns = [ann(1, 1, 3, [20, 20, 60, 60]), ann(2, 1, 7, [100, 100, 10, 10])]
    reference, faster = both(write(tmp_path, anns), [])
    assert_parity(reference, faster)
    assert reference["AP"] == 0 and reference["APm"] == 0 and reference["APl"] == -1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_scenes(tmp_path, seed):
    anns, dets, images = random_case(np.random.default_rng(seed))
    anns.append(ann(len(anns) + 1, 1, 7, [120, 120, 70, 70], crowd=True))
    reference, faster = both(write(tmp_path, anns, images), dets)
    assert_parity(reference, faster)
    assert 0 < reference["AP"] < 1


def test_segmentation(tmp_path):
    anns, dets, images = random_case(np.random.default_rng(5), images=3)
    segms = [{"image_id": d["image_id"], "category_id": d["category_id"], "score": d["score"],
              "segmentation": [[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1],
                                d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]]]} for d in dets]
    gt = write(tmp_path, anns, images)
    reference = evaluate(gt, segms, "segm", backend="pycocotools")
    faster = evaluate(gt, segms, "segm", backend="faster-coco-eval")
    assert_parity(reference, faster)


def test_unknown_backend_is_named(tmp_path):
    gt = write(tmp_path, [ann(1, 1, 3, [20, 20, 60, 60])])
    with pytest.raises(EvaluationError, match="backend must be one of"):
        evaluate(gt, [], backend="detectron2")
