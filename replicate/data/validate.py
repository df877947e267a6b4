"""Validation of COCO-format instance annotation files.

:func:`validate_coco` checks a parsed COCO ``instances`` dict and returns a :class:`Report` of
problems. *Errors* make the file unusable (dangling references, malformed boxes, duplicate ids, …);
*warnings* are recoverable and handled downstream: training drops degenerate boxes and clips boxes
to their image; categories without annotations are merely reported. Images without annotations are
legitimate in COCO and only counted in the stats.

Problem codes. Errors: ``not_a_dict``, ``missing_section``, ``image_missing_field``,
``bad_image_size``, ``duplicate_image_id``, ``category_missing_field``, ``duplicate_category_id``,
``annotation_missing_field``, ``duplicate_annotation_id``, ``bad_bbox``, ``unknown_image_id``,
``unknown_category_id``, ``bad_iscrowd``, ``bad_segmentation``, ``missing_image_file``,
``unreadable_image``, ``image_size_mismatch`` and, from :func:`check_file`, ``unreadable``.
Warnings: ``degenerate_box``, ``box_outside_image``, ``bad_area`` (:func:`load_coco` then uses the box
area), ``short_polygon`` (fewer than 3 points, as a few real COCO masks have), ``unused_category``.

The checks are columnar (one Python pass per field, then numpy), so the 860k annotations of COCO
2017 train validate in a few seconds. :func:`load_coco` validates, warns and builds a
``pycocotools`` :class:`~pycocotools.coco.COCO` from the already-parsed dict.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from ..errors import DataError, ReplicateError
from ..io import read_json

MAX_EXAMPLES = 5
"""At most this many examples are kept per problem."""

BOX_TOLERANCE_PX = 1.0
"""A box may overhang its image by this much before it is reported."""

_MISSING = object()
_NUMBER_TYPES = frozenset({int, float})
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_SECTIONS = ("images", "annotations", "categories")

Severity = Literal["error", "warning"]


@dataclass
class Problem:
    """One kind of problem found in a file, with how often it occurs and a few examples."""

    severity: Severity
    code: str
    message: str
    count: int
    examples: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """The message followed by the examples, on one line."""
        if not self.examples:
            return self.message
        return f"{self.message} (e.g. {'; '.join(self.examples)})"


@dataclass
class Report:
    """The outcome of validating one COCO file: its problems and summary statistics."""

    source: str
    problems: list[Problem]
    stats: dict[str, int]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when there are no errors (warnings allowed)."""
        return not self.errors

    def format(self) -> str:
        """Human-readable report: a header, one line per problem, then the stats."""
        lines = [f"{self.source}: {len(self.errors)} error(s), {len(self.warnings)} warning(s)"]
        lines += [f"  {p.severity} [{p.code}] {p.describe()}" for p in self.problems]
        lines.append("  stats: " + ", ".join(f"{key}={value}" for key, value in self.stats.items()))
        return "\n".join(lines)

    def raise_for_errors(self) -> None:
        """Raise :class:`DataError` listing every error problem; do nothing when :attr:`ok`."""
        errors = self.errors
        if errors:
            details = "; ".join(p.describe() for p in errors)
            raise DataError(f"{self.source}: {len(errors)} problem(s): {details}")


def _empty_stats() -> dict[str, int]:
    return {"n_images": 0, "n_annotations": 0, "n_categories": 0, "n_crowd": 0, "n_images_without_annotations": 0}


# --- small columnar helpers -------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return type(value) is int and _INT64_MIN <= value <= _INT64_MAX


def _is_number(value: Any) -> bool:
    return type(value) in _NUMBER_TYPES


def _is_str(value: Any) -> bool:
    return type(value) is str


def _is_present(value: Any) -> bool:
    return value is not _MISSING


def _column(entries: list, key: str) -> list:
    """``entry[key]`` for every entry, :data:`_MISSING` where absent or the entry is not a dict."""
    return [entry.get(key, _MISSING) if type(entry) is dict else _MISSING for entry in entries]


def _mask(values: list, predicate: Callable[[Any], bool]) -> np.ndarray:
    return np.fromiter(map(predicate, values), dtype=bool, count=len(values))


def _array(values: list, ok: np.ndarray, dtype: type, fill: Any) -> np.ndarray:
    """``values`` as an array aligned with the entries, ``fill`` where ``ok`` is false."""
    return np.array([v if good else fill for v, good in zip(values, ok.tolist())], dtype=dtype)


def _finite_numbers(values: list) -> bool:
    """Whether a list holds only finite numbers.

    Summing in C is several times faster than a per-element type check, which matters for the tens
    of millions of polygon coordinates in COCO train; the price is that booleans pass as numbers.
    """
    try:
        return math.isfinite(sum(values, 0.0))
    except (TypeError, OverflowError):
        return False


def _short(value: Any, limit: int = 60) -> str:
    text = "missing" if value is _MISSING else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _flag(
    problems: list[Problem],
    severity: Severity,
    code: str,
    phrase: str,
    mask: np.ndarray,
    describe: Callable[[int], str],
) -> None:
    """Append a problem for the entries where ``mask`` is true; the message is ``"<count> <phrase>"``."""
    indices = np.flatnonzero(mask)
    if indices.size:
        examples = [describe(int(i)) for i in indices[:MAX_EXAMPLES]]
        problems.append(Problem(severity, code, f"{indices.size} {phrase}", int(indices.size), examples))


@dataclass
class _IdIndex:
    """Sorted unique valid ids of a section and the row of the first entry carrying each."""

    ids: np.ndarray
    rows: np.ndarray

    @classmethod
    def build(cls, ids: np.ndarray, ok: np.ndarray) -> _IdIndex:
        valid_rows = np.flatnonzero(ok)
        unique, first = np.unique(ids[valid_rows], return_index=True)
        return cls(unique, valid_rows[first])

    def lookup(self, query: np.ndarray) -> np.ndarray:
        """Row of the entry with each queried id, -1 where no entry has it."""
        if not len(self.ids):
            return np.full(len(query), -1)
        pos = np.minimum(np.searchsorted(self.ids, query), len(self.ids) - 1)
        return np.where(self.ids[pos] == query, self.rows[pos], -1)


@dataclass
class _Fields:
    """Columns of the required fields of one section and which entries have them all valid."""

    values: dict[str, list]
    ok: dict[str, np.ndarray]

    @property
    def all_ok(self) -> np.ndarray:
        return np.logical_and.reduce(list(self.ok.values()))


def _check_fields(
    entries: list, section: str, kind: str, spec: dict[str, tuple[Callable[[Any], bool], str]],
    problems: list[Problem],
) -> _Fields:
    """Report entries of ``section`` (one entry is a ``kind``) with missing or mistyped fields.

    ``spec`` maps each required field to its predicate and the type named in the message; it must
    include "id", which labels the examples.
    """
    values = {key: _column(entries, key) for key in spec}
    fields = _Fields(values, {key: _mask(values[key], spec[key][0]) for key in spec})
    expected = ", ".join(f"{key}: {type_name}" for key, (_, type_name) in spec.items())

    def describe(i: int) -> str:
        label = f"{section}[{i}]" + (f" (id {values['id'][i]})" if fields.ok["id"][i] else "")
        if type(entries[i]) is not dict:
            return f"{label}: not an object but {_short(entries[i], 30)}"
        bad = [key for key, ok in fields.ok.items() if not ok[i]]
        return f"{label}: " + ", ".join(f"{key}={_short(values[key][i], 30)}" for key in bad)

    phrase = f"{kind} entr(y/ies) with missing or mistyped fields (expected {expected})"
    _flag(problems, "error", f"{kind}_missing_field", phrase, ~fields.all_ok, describe)
    return fields


def _check_duplicates(ids: np.ndarray, ok: np.ndarray, kind: str, problems: list[Problem]) -> None:
    unique, counts = np.unique(ids[ok], return_counts=True)
    repeated = counts > 1
    if repeated.any():
        examples = [f"id {i} x{c}" for i, c in zip(unique[repeated][:MAX_EXAMPLES], counts[repeated])]
        n = int(repeated.sum())
        message = f"{n} {kind} id(s) used by more than one {kind}"
        problems.append(Problem("error", f"duplicate_{kind}_id", message, n, examples))


# --- sections ---------------------------------------------------------------------------------


def _sections(data: dict, problems: list[Problem]) -> dict[str, list | None]:
    """The top-level lists; a missing or non-list section is reported and comes back as None."""
    found = {name: data.get(name) for name in _SECTIONS}
    bad = [name for name, value in found.items() if type(value) is not list]
    if bad:
        examples = [f"{name!r} is {'missing' if name not in data else type(found[name]).__name__}" for name in bad]
        message = f"{len(bad)} top-level section(s) missing or not a list: {', '.join(bad)}"
        problems.append(Problem("error", "missing_section", message, len(bad), examples))
    return {name: (value if name not in bad else None) for name, value in found.items()}


@dataclass
class _Images:
    fields: _Fields
    ids: np.ndarray
    widths: np.ndarray
    heights: np.ndarray
    size_ok: np.ndarray
    index: _IdIndex

    def label(self, i: int) -> str:
        ok = self.fields.ok["id"][i]
        return f"images[{i}]" + (f" (id {self.ids[i]})" if ok else "")


def _check_images(images: list, problems: list[Problem]) -> _Images:
    spec = {"id": (_is_int, "int"), "file_name": (_is_str, "str"), "width": (_is_number, "number"),
            "height": (_is_number, "number")}
    fields = _check_fields(images, "images", "image", spec, problems)
    id_ok = fields.ok["id"]
    ids = _array(fields.values["id"], id_ok, np.int64, 0)
    widths = _array(fields.values["width"], fields.ok["width"], float, np.nan)
    heights = _array(fields.values["height"], fields.ok["height"], float, np.nan)
    size_ok = np.isfinite(widths) & np.isfinite(heights) & (widths > 0) & (heights > 0)
    table = _Images(fields, ids, widths, heights, size_ok, _IdIndex.build(ids, id_ok))
    sized = fields.ok["width"] & fields.ok["height"]
    _flag(problems, "error", "bad_image_size", "image(s) with a non-positive or non-finite width/height",
          sized & ~size_ok, lambda i: f"{table.label(i)}: {widths[i]:g}x{heights[i]:g}")
    _check_duplicates(ids, id_ok, "image", problems)
    return table


@dataclass
class _Categories:
    fields: _Fields
    ids: np.ndarray
    index: _IdIndex


def _check_categories(categories: list, problems: list[Problem]) -> _Categories:
    spec = {"id": (_is_int, "int"), "name": (_is_str, "str")}
    fields = _check_fields(categories, "categories", "category", spec, problems)
    ids = _array(fields.values["id"], fields.ok["id"], np.int64, 0)
    _check_duplicates(ids, fields.ok["id"], "category", problems)
    return _Categories(fields, ids, _IdIndex.build(ids, fields.ok["id"]))


def _boxes(values: list) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 4)`` float boxes (NaN rows where malformed) and the mask of boxes that are 4 finite numbers."""
    ok = _mask(values, lambda b: type(b) is list and len(b) == 4 and _finite_numbers(b))
    boxes = np.full((len(values), 4), np.nan)
    rows = np.flatnonzero(ok)
    if rows.size:
        boxes[rows] = np.array([values[i] for i in rows], dtype=float)
    return boxes, ok


def _polygon_ok(polygon: Any) -> bool:
    return type(polygon) is list and len(polygon) >= 2 and len(polygon) % 2 == 0 and _finite_numbers(polygon)


def _segmentation_ok(seg: Any) -> bool:
    """An RLE dict with counts and size, or a non-empty list of polygons (even-length number lists)."""
    if type(seg) is dict:
        return "counts" in seg and "size" in seg
    return type(seg) is list and len(seg) > 0 and all(map(_polygon_ok, seg))


def _has_short_polygon(seg: Any) -> bool:
    """A polygon of fewer than 3 points: real COCO 2017 has a few; pycocotools rasterises them to
    (almost) nothing, and mask heads should skip them, as detectron2 does."""
    return type(seg) is list and any(type(poly) is list and len(poly) < 6 for poly in seg)


def _check_annotations(
    annotations: list, images: _Images | None, categories: _Categories | None, problems: list[Problem]
) -> dict[str, int]:
    """Check annotations (references only against sections that exist); return annotation stats."""
    spec = {"id": (_is_int, "int"), "image_id": (_is_int, "int"), "category_id": (_is_int, "int"),
            "bbox": (_is_present, "[x, y, w, h]")}
    fields = _check_fields(annotations, "annotations", "annotation", spec, problems)
    ok = fields.ok
    ids = _array(fields.values["id"], ok["id"], np.int64, 0)
    image_ids = _array(fields.values["image_id"], ok["image_id"], np.int64, 0)
    category_ids = _array(fields.values["category_id"], ok["category_id"], np.int64, 0)

    def label(i: int) -> str:
        return f"annotations[{i}]" + (f" (id {ids[i]})" if ok["id"][i] else "")

    _check_duplicates(ids, ok["id"], "annotation", problems)
    raw_boxes = fields.values["bbox"]
    boxes, box_ok = _boxes(raw_boxes)
    _flag(problems, "error", "bad_bbox", "annotation(s) whose bbox is not 4 finite numbers [x, y, w, h]",
          ok["bbox"] & ~box_ok, lambda i: f"{label(i)}: bbox={_short(raw_boxes[i])}")
    image_rows = _check_references(image_ids, ok["image_id"], images, "image", label, problems)
    _check_references(category_ids, ok["category_id"], categories, "category", label, problems)
    n_crowd = _check_optional_fields(annotations, label, problems)
    _check_box_geometry(boxes, box_ok, image_rows, images, label, problems)
    if categories is not None:
        _check_unused_categories(categories, category_ids[ok["category_id"]], problems)
    n_without = 0 if images is None else int((~np.isin(images.index.ids, image_ids[ok["image_id"]])).sum())
    return {"n_crowd": n_crowd, "n_images_without_annotations": n_without}


def _check_references(
    ref_ids: np.ndarray,
    ref_ok: np.ndarray,
    target: _Images | _Categories | None,
    kind: str,
    label: Callable[[int], str],
    problems: list[Problem],
) -> np.ndarray:
    """Report annotations whose ``{kind}_id`` names no entry; return the referenced rows (-1 if none)."""
    if target is None:
        return np.full(len(ref_ids), -1)
    rows = np.where(ref_ok, target.index.lookup(ref_ids), -1)
    phrase = f"annotation(s) with a {kind}_id that is not among the {kind} ids"
    _flag(problems, "error", f"unknown_{kind}_id", phrase, ref_ok & (rows < 0),
          lambda i: f"{label(i)}: {kind}_id {ref_ids[i]}")
    return rows


def _check_optional_fields(annotations: list, label: Callable[[int], str], problems: list[Problem]) -> int:
    """Check iscrowd (0/1), segmentation (polygons or RLE) and area (positive); return the crowd count."""
    crowd = _column(annotations, "iscrowd")
    crowd_bad = _mask(crowd, lambda c: c is not _MISSING and not (type(c) is int and c in (0, 1)))
    _flag(problems, "error", "bad_iscrowd", "annotation(s) with iscrowd other than 0 or 1", crowd_bad,
          lambda i: f"{label(i)}: iscrowd={_short(crowd[i])}")
    segs = _column(annotations, "segmentation")
    seg_bad = _mask(segs, lambda seg: seg is not _MISSING and not _segmentation_ok(seg))
    _flag(problems, "error", "bad_segmentation",
          "annotation(s) whose segmentation is neither polygons (even-length lists of numbers) "
          "nor an RLE dict with counts and size", seg_bad, lambda i: f"{label(i)}: segmentation={_short(segs[i])}")
    seg_short = ~seg_bad & _mask(segs, _has_short_polygon)
    _flag(problems, "warning", "short_polygon", "annotation(s) with a polygon of fewer than 3 points",
          seg_short, lambda i: f"{label(i)}: segmentation={_short(segs[i])}")
    areas = _column(annotations, "area")
    area_ok = _mask(areas, _is_number)
    area_values = _array(areas, area_ok, float, np.nan)
    _flag(problems, "warning", "bad_area", "annotation(s) with a missing, non-numeric or non-positive area",
          ~(area_values > 0), lambda i: f"{label(i)}: area={_short(areas[i])}")
    return sum(1 for c in crowd if type(c) is int and c == 1)


def _check_box_geometry(
    boxes: np.ndarray,
    box_ok: np.ndarray,
    image_rows: np.ndarray,
    images: _Images | None,
    label: Callable[[int], str],
    problems: list[Problem],
) -> None:
    """Warn about degenerate boxes and boxes overhanging their image by more than the tolerance."""
    x, y, w, h = boxes.T
    _flag(problems, "warning", "degenerate_box",
          "annotation box(es) with zero or negative width/height (training drops them)",
          box_ok & ((w <= 0) | (h <= 0)), lambda i: f"{label(i)}: bbox={boxes[i].tolist()}")
    if images is None or not len(images.ids):
        return
    rows = np.maximum(image_rows, 0)
    sized = box_ok & (image_rows >= 0) & images.size_ok[rows]
    width, height = images.widths[rows], images.heights[rows]
    tol = BOX_TOLERANCE_PX
    outside = sized & ((x < -tol) | (y < -tol) | (x + w > width + tol) | (y + h > height + tol))
    _flag(problems, "warning", "box_outside_image",
          f"annotation box(es) extending more than {tol:g} px outside their image (training clips them)",
          outside, lambda i: f"{label(i)}: bbox={boxes[i].tolist()} in {images.label(int(rows[i]))} "
          f"{images.widths[rows[i]]:g}x{images.heights[rows[i]]:g}")


def _check_unused_categories(categories: _Categories, used_ids: np.ndarray, problems: list[Problem]) -> None:
    unused = ~np.isin(categories.index.ids, used_ids)
    rows = categories.index.rows[unused]
    names = categories.fields.values["name"]
    if rows.size:
        examples = [f"id {categories.ids[r]} ({_short(names[r], 30)})" for r in rows[:MAX_EXAMPLES]]
        message = f"{rows.size} categor(y/ies) without any annotation"
        problems.append(Problem("warning", "unused_category", message, int(rows.size), examples))


# --- image files ------------------------------------------------------------------------------


def _check_image_files(images: _Images, images_dir: Path, check_sizes: bool, problems: list[Problem]) -> None:
    """Report image files missing under ``images_dir``; with ``check_sizes`` compare header sizes."""
    names = images.fields.values["file_name"]
    named = images.fields.ok["file_name"]
    exists = np.array([bool(ok) and os.path.isfile(images_dir / n) for n, ok in zip(names, named.tolist())], bool)
    _flag(problems, "error", "missing_image_file", f"image file(s) not found under {images_dir}",
          named & ~exists, lambda i: str(images_dir / names[i]))
    if check_sizes:
        _check_image_sizes(images, images_dir, np.flatnonzero(exists & images.size_ok), problems)


def _read_size(path: Path) -> tuple[int, int] | str:
    """The ``(width, height)`` from the image header, or the reason it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, Image.DecompressionBombError) as exc:
        return f"{type(exc).__name__}: {exc}"


def _check_image_sizes(images: _Images, images_dir: Path, rows: np.ndarray, problems: list[Problem]) -> None:
    names = images.fields.values["file_name"]
    sizes = {int(i): _read_size(images_dir / names[i]) for i in rows}
    unreadable = np.zeros(len(names), dtype=bool)
    mismatch = np.zeros(len(names), dtype=bool)
    for i, size in sizes.items():
        if isinstance(size, str):
            unreadable[i] = True
        else:
            mismatch[i] = size != (images.widths[i], images.heights[i])
    _flag(problems, "error", "unreadable_image", "image file(s) that cannot be opened as images", unreadable,
          lambda i: f"{images_dir / names[i]}: {sizes[i]}")
    _flag(problems, "error", "image_size_mismatch",
          "image(s) whose file size differs from the width/height in the annotations", mismatch,
          lambda i: f"{images_dir / names[i]}: {sizes[i][0]}x{sizes[i][1]} on disk, "
          f"{images.widths[i]:g}x{images.heights[i]:g} in {images.label(i)}")


# --- public API -------------------------------------------------------------------------------


def validate_coco(
    data: Any,
    source: str,
    *,
    images_dir: str | os.PathLike | None = None,
    check_image_files: bool = True,
    check_image_sizes: bool = False,
) -> Report:
    """Validate a parsed COCO instances dict; ``source`` names it in messages.

    With ``images_dir`` (and ``check_image_files``) every ``images_dir/file_name`` must exist; with
    ``check_image_sizes`` too, each image header is read and compared with width/height.
    """
    problems: list[Problem] = []
    stats = _empty_stats()
    if type(data) is not dict:
        message = f"top level is a JSON {type(data).__name__}, not an object with images/annotations/categories"
        return Report(source, [Problem("error", "not_a_dict", message, 1)], stats)
    sections = _sections(data, problems)
    images = None if sections["images"] is None else _check_images(sections["images"], problems)
    categories = None if sections["categories"] is None else _check_categories(sections["categories"], problems)
    if sections["annotations"] is not None:
        stats.update(_check_annotations(sections["annotations"], images, categories, problems))
    if images is not None and images_dir is not None and check_image_files:
        _check_image_files(images, Path(images_dir), check_image_sizes, problems)
    stats.update({f"n_{name}": len(sections[name] or []) for name in _SECTIONS})
    return Report(source, problems, stats)


def check_file(
    path: str | os.PathLike, *, images_dir: str | os.PathLike | None = None, check_image_sizes: bool = False
) -> Report:
    """Validate a COCO file; a missing or malformed file gives a report with one "unreadable" error."""
    try:
        data = read_json(path, what="COCO annotation file")
    except ReplicateError as exc:
        return Report(str(path), [Problem("error", "unreadable", str(exc), 1)], _empty_stats())
    return validate_coco(data, str(path), images_dir=images_dir, check_image_sizes=check_image_sizes)


def _fill_missing_areas(annotations: list[dict]) -> None:
    """COCOeval reads every ground-truth ``area`` (size ranges); a missing or non-positive one (reported
    as ``bad_area``) is replaced by the box area w*h so that evaluation still runs."""
    for ann in annotations:
        area = ann.get("area")
        if not (_is_number(area) and area > 0):
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])


def load_coco(path: str | os.PathLike, *, images_dir: str | os.PathLike | None = None) -> COCO:
    """Read, validate and index a COCO file.

    Errors raise :class:`DataError` naming the file; each warning problem is emitted with
    :func:`warnings.warn` (file and count). The :class:`COCO` object is built from the parsed dict
    without re-reading the file, and pycocotools' progress prints are silenced.
    """
    try:
        data = read_json(path, what="COCO annotation file")
    except ReplicateError as exc:
        raise DataError(str(exc)) from None
    report = validate_coco(data, str(path), images_dir=images_dir)
    report.raise_for_errors()
    for problem in report.warnings:
        warnings.warn(f"{path}: {problem.describe()}", stacklevel=2)
    _fill_missing_areas(data["annotations"])
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco
