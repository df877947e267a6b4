"""Dataset-card statistics against counts taken directly from the annotation file."""

import numpy as np
import pytest

from replicate.data import card, synth
from replicate.io import read_json


def test_statistics_match_direct_counts(smoke_root):
    ann = synth.dataset_paths(smoke_root, "train")[0]
    data = read_json(ann)
    objects = [a for a in data["annotations"] if not a["iscrowd"]]
    table = card.statistics_table({"train": ann})
    col = table["train"]
    assert col["images"] == len(data["images"]) and col["objects"] == len(objects)
    assert col["crowd regions"] == len(data["annotations"]) - len(objects)
    assert col["images without objects"] == len(data["images"]) - len({a["image_id"] for a in data["annotations"]})
    areas = np.array([a["area"] for a in objects])
    assert col["small %"] == pytest.approx(100 * np.mean(areas < 32**2), abs=0.01)
    assert col["small %"] + col["medium %"] + col["large %"] == pytest.approx(100, abs=0.05)
    assert 0.2 <= col["key offset median"] <= 0.8


def test_class_table_counts(smoke_root):
    files = {s: synth.dataset_paths(smoke_root, s)[0] for s in ("train", "val")}
    table = card.class_table(files)
    for split, path in files.items():
        data = read_json(path)
        assert table[split].sum() == sum(1 for a in data["annotations"] if not a["iscrowd"])
    assert list(table.index) == [c["id"] for c in read_json(files["train"])["categories"]]


def test_figures_draw(smoke_root):
    ann, images = synth.dataset_paths(smoke_root, "val")
    fig = card.plot_examples(ann, images, n=4, cols=2)
    assert len(fig.axes) == 4 and any(ax.patches for ax in fig.axes)
    assert len(card.plot_distributions(ann).axes) == 3
