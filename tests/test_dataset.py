"""COCO-format dataset: label mapping, crowd regions, filtering, determinism, loaders, bad input."""

import json
import shutil

import pytest
import torch
from torch.utils.data import DataLoader

from replicate.data import synth
from replicate.data.batching import Collate
from replicate.data.coco import CocoDetection
from replicate.data.profiles import SCALE_PRESETS, build_dataset, data_config, ensure_data
from replicate.errors import DataError
from replicate.io import read_json


def test_labels_contiguous_and_crowd_as_ignore(smoke_root):
    ann, images = synth.dataset_paths(smoke_root, "train")
    ds = CocoDetection(ann, images)
    data = read_json(ann)
    assert ds.cat_ids == sorted(c["id"] for c in data["categories"])
    n_obj = sum(len(ds[i][1]["labels"]) for i in range(len(ds)))
    n_ign = sum(len(ds[i][1]["ignore_boxes"]) for i in range(len(ds)))
    assert n_obj == sum(1 for a in data["annotations"] if not a["iscrowd"])
    assert n_ign == sum(1 for a in data["annotations"] if a["iscrowd"]) > 0
    image, target = ds[0]
    first = [a for a in data["annotations"] if a["image_id"] == ds.ids[0] and not a["iscrowd"]]
    expected = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                             for a in first]).reshape(-1, 4)
    assert torch.allclose(target["boxes"], expected)
    assert [ds.label_to_cat_id[int(l)] for l in target["labels"]] == [a["category_id"] for a in first]
    assert image.shape[0] == 3 and image.dtype == torch.float32


def test_filter_empty_for_training_only(smoke_root):
    ann, images = synth.dataset_paths(smoke_root, "train")
    data = read_json(ann)
    with_objects = {a["image_id"] for a in data["annotations"] if not a["iscrowd"]}
    train = CocoDetection(ann, images, filter_empty=True)
    full = CocoDetection(ann, images)
    assert len(full) == len(data["images"])
    assert set(train.ids) == with_objects and train.stats["filtered_empty_images"] == len(full) - len(train)


def test_training_samples_are_deterministic_per_seed_epoch_index(smoke_root):
    cfg = data_config("smoke", smoke_root)
    ds = build_dataset(cfg, "train", train=True, seed=3)
    a, b = ds[5], ds[5]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    flips = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        flips.add(ds[5][1].get("flipped", False))
    assert flips == {True, False}


def test_boxes_follow_resize(smoke_root):
    cfg = data_config("smoke", smoke_root)
    raw = CocoDetection(*cfg.paths("val"))
    ds = build_dataset(cfg, "val", train=False)
    for i in range(len(ds)):
        image, t = ds[i]
        sy, sx = t["scale_factor"]
        assert image.shape[-2:] == t["img_size"] and min(t["img_size"]) == min(cfg.test_scale)
        assert torch.allclose(t["boxes"], raw[i][1]["boxes"] * torch.tensor([sx, sy, sx, sy]), atol=1e-4)


def test_collate_pads_batches_to_the_size_divisor(smoke_root):
    cfg = data_config("smoke", smoke_root)
    ds = build_dataset(cfg, "train", train=True)
    loader = DataLoader(ds, batch_size=4, shuffle=False, num_workers=2, collate_fn=Collate(32))
    ids = [t["image_id"] for batch in loader for t in batch.targets]
    assert ids == list(ds.ids)
    batch = next(iter(loader))
    assert batch.images.shape[0] == 4 and batch.images.shape[-1] % 32 == 0 and batch.images.shape[-2] % 32 == 0


def _copy_val(smoke_root, tmp_path):
    ann, images = synth.dataset_paths(smoke_root, "val")
    shutil.copytree(images, tmp_path / "images")
    return read_json(ann), tmp_path / "images"


def test_missing_image_file_names_the_file(smoke_root, tmp_path):
    data, images = _copy_val(smoke_root, tmp_path)
    (images / data["images"][0]["file_name"]).unlink()
    (tmp_path / "a.json").write_text(json.dumps(data))
    ds = CocoDetection(tmp_path / "a.json", images)
    with pytest.raises(DataError, match=data["images"][0]["file_name"]):
        ds[ds.ids.index(data["images"][0]["id"])]


def test_image_size_mismatch_is_an_error(smoke_root, tmp_path):
    data, images = _copy_val(smoke_root, tmp_path)
    data["images"][0]["width"] += 7
    (tmp_path / "a.json").write_text(json.dumps(data))
    ds = CocoDetection(tmp_path / "a.json", images)
    with pytest.raises(DataError, match="says"):
        ds[ds.ids.index(data["images"][0]["id"])]


def test_degenerate_boxes_dropped_and_outside_boxes_clipped(smoke_root, tmp_path):
    data, images = _copy_val(smoke_root, tmp_path)
    objects = [a for a in data["annotations"] if not a["iscrowd"]]
    objects[0]["bbox"][2] = 0.0
    img = next(im for im in data["images"] if im["id"] == objects[1]["image_id"])
    objects[1]["bbox"] = [img["width"] - 10.0, 5.0, 40.0, 20.0]
    (tmp_path / "a.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning):
        ds = CocoDetection(tmp_path / "a.json", images)
    assert ds.stats["dropped_degenerate"] == 1 and ds.stats["clipped"] == 1
    boxes = ds[ds.ids.index(img["id"])][1]["boxes"]
    assert boxes[:, 2].max() <= img["width"]


def test_missing_image_folder_and_missing_coco(tmp_path, smoke_root):
    ann, _ = synth.dataset_paths(smoke_root, "val")
    with pytest.raises(DataError, match="image folder not found"):
        CocoDetection(ann, tmp_path / "nope")
    with pytest.raises(DataError, match="--data-root"):
        ensure_data(data_config("coco", tmp_path / "coco"))
    with pytest.raises(DataError, match="unknown profile"):
        data_config("imagenet")


def test_scale_presets():
    cfg = data_config("coco", "/nonexistent").with_scale("ms-640-800")
    assert cfg.scale_mode == "range" and cfg.test_scale == (1333, 800)
    assert data_config("coco", "/x").with_scale("1000x600").test_scale == (1000, 600)
    assert set(SCALE_PRESETS) >= {"1333x800", "1000x600"}
    with pytest.raises(DataError):
        cfg.with_scale("huge")


def test_corrupt_image_names_the_file(smoke_root, tmp_path):
    data, images = _copy_val(smoke_root, tmp_path)
    (images / data["images"][0]["file_name"]).write_bytes(b"not a jpeg")
    (tmp_path / "a.json").write_text(json.dumps(data))
    ds = CocoDetection(tmp_path / "a.json", images)
    with pytest.raises(DataError, match="cannot decode image"):
        ds[ds.ids.index(data["images"][0]["id"])]
