"""Tests for COCO validation and loading (replicate.data.validate)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from replicate.data.validate import MAX_EXAMPLES, Problem, Report, check_file, load_coco, validate_coco
from replicate.errors import DataError


def make_coco() -> dict[str, Any]:
    """A small valid COCO dict: 3 images (one without annotations), 2 categories, 3 annotations."""
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.png", "width": 20, "height": 20},
            {"id": 3, "file_name": "c.png", "width": 10, "height": 10},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 5], "area": 50, "iscrowd": 0,
             "segmentation": [[1, 2, 11, 2, 11, 7, 1, 7]]},
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [0.5, 0.5, 39.0, 29.0], "area": 1131.0,
             "iscrowd": 1, "segmentation": {"counts": "abc", "size": [30, 40]}},
            {"id": 12, "image_id": 2, "category_id": 2, "bbox": [2, 2, 4, 4], "area": 16},
        ],
    }


def problem(report: Report, code: str) -> Problem:
    """The only problem with ``code`` in ``report``."""
    found = [p for p in report.problems if p.code == code]
    assert len(found) == 1, report.format()
    return found[0]


def codes(report: Report) -> set[str]:
    return {p.code for p in report.problems}


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj))
    return path


def write_images(folder: Path, sizes: dict[str, tuple[int, int]]) -> None:
    for name, size in sizes.items():
        Image.new("RGB", size).save(folder / name)


# --- clean data -------------------------------------------------------------------------------


def test_clean_dict_is_ok_with_stats() -> None:
    report = validate_coco(make_coco(), "clean.json")
    assert report.ok and report.problems == []
    assert report.stats == {"n_images": 3, "n_annotations": 3, "n_categories": 2, "n_crowd": 1,
                            "n_images_without_annotations": 1}


def test_images_without_annotations_are_only_a_stat() -> None:
    data = make_coco()
    data["images"].append({"id": 4, "file_name": "d.png", "width": 5, "height": 5})
    report = validate_coco(data, "x.json")
    assert report.problems == [] and report.stats["n_images_without_annotations"] == 2


# --- errors -----------------------------------------------------------------------------------


def test_not_a_dict() -> None:
    report = validate_coco([1, 2], "list.json")
    p = problem(report, "not_a_dict")
    assert p.severity == "error" and p.count == 1 and "list" in p.message and not report.ok


def test_missing_section() -> None:
    data = make_coco()
    del data["images"]
    data["categories"] = {"id": 1}
    p = problem(validate_coco(data, "x.json"), "missing_section")
    assert p.count == 2 and "images" in p.message and "categories" in p.message
    assert "'categories' is dict" in p.examples


def test_image_missing_field() -> None:
    data = make_coco()
    del data["images"][1]["file_name"]
    data["images"][2]["id"] = "3"
    p = problem(validate_coco(data, "x.json"), "image_missing_field")
    assert p.severity == "error" and p.count == 2 and "file_name" in p.message
    assert p.examples == ["images[1] (id 2): file_name=missing", "images[2]: id='3'"]


def test_bad_image_size() -> None:
    data = make_coco()
    data["images"][0]["width"] = 0
    data["images"][2]["height"] = -5
    p = problem(validate_coco(data, "x.json"), "bad_image_size")
    assert p.count == 2 and "width/height" in p.message and p.examples[0] == "images[0] (id 1): 0x30"


def test_duplicate_image_id() -> None:
    data = make_coco()
    data["images"][2]["id"] = 1
    p = problem(validate_coco(data, "x.json"), "duplicate_image_id")
    assert p.severity == "error" and p.count == 1 and "image id" in p.message and p.examples == ["id 1 x2"]


def test_duplicate_annotation_id() -> None:
    data = make_coco()
    for ann in data["annotations"]:
        ann["id"] = 7
    p = problem(validate_coco(data, "x.json"), "duplicate_annotation_id")
    assert p.count == 1 and "annotation id" in p.message and p.examples == ["id 7 x3"]


def test_duplicate_category_id() -> None:
    data = make_coco()
    data["categories"].append({"id": 2, "name": "other"})
    p = problem(validate_coco(data, "x.json"), "duplicate_category_id")
    assert p.count == 1 and "category id" in p.message and p.examples == ["id 2 x2"]


def test_category_missing_field() -> None:
    data = make_coco()
    data["categories"].append({"id": 3})
    data["categories"].append("not a dict")
    p = problem(validate_coco(data, "x.json"), "category_missing_field")
    assert p.count == 2 and "name" in p.message
    assert p.examples == ["categories[2] (id 3): name=missing", "categories[3]: not an object but 'not a dict'"]


def test_annotation_missing_field() -> None:
    data = make_coco()
    del data["annotations"][0]["bbox"]
    del data["annotations"][2]["category_id"]
    report = validate_coco(data, "x.json")
    p = problem(report, "annotation_missing_field")
    assert p.count == 2 and "bbox" in p.message
    assert p.examples == ["annotations[0] (id 10): bbox=missing", "annotations[2] (id 12): category_id=missing"]
    assert "bad_bbox" not in codes(report)


@pytest.mark.parametrize("bbox", [[1, 2, 3], [1, 2, 3, "4"], [1, 2, math.nan, 4], [1, None, 3, 4], "1,2,3,4"])
def test_bad_bbox(bbox: Any) -> None:
    data = make_coco()
    data["annotations"][1]["bbox"] = bbox
    p = problem(validate_coco(data, "x.json"), "bad_bbox")
    assert p.severity == "error" and p.count == 1 and "4 finite numbers" in p.message
    assert p.examples[0].startswith("annotations[1] (id 11): bbox=")


def test_unknown_image_id() -> None:
    data = make_coco()
    data["annotations"][0]["image_id"] = 99
    data["annotations"][2]["image_id"] = 98
    p = problem(validate_coco(data, "x.json"), "unknown_image_id")
    assert p.count == 2 and "image_id" in p.message and p.examples[0] == "annotations[0] (id 10): image_id 99"


def test_unknown_category_id() -> None:
    data = make_coco()
    data["annotations"][2]["category_id"] = 5
    p = problem(validate_coco(data, "x.json"), "unknown_category_id")
    assert p.count == 1 and "category_id" in p.message and p.examples == ["annotations[2] (id 12): category_id 5"]


@pytest.mark.parametrize("value", [2, -1, True, "0", 1.0])
def test_bad_iscrowd(value: Any) -> None:
    data = make_coco()
    data["annotations"][0]["iscrowd"] = value
    p = problem(validate_coco(data, "x.json"), "bad_iscrowd")
    assert p.count == 1 and "iscrowd" in p.message and p.examples == [f"annotations[0] (id 10): iscrowd={value!r}"]


@pytest.mark.parametrize(
    "segmentation",
    [
        [[1, 2, 3, 4, 5, 6, 7]],  # odd length
        [[1, 2, 3, 4, 5, "6"]],  # not numbers
        [],  # no polygon
        [1, 2, 3, 4, 5, 6],  # a bare polygon, not a list of polygons
        {"counts": "abc"},  # RLE without size
        "polygon",
    ],
)
def test_bad_segmentation(segmentation: Any) -> None:
    data = make_coco()
    data["annotations"][0]["segmentation"] = segmentation
    p = problem(validate_coco(data, "x.json"), "bad_segmentation")
    assert p.count == 1 and "RLE" in p.message and p.examples[0].startswith("annotations[0] (id 10): segmentation=")


# --- warnings ---------------------------------------------------------------------------------


def test_degenerate_box() -> None:
    data = make_coco()
    data["annotations"][0]["bbox"] = [1, 2, 0, 5]
    data["annotations"][2]["bbox"] = [1, 2, 3, -1]
    report = validate_coco(data, "x.json")
    p = problem(report, "degenerate_box")
    assert p.severity == "warning" and p.count == 2 and "width/height" in p.message and report.ok
    assert p.examples[0] == "annotations[0] (id 10): bbox=[1.0, 2.0, 0.0, 5.0]"


def test_box_outside_image() -> None:
    data = make_coco()
    data["annotations"][0]["bbox"] = [-0.9, 0, 40.8, 30.9]  # within the 1 px tolerance
    data["annotations"][1]["bbox"] = [35, 2, 10, 5]  # right edge at 45 > 40 + 1
    data["annotations"][2]["bbox"] = [2, -3, 4, 4]  # above the top edge
    report = validate_coco(data, "x.json")
    p = problem(report, "box_outside_image")
    assert p.severity == "warning" and p.count == 2 and "outside their image" in p.message and report.ok
    assert p.examples[0] == "annotations[1] (id 11): bbox=[35.0, 2.0, 10.0, 5.0] in images[0] (id 1) 40x30"


def test_bad_area() -> None:
    data = make_coco()
    del data["annotations"][0]["area"]
    data["annotations"][1]["area"] = 0
    data["annotations"][2]["area"] = "16"
    report = validate_coco(data, "x.json")
    p = problem(report, "bad_area")
    assert p.severity == "warning" and p.count == 3 and "area" in p.message and report.ok
    assert p.examples == ["annotations[0] (id 10): area=missing", "annotations[1] (id 11): area=0",
                          "annotations[2] (id 12): area='16'"]


def test_short_polygon_is_a_warning() -> None:
    data = make_coco()
    data["annotations"][0]["segmentation"] = [[1, 2, 3, 4]]  # two points: real COCO has a few
    report = validate_coco(data, "x.json")
    p = problem(report, "short_polygon")
    assert p.severity == "warning" and p.count == 1 and report.ok and "fewer than 3 points" in p.message


def test_load_coco_fills_missing_area_with_box_area(tmp_path) -> None:
    data = make_coco()
    del data["annotations"][0]["area"]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="area"):
        coco = load_coco(path)
    w, h = data["annotations"][0]["bbox"][2:]
    assert coco.anns[data["annotations"][0]["id"]]["area"] == float(w * h)


def test_unused_category() -> None:
    data = make_coco()
    data["categories"].append({"id": 7, "name": "zebra"})
    report = validate_coco(data, "x.json")
    p = problem(report, "unused_category")
    assert p.severity == "warning" and p.count == 1 and "without any annotation" in p.message
    assert p.examples == ["id 7 ('zebra')"] and report.ok


def test_examples_are_capped() -> None:
    data = make_coco()
    data["annotations"] = [dict(data["annotations"][2], id=100 + i, image_id=50) for i in range(12)]
    p = problem(validate_coco(data, "x.json"), "unknown_image_id")
    assert p.count == 12 and len(p.examples) == MAX_EXAMPLES


# --- report -----------------------------------------------------------------------------------


def test_format_and_raise_for_errors() -> None:
    data = make_coco()
    data["annotations"][0]["image_id"] = 99
    data["annotations"][1]["bbox"] = [1, 2, 0, 5]
    report = validate_coco(data, "bad.json")
    text = report.format()
    assert text.splitlines()[0] == "bad.json: 1 error(s), 1 warning(s)"
    assert "error [unknown_image_id] 1 annotation(s)" in text and "image_id 99" in text
    assert "warning [degenerate_box] 1 annotation box(es)" in text
    assert "n_images=3" in text and "n_images_without_annotations=1" in text
    with pytest.raises(DataError, match=r"^bad\.json: 1 problem\(s\): 1 annotation\(s\) with a image_id"):
        report.raise_for_errors()


def test_raise_for_errors_ignores_warnings() -> None:
    data = make_coco()
    data["annotations"][1]["bbox"] = [1, 2, 0, 5]
    validate_coco(data, "x.json").raise_for_errors()


# --- files ------------------------------------------------------------------------------------


def test_check_file_good(tmp_path: Path) -> None:
    report = check_file(write_json(tmp_path / "good.json", make_coco()))
    assert report.ok and report.source == str(tmp_path / "good.json") and report.stats["n_annotations"] == 3


def test_check_file_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"images": [')
    report = check_file(path)
    p = problem(report, "unreadable")
    assert not report.ok and p.count == 1 and str(path) in p.message and "malformed JSON" in p.message
    assert problem(check_file(tmp_path / "absent.json"), "unreadable").message.endswith("not found")


def test_load_coco_malformed_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="broken.json: malformed JSON"):
        load_coco(path)


def test_load_coco_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="absent.json: COCO annotation file not found"):
        load_coco(tmp_path / "absent.json")


def test_load_coco_unknown_image_id(tmp_path: Path) -> None:
    data = make_coco()
    data["annotations"][2]["image_id"] = 42
    path = write_json(tmp_path / "dangling.json", data)
    with pytest.raises(DataError, match=r"dangling\.json: 1 problem\(s\): 1 annotation\(s\) with a image_id") as exc:
        load_coco(path)
    assert "image_id 42" in str(exc.value)


def test_load_coco_warns_and_returns_coco(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_coco()
    data["annotations"][0]["bbox"] = [1, 2, 0, 5]
    data["annotations"][2]["bbox"] = [1, 2, 3, 0]
    path = write_json(tmp_path / "degenerate.json", data)
    with pytest.warns(UserWarning, match=r"degenerate\.json: 2 annotation box\(es\) with zero or negative"):
        coco = load_coco(path)
    assert sorted(coco.getAnnIds(imgIds=[1])) == [10, 11]
    assert coco.getAnnIds(catIds=[2]) == [11, 12]
    assert capsys.readouterr().out == ""


def test_load_coco_clean_file_does_not_warn(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    coco = load_coco(write_json(tmp_path / "clean.json", make_coco()))
    assert len(recwarn) == 0 and sorted(coco.getImgIds()) == [1, 2, 3]


# --- image files ------------------------------------------------------------------------------


def test_missing_image_files(tmp_path: Path) -> None:
    write_images(tmp_path, {"a.png": (40, 30), "c.png": (10, 10)})
    report = validate_coco(make_coco(), "x.json", images_dir=tmp_path)
    p = problem(report, "missing_image_file")
    assert p.severity == "error" and p.count == 1 and str(tmp_path) in p.message
    assert p.examples == [str(tmp_path / "b.png")]
    assert codes(validate_coco(make_coco(), "x.json", images_dir=tmp_path, check_image_files=False)) == set()


def test_load_coco_checks_image_files(tmp_path: Path) -> None:
    path = write_json(tmp_path / "ann.json", make_coco())
    with pytest.raises(DataError, match=r"ann\.json: 1 problem\(s\): 3 image file\(s\) not found"):
        load_coco(path, images_dir=tmp_path / "images")


def test_image_size_mismatch(tmp_path: Path) -> None:
    write_images(tmp_path, {"a.png": (40, 30), "b.png": (21, 20), "c.png": (10, 10)})
    assert validate_coco(make_coco(), "x.json", images_dir=tmp_path).ok  # sizes are opt-in
    report = check_file(write_json(tmp_path / "ann.json", make_coco()), images_dir=tmp_path, check_image_sizes=True)
    p = problem(report, "image_size_mismatch")
    assert p.severity == "error" and p.count == 1 and "width/height" in p.message
    assert p.examples == [f"{tmp_path / 'b.png'}: 21x20 on disk, 20x20 in images[1] (id 2)"]


def test_unreadable_image(tmp_path: Path) -> None:
    write_images(tmp_path, {"a.png": (40, 30), "c.png": (10, 10)})
    (tmp_path / "b.png").write_bytes(b"not an image")
    report = validate_coco(make_coco(), "x.json", images_dir=tmp_path, check_image_sizes=True)
    p = problem(report, "unreadable_image")
    assert p.count == 1 and p.examples[0].startswith(f"{tmp_path / 'b.png'}: UnidentifiedImageError")
