"""The synthetic misalignment benchmark: determinism, validity, distributions, COCO conventions."""

import filecmp
import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from replicate.data import synth
from replicate.data.synth_spec import CLASSES, LARGE_AREA, SMALL_AREA
from replicate.profiles import PROFILES
from replicate.data.validate import load_coco, validate_coco
from replicate.evaluation import evaluate
from replicate.io import read_json

# Area of the superellipse |x/a|^4 + |y/b|^4 <= 1: 4ab * Gamma(1 + 1/4)^2 / Gamma(1 + 1/2).
SUPERELLIPSE_FILL = math.gamma(1.25) ** 2 / math.gamma(1.5)


def test_same_seed_gives_byte_identical_files(smoke_root, tmp_path):
    again = tmp_path / "again"
    synth.generate("smoke", again, seed=0, progress=False, workers=1)  # other worker count, same bytes
    for split in ("train", "val"):
        a, b = synth.dataset_paths(smoke_root, split)[0], synth.dataset_paths(again, split)[0]
        assert a.read_bytes() == b.read_bytes()
    images = sorted(p.name for p in (smoke_root / "images" / "val").iterdir())
    match, mismatch, errors = filecmp.cmpfiles(smoke_root / "images" / "val", again / "images" / "val", images, shallow=False)
    assert len(match) == len(images) and not mismatch and not errors


def test_other_seed_differs(smoke_root, tmp_path):
    other = tmp_path / "other"
    synth.generate("smoke", other, seed=1, progress=False)
    assert synth.dataset_paths(smoke_root, "val")[0].read_bytes() != synth.dataset_paths(other, "val")[0].read_bytes()


def test_complete_output_is_not_regenerated(smoke_root):
    ann = synth.dataset_paths(smoke_root, "train")[0]
    before = ann.stat().st_mtime_ns
    synth.generate("smoke", smoke_root, seed=0, progress=False)
    assert ann.stat().st_mtime_ns == before


def test_valid_coco_and_gt_as_detections_scores_one(smoke_root):
    ann, images = synth.dataset_paths(smoke_root, "val")
    data = read_json(ann)
    report = validate_coco(data, str(ann), images_dir=images, check_image_sizes=True)
    assert report.ok, report.format()
    coco = load_coco(ann)
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in data["annotations"] if not a["iscrowd"]]
    metrics = evaluate(coco, dets)
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["AP50_s"] == pytest.approx(1.0) and metrics["AP90_m"] == pytest.approx(1.0)


def test_coco_conventions_present(smoke_root):
    train = read_json(synth.dataset_paths(smoke_root, "train")[0])
    cat_ids = sorted(c["id"] for c in train["categories"])
    assert cat_ids != list(range(1, len(cat_ids) + 1)), "category ids must be non-contiguous"
    image_ids = sorted(im["id"] for im in train["images"])
    assert image_ids != list(range(1, len(image_ids) + 1)), "image ids must be non-contiguous"
    crowd = [a for a in train["annotations"] if a["iscrowd"]]
    assert crowd and all(isinstance(a["segmentation"], dict) for a in crowd)  # crowd regions are RLE
    objects = [a for a in train["annotations"] if not a["iscrowd"]]
    assert all(isinstance(a["segmentation"], list) and len(a["segmentation"][0]) >= 6 for a in objects)
    annotated = {a["image_id"] for a in train["annotations"]}
    assert any(im["id"] not in annotated for im in train["images"]), "some images must have no annotations"
    assert any(im.get("crowded") for im in train["images"])


def test_area_is_the_mask_area(smoke_root):
    data = read_json(synth.dataset_paths(smoke_root, "val")[0])
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    for ann in data["annotations"]:
        h, w = sizes[ann["image_id"]]
        if ann["iscrowd"]:
            mask = mask_utils.decode(mask_utils.frPyObjects(ann["segmentation"], h, w))
        else:
            mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], h, w)))
        assert ann["area"] == float(mask.sum())
        if not ann["iscrowd"]:  # and close to the closed-form area of the body's superellipse
            bw, bh = ann["bbox"][2:]
            assert ann["area"] == pytest.approx(bw * bh * SUPERELLIPSE_FILL, rel=0.08, abs=12)


def test_uncompressed_rle_round_trip():
    rng = np.random.default_rng(0)
    mask = (rng.random((13, 17)) > 0.6).astype(np.uint8)
    mask[0, 0] = 1  # the first run of zeros is then empty: counts must start with 0
    rle = synth._uncompressed_rle(mask)
    assert rle["counts"][0] == 0 and sum(rle["counts"]) == mask.size
    assert np.array_equal(mask_utils.decode(mask_utils.frPyObjects(rle, 13, 17)), mask)


def _layouts(profile: str, n: int | None = None):
    p = PROFILES[profile].synth
    return [synth.sample_layout(synth.image_rng(0, "val", i), p) for i in range(n or p.n_val)]


@pytest.mark.parametrize("profile", ["synthetic", "proxy"])
def test_size_and_aspect_distribution(profile):
    """Each COCO size bucket holds at least 15 % of the validation objects (the size columns mean something)."""
    bodies = [b for lay in _layouts(profile) for b in lay.objects]
    area = np.array([4 * b.a * b.b * SUPERELLIPSE_FILL for b in bodies])
    aspect = np.array([b.a / b.b for b in bodies])
    for name, frac in {"small": np.mean(area < SMALL_AREA),
                       "medium": np.mean((area >= SMALL_AREA) & (area < LARGE_AREA)),
                       "large": np.mean(area >= LARGE_AREA)}.items():
        assert frac >= 0.15, f"{name} objects are {frac:.1%} of validation objects"
    assert aspect.min() >= 1 / 5 - 1e-6 and aspect.max() <= 5 + 1e-6
    assert aspect.min() < 1 / 4 and aspect.max() > 4, "aspect ratios must reach 1:5 and 5:1"
    assert 400 <= PROFILES[profile].synth.n_val <= 600 and PROFILES[profile].synth.n_train >= 2000


def test_keys_off_centre_and_inside_their_body():
    bodies = [b for lay in _layouts("synthetic", 200) for b in lay.objects]
    offset = np.array([math.hypot((b.key.cx - b.cx) / b.a, (b.key.cy - b.cy) / b.b) for b in bodies])
    assert offset.max() <= 0.8 + 1e-9
    assert np.mean(offset >= 0.2) > 0.9 and np.median(offset) > 0.4
    for b in bodies:  # every point of the key disc lies inside the body's superellipse
        t = np.linspace(0, 2 * np.pi, 32)
        x = (b.key.cx + b.key.radius * np.cos(t) - b.cx) / b.a
        y = (b.key.cy + b.key.radius * np.sin(t) - b.cy) / b.b
        assert np.all(x**4 + y**4 < 1.0)


def test_hard_negatives_and_crowding_present():
    layouts = _layouts("synthetic", 200)
    assert sum(len(lay.distractors) for lay in layouts) > 100  # bodies without keys
    assert sum(len(lay.floating_keys) for lay in layouts) > 50  # keys without bodies
    assert sum(lay.crowded for lay in layouts) > 5
    overlaps = 0
    for lay in layouts:
        boxes = np.array([b.xyxy for b in lay.objects]).reshape(-1, 4)
        for i in range(len(boxes)):
            overlaps += int(np.sum(synth._box_iou(boxes[i], boxes[i + 1:]) > 0.05))
    assert overlaps > 50


def test_class_patterns_are_distinct():
    u, v = np.meshgrid(np.linspace(-1, 1, 33), np.linspace(-1, 1, 33))
    patterns = np.stack([synth.key_pattern(i, u, v, 0.0).ravel() for i in range(len(CLASSES))])
    dist = np.linalg.norm(patterns[:, None] - patterns[None], axis=-1)
    assert np.all(dist[~np.eye(len(CLASSES), dtype=bool)] > 1.0)


def test_unknown_profile_is_a_clear_error(tmp_path):
    from replicate.errors import DataError

    with pytest.raises(DataError, match="unknown synthetic profile 'tiny'"):
        synth.generate("tiny", tmp_path)
