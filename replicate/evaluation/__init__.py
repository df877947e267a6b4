"""COCO evaluation: pycocotools metrics behind input validation, and model outputs to COCO results."""

from .coco_eval import IOU_BREAKDOWN, SUMMARY_KEYS, evaluate, evaluate_files, format_summary
from .detections import to_coco_results, write_detections

__all__ = [
    "IOU_BREAKDOWN",
    "SUMMARY_KEYS",
    "evaluate",
    "evaluate_files",
    "format_summary",
    "to_coco_results",
    "write_detections",
]
