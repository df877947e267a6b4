"""COCO detection metrics: pycocotools' ``COCOeval`` behind input validation, plus a per-IoU breakdown.

The numbers are those of the COCO evaluation protocol (Lin et al., "Microsoft COCO: Common Objects
in Context", ECCV 2014; https://cocodataset.org/#detection-eval) as implemented by pycocotools'
``COCOeval``: greedy score-ordered matching at ten IoU thresholds 0.50:0.05:0.95, crowd regions
ignored, 101-point interpolated precision, area ranges small < 32² <= medium < 96² <= large.
:func:`evaluate` returns ``COCOeval.stats`` unchanged under :data:`SUMMARY_KEYS` and adds the
single-threshold AP breakdown used in the misalignment literature's tables (e.g. TSD, Song et al.,
CVPR 2020): AP at IoU 0.5, 0.6, 0.7, 0.8, 0.9 for all, small, medium and large objects.

pycocotools answers malformed detections with bare asserts or ``IndexError``; everything a user can
get wrong is therefore checked first and reported as :class:`~replicate.errors.EvaluationError`
whose message starts with the name of the detections' source. Two inputs are accepted with a
warning instead of an error:

* boxes with non-positive width or height (``bbox``) are dropped; they could never match;
* an empty detection list is evaluated as "nothing detected": AP and AR are 0.0 wherever ground
  truth exists (and -1.0, pycocotools' "undefined", for area ranges without ground truth), without
  calling ``COCO.loadRes``, which crashes on an empty list.

Problems with the ground-truth file itself are :class:`~replicate.errors.DataError` from
:func:`replicate.data.validate.load_coco`.

Two backends run the protocol (``backend=``): ``"pycocotools"``, the reference and the default, and
``"faster-coco-eval"`` (the optional ``faster-coco-eval`` package, a C++ re-implementation with
pycocotools' interface), about 9x faster on a COCO-sized result file (``replicate bench eval``). Both
read the same validated results; ``tests/test_evaluation_backends.py`` checks that every number agrees
to 1e-12 (float rounding: pycocotools adds an epsilon to precision's denominator) on the protocol's
pitfall cases (crowds, images without ground truth, categories without ground truth, more
than ``maxDets`` detections, tied scores, area-range borders, empty results), and
``replicate bench eval`` times both on a COCO-sized result file.
"""

from __future__ import annotations

import contextlib
import io
import os
import reprlib
import warnings
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data.validate import load_coco
from ..errors import EvaluationError, ReplicateError
from ..io import read_json

SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
"""Names of ``COCOeval.stats``, in pycocotools' order."""

IOU_BREAKDOWN = (50, 60, 70, 80, 90)
"""IoU thresholds (percent) of the single-threshold AP breakdown."""

IOU_TYPES = ("bbox", "segm")

BACKENDS = ("pycocotools", "faster-coco-eval")
"""COCOeval implementations :func:`evaluate` can run; the first is the reference and the default."""

_AREA_SUFFIXES = (("", "all"), ("_s", "small"), ("_m", "medium"), ("_l", "large"))
_BREAKDOWN_MAX_DETS = 100
_MAX_EXAMPLES = 5
_MAX_LISTED_CATEGORIES = 10

# What each summary number is, as pycocotools prints it: (IoU, area, maxDets).
_SUMMARY_DESCRIPTIONS = {
    "AP": ("0.50:0.95", "all", 100),
    "AP50": ("0.50", "all", 100),
    "AP75": ("0.75", "all", 100),
    "APs": ("0.50:0.95", "small", 100),
    "APm": ("0.50:0.95", "medium", 100),
    "APl": ("0.50:0.95", "large", 100),
    "AR1": ("0.50:0.95", "all", 1),
    "AR10": ("0.50:0.95", "all", 10),
    "AR100": ("0.50:0.95", "all", 100),
    "ARs": ("0.50:0.95", "small", 100),
    "ARm": ("0.50:0.95", "medium", 100),
    "ARl": ("0.50:0.95", "large", 100),
}

PathLike = str | os.PathLike


def evaluate(
    gt: COCO | PathLike,
    detections: list[dict[str, Any]] | PathLike,
    iou_type: str = "bbox",
    *,
    dets_source: str = "detections",
    backend: str = "pycocotools",
) -> dict[str, float]:
    """COCO AP/AR of ``detections`` against ``gt`` (pycocotools ``COCOeval``: evaluate, accumulate, summarize).

    ``gt`` is a pycocotools ``COCO`` object or the path of a COCO annotation file (read with
    :func:`~replicate.data.validate.load_coco`). ``detections`` is a list of COCO result dicts
    (``image_id``, ``category_id``, ``score`` and ``bbox`` = [x, y, w, h] or ``segmentation``) or the
    path of a COCO results JSON file. ``dets_source`` names an in-memory list in error messages.

    Returns the twelve :data:`SUMMARY_KEYS` (fractions, exactly ``COCOeval.stats``) followed by
    ``AP{t}``, ``AP{t}_s``, ``AP{t}_m``, ``AP{t}_l`` for ``t`` in :data:`IOU_BREAKDOWN` (``AP50``
    appears once; the breakdown value equals ``stats[1]``). -1.0 means no ground truth in that range.
    As pycocotools does, a ``segm`` evaluation converts the ground truth's polygons to RLE in place.
    ``backend`` is one of :data:`BACKENDS`.
    """
    if isinstance(detections, (str, os.PathLike)):
        source = str(detections)
        records = _read_detections(detections)
    else:
        source = dets_source
        records = detections
    if iou_type not in IOU_TYPES:
        raise EvaluationError(f"{source}: iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    if backend not in BACKENDS:
        raise EvaluationError(f"{source}: backend must be one of {BACKENDS}, got {backend!r}")
    coco_gt = gt if isinstance(gt, COCO) else load_coco(gt)
    results = _validated_results(coco_gt, records, iou_type, source)
    cocoeval = _run_cocoeval(coco_gt, results, iou_type, backend)
    metrics = {key: float(value) for key, value in zip(SUMMARY_KEYS, cocoeval.stats)}
    metrics.update(_iou_breakdown(cocoeval))
    return metrics


def evaluate_files(gt_path: PathLike, dets_path: PathLike, iou_type: str = "bbox",
                   backend: str = "pycocotools") -> dict[str, float]:
    """:func:`evaluate` a COCO annotation file against a COCO results file."""
    return evaluate(gt_path, dets_path, iou_type, backend=backend)


def format_summary(metrics: dict[str, float]) -> str:
    """A plain-text table of the output of :func:`evaluate`, in percent with one decimal ("-" = no GT)."""
    lines = ["COCO metrics (percent)"]
    for key in SUMMARY_KEYS:
        iou, area, max_dets = _SUMMARY_DESCRIPTIONS[key]
        lines.append(
            f"  {key:<6} IoU={iou:<9} area={area:<6} maxDets={max_dets:<3} {_percent(metrics[key]):>6}"
        )
    lines.append(f"AP at a single IoU threshold (maxDets={_BREAKDOWN_MAX_DETS}, percent)")
    lines.append("  IoU   " + "".join(f"{area:>8}" for _, area in _AREA_SUFFIXES))
    for thr in IOU_BREAKDOWN:
        row = "".join(f"{_percent(metrics[f'AP{thr}{suffix}']):>8}" for suffix, _ in _AREA_SUFFIXES)
        lines.append(f"  {thr / 100:.2f}  {row}")
    return "\n".join(lines)


def _percent(value: float) -> str:
    return "-" if value < 0 else f"{100 * value:.1f}"


# ---------------------------------------------------------------------------------------------
# Validation of detections


def _read_detections(path: PathLike) -> Any:
    try:
        return read_json(path, what="detections file")
    except ReplicateError as exc:
        raise EvaluationError(str(exc)) from None


def _validated_results(gt: COCO, records: Any, iou_type: str, source: str) -> list[dict[str, Any]]:
    """Check ``records`` against ``gt`` and return fresh result dicts for ``COCO.loadRes``.

    Fresh dicts carry only the fields pycocotools needs, so the caller's list is not mutated by
    ``loadRes`` and, for ``segm``, no ``bbox`` makes ``loadRes`` use box areas instead of mask areas
    (the same precaution as detectron2's COCO evaluator).
    """
    geometry_key = "bbox" if iou_type == "bbox" else "segmentation"
    _check_structure(records, ("image_id", "category_id", "score", geometry_key), source)
    if not records:
        warnings.warn(f"no detections in {source}: every AP and AR is 0 where ground truth exists", stacklevel=3)
        return []
    image_ids = _numeric_column([r["image_id"] for r in records], "image_id", "an integer", (), "iu", source)
    category_ids = _numeric_column([r["category_id"] for r in records], "category_id", "an integer", (), "iu", source)
    scores = _numeric_column([r["score"] for r in records], "score", "a finite number", (), "iuf", source)
    _check_finite(scores, "score", source)
    _check_known_images(gt, image_ids, source)
    _check_known_categories(gt, category_ids, source)
    if iou_type == "bbox":
        return _bbox_results(records, image_ids, category_ids, scores, source)
    return _segm_results(gt, records, image_ids, category_ids, scores, source)


def _bbox_results(
    records: list[dict[str, Any]], image_ids: np.ndarray, category_ids: np.ndarray, scores: np.ndarray, source: str
) -> list[dict[str, Any]]:
    boxes = _numeric_column(
        [r["bbox"] for r in records], "bbox", "4 finite numbers [x, y, width, height]", (4,), "iuf", source
    )
    _check_finite(boxes, "bbox", source)
    keep = _non_degenerate(boxes, source)
    return [
        {"image_id": i, "category_id": c, "bbox": b, "score": s}
        for i, c, b, s in zip(
            image_ids[keep].tolist(), category_ids[keep].tolist(), boxes[keep].tolist(), scores[keep].tolist()
        )
    ]


def _segm_results(
    gt: COCO,
    records: list[dict[str, Any]],
    image_ids: np.ndarray,
    category_ids: np.ndarray,
    scores: np.ndarray,
    source: str,
) -> list[dict[str, Any]]:
    masks = _rle_masks(gt, [r["segmentation"] for r in records], image_ids.tolist(), source)
    return [
        {"image_id": i, "category_id": c, "segmentation": m, "score": s}
        for i, c, m, s in zip(image_ids.tolist(), category_ids.tolist(), masks, scores.tolist())
    ]


def _check_structure(records: Any, keys: tuple[str, ...], source: str) -> None:
    if not isinstance(records, list):
        raise EvaluationError(
            f"{source}: detections must be a list of COCO result objects, got {type(records).__name__}"
        )
    not_dicts = [i for i, r in enumerate(records) if not isinstance(r, dict)]
    if not_dicts:
        raise EvaluationError(
            f"{source}: {len(not_dicts)} entries are not objects, e.g. at index {not_dicts[:_MAX_EXAMPLES]}"
        )
    for key in keys:
        lacking = [i for i, r in enumerate(records) if key not in r]
        if lacking:
            raise EvaluationError(
                f"{source}: {len(lacking)} detections lack {key!r}, e.g. at index {lacking[:_MAX_EXAMPLES]} "
                f"(each needs {', '.join(keys)})"
            )


def _as_array(values: Any) -> np.ndarray | None:
    try:
        return np.asarray(values)
    except (TypeError, ValueError):  # ragged nesting
        return None


def _is_numeric(array: np.ndarray | None, kinds: str, tail: tuple[int, ...]) -> bool:
    return array is not None and array.dtype.kind in kinds and array.shape[1:] == tail


def _numeric_column(
    values: list[Any], name: str, expected: str, tail: tuple[int, ...], kinds: str, source: str
) -> np.ndarray:
    """``values`` as one array of dtype kind in ``kinds`` and shape ``(n, *tail)``, or an error naming the culprits."""
    array = _as_array(values)
    if _is_numeric(array, kinds, tail):
        return array
    bad = [i for i, value in enumerate(values) if not _is_numeric(_as_array([value]), kinds, tail)]
    raise EvaluationError(
        f"{source}: {name} must be {expected}; {len(bad)} detections violate this, "
        f"e.g. at index {bad[:_MAX_EXAMPLES]}: {reprlib.repr([values[i] for i in bad[:_MAX_EXAMPLES]])}"
    )


def _check_finite(array: np.ndarray, name: str, source: str) -> None:
    finite = np.isfinite(array).reshape(len(array), -1).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise EvaluationError(
            f"{source}: {bad.size} detections have a non-finite {name}, e.g. at index {bad[:_MAX_EXAMPLES].tolist()}"
        )


def _check_known_images(gt: COCO, image_ids: np.ndarray, source: str) -> None:
    unknown = ~np.isin(image_ids, np.asarray(gt.getImgIds()))
    if unknown.any():
        ids = np.unique(image_ids[unknown])
        raise EvaluationError(
            f"{source}: {int(unknown.sum())} detections refer to {ids.size} image ids that are not in the "
            f"ground truth, e.g. {ids[:_MAX_EXAMPLES].tolist()}"
        )


def _check_known_categories(gt: COCO, category_ids: np.ndarray, source: str) -> None:
    known = np.asarray(sorted(gt.getCatIds()))
    unknown = ~np.isin(category_ids, known)
    if unknown.any():
        ids = np.unique(category_ids[unknown])
        listed = ids[:_MAX_LISTED_CATEGORIES].tolist()
        more = f" and {ids.size - len(listed)} more" if ids.size > len(listed) else ""
        raise EvaluationError(
            f"{source}: {int(unknown.sum())} detections use category ids not in the ground-truth categories: "
            f"{listed}{more} (known ids: {known.tolist()})"
        )


def _non_degenerate(boxes: np.ndarray, source: str) -> np.ndarray:
    keep = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
    dropped = int((~keep).sum())
    if dropped:
        warnings.warn(
            f"{source}: dropped {dropped} of {len(boxes)} detections with non-positive width or height",
            stacklevel=5,
        )
    return keep


def _rle_masks(gt: COCO, segmentations: list[Any], image_ids: list[int], source: str) -> list[dict[str, Any]]:
    """Each segmentation as compressed RLE (the form ``COCO.loadRes`` requires), via ``COCO.annToRLE``.

    Polygons and uncompressed RLE are converted at the image size from the ground truth; compressed
    RLE must already have that size.
    """
    masks = []
    for index, (segmentation, image_id) in enumerate(zip(segmentations, image_ids)):
        image = gt.imgs[image_id]
        size = [image["height"], image["width"]]
        if not (_is_polygon_list(segmentation) or _is_rle(segmentation, size)):
            raise EvaluationError(
                f"{source}: detection {index} has a segmentation that is neither polygons (lists of >= 3 x, y "
                f"pairs) nor RLE of the image's size {size} (a dict with 'size' and 'counts')"
            )
        masks.append(gt.annToRLE({"image_id": image_id, "segmentation": segmentation}))
    return masks


def _is_polygon_list(segmentation: Any) -> bool:
    return (
        isinstance(segmentation, list)
        and len(segmentation) > 0
        and all(
            isinstance(polygon, list)
            and len(polygon) >= 6
            and len(polygon) % 2 == 0
            and _is_numeric(_as_array(polygon), "iuf", ())
            and bool(np.isfinite(polygon).all())
            for polygon in segmentation
        )
    )


def _is_rle(segmentation: Any, size: list[int]) -> bool:
    if not (isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation):
        return False
    counts = segmentation["counts"]
    valid_counts = isinstance(counts, (str, bytes)) or (
        isinstance(counts, list) and _is_numeric(_as_array(counts), "iu", ())
    )
    return valid_counts and list(segmentation["size"]) == size


# ---------------------------------------------------------------------------------------------
# The COCOeval backends


def _run_cocoeval(gt: COCO, results: list[dict[str, Any]], iou_type: str, backend: str = "pycocotools"):
    """``COCOeval.evaluate/accumulate/summarize`` of ``backend`` with its progress prints silenced."""
    if backend == "pycocotools":
        coco_cls, eval_cls, gt_ = COCO, COCOeval, gt
    else:
        coco_cls, eval_cls = _faster_coco_eval()
        gt_ = coco_cls()
        gt_.dataset = gt.dataset
        gt_.createIndex()
    with contextlib.redirect_stdout(io.StringIO()):
        detections = gt_.loadRes(results) if results else _empty_results(gt_, coco_cls)
        cocoeval = eval_cls(gt_, detections, iou_type)
        cocoeval.evaluate()
        cocoeval.accumulate()
        cocoeval.summarize()
    return cocoeval


def _faster_coco_eval():
    try:
        from faster_coco_eval import COCO as FasterCOCO
        from faster_coco_eval import COCOeval_faster
    except ImportError as exc:
        raise EvaluationError(
            "backend 'faster-coco-eval' needs the faster-coco-eval package (pip install faster-coco-eval==1.8.0, "
            f"or pip install -e '.[fast-eval]'); backend 'pycocotools' needs nothing more ({exc})"
        ) from None
    return FasterCOCO, COCOeval_faster


def _empty_results(gt, coco_cls=COCO):
    """A result set with no detections (what ``loadRes`` would build, were it not to crash on [])."""
    empty = coco_cls()
    empty.dataset = {
        "images": list(gt.dataset["images"]),
        "categories": list(gt.dataset["categories"]),
        "annotations": [],
    }
    empty.createIndex()
    return empty


def _iou_breakdown(cocoeval) -> dict[str, float]:
    """AP at each of :data:`IOU_BREAKDOWN` per area range, as pycocotools' ``_summarize(1, iouThr=t, areaRng=a)``.

    The threshold is looked up with a tolerance: ``Params.iouThrs`` comes from ``np.linspace`` and
    holds 0.8999999999999999, so pycocotools' own ``iouThr == p.iouThrs`` test finds no 0.9.
    """
    params = cocoeval.params
    precision = cocoeval.eval["precision"]  # [T, R, K, A, M]
    max_dets_index = params.maxDets.index(_BREAKDOWN_MAX_DETS)
    breakdown = {}
    for thr in IOU_BREAKDOWN:
        t = int(np.flatnonzero(np.isclose(params.iouThrs, thr / 100))[0])
        for suffix, area in _AREA_SUFFIXES:
            selected = precision[t, :, :, params.areaRngLbl.index(area), max_dets_index]
            breakdown[f"AP{thr}{suffix}"] = _mean_defined(selected)
    return breakdown


def _mean_defined(precision: np.ndarray) -> float:
    """Mean over entries > -1 (-1 marks categories without ground truth); -1.0 if there are none."""
    defined = precision[precision > -1]
    return float(np.mean(defined)) if defined.size else -1.0
