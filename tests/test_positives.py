"""The assignment statistic of the calibration page (replicate.analysis.positives), on one box worked by hand."""

from __future__ import annotations

import json
import math

import pytest

from replicate.analysis.positives import positive_counts, positives_table
from replicate.models.zoo import model_config

BOX = [6.0, 6.0, 32.0, 32.0]  # x, y, w, h: xyxy (6, 6, 38, 38), centre 22, half-extent 16, area 1024 (medium)


@pytest.fixture()
def ann_file(tmp_path):
    """A 64 x 64 image with the box and a crowd region, and an image with only a crowd region."""
    doc = {"images": [{"id": 1, "width": 64, "height": 64, "file_name": "a.png"},
                      {"id": 2, "width": 64, "height": 64, "file_name": "b.png"}],
           "annotations": [{"id": 1, "image_id": 1, "bbox": BOX, "area": 1024.0, "category_id": 1, "iscrowd": 0},
                           {"id": 2, "image_id": 1, "bbox": [44, 44, 16, 16], "area": 256.0, "category_id": 1,
                            "iscrowd": 1},
                           {"id": 3, "image_id": 2, "bbox": [0, 0, 20, 20], "area": 400.0, "category_id": 1,
                            "iscrowd": 1}],
           "categories": [{"id": 1, "name": "a"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    return path


def test_fcos_positives_hand_computed(ann_file):
    # FCOS (no centre sampling): P3 points (k + 0.5) * 8 inside (6, 38) are 12, 20, 28, 36 per axis, 16 points,
    # their largest regression distance (at most 26) inside P3's range (-1, 64]; P4's inside points 8 and 24
    # reach at most 30, outside (64, 128]. Offsets |x - 22| / 16 per axis: 0.625, 0.125, 0.375, 0.875; on the
    # 4 x 4 grid the Chebyshev maximum takes the k-th smallest value (2k + 1) times: (0.125 + 3 * 0.375 +
    # 5 * 0.625 + 7 * 0.875) / 16 = 10.5 / 16.
    counts = positive_counts(ann_file, (64, 64), model_config("fcos_vanilla", "smoke", num_classes=1))
    assert len(counts) == 1  # crowd regions are not objects; the crowd-only image is skipped
    row = counts.iloc[0]
    assert row["bucket"] == "medium" and row["positives"] == 16 and row["levels"] == 1
    assert row["centre offset"] == pytest.approx(10.5 / 16)


def test_foveabox_positives_hand_computed(ann_file):
    # sqrt(w h) = 32 lies in P3's range (1, 64) and P4's (32, 128): two levels. P3 (stride 8): the box is
    # 0.75 .. 4.75 in cells, centre 2.75, fovea 2.75 +- 0.4 * 4 / 2 = [1.95, 3.55], cells 2 and 3 per axis
    # (centres 2.5, 3.5): 4 cells at pixel centres 20 and 28, offsets 0.125 and 0.375, Chebyshev maxima
    # 0.125 + 3 * 0.375. P4 (stride 16): 0.375 .. 2.375, fovea 1.375 +- 0.4 = [0.975, 1.775], cell 1 (pixel
    # centre 24, offset 0.125). 5 positives; mean offset (1.25 + 0.125) / 5.
    counts = positive_counts(ann_file, (64, 64), model_config("foveabox", "smoke", num_classes=1))
    row = counts.iloc[0]
    assert row["positives"] == 5 and row["levels"] == 2
    assert row["centre offset"] == pytest.approx(1.375 / 5)


def test_positives_table_aggregates(ann_file):
    configs = {"FCOS": model_config("fcos_vanilla", "smoke", num_classes=1),
               "FoveaBox": model_config("foveabox", "smoke", num_classes=1)}
    table = positives_table(ann_file, (64, 64), configs)
    assert list(table.index) == ["FCOS", "FoveaBox"]
    assert table.loc["FCOS", "objects"] == 1 and table.loc["FoveaBox", "positives per object"] == 5
    assert table.loc["FoveaBox", "per medium object"] == 5 and math.isnan(table.loc["FoveaBox", "per small object"])
    assert table.loc["FCOS", "objects without a positive %"] == 0
