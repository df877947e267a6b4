"""Named detector presets (``replicate models``) and their scaled-down forms for the CPU profiles.

Each preset is the reference configuration of its paper / mmdetection config for COCO with an
R50-FPN backbone. ``model_config(name, profile)`` adapts it to a data profile: on ``smoke`` and
``synthetic`` the backbone is the narrow ResNet trained from scratch (trainable BatchNorm, nothing
frozen) and the FPN/head are narrower, so a run fits a CPU; the head's design is unchanged.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from ..errors import ReplicateError
from .backbone import BackboneConfig
from .detector import DetectorConfig, NeckConfig
from .detectors.atss import atss
from .detectors.fcos import FCOSHeadConfig
from .detectors.foveabox import foveabox
from .detectors.gfl import gfl
from .detectors.gflv2 import gflv2
from .detectors.iou_aware_retinanet import iou_aware_retinanet
from .detectors.retinanet import ONE_ANCHOR, RetinaNetHeadConfig
from .postprocess import TestConfig

FCOS_NECK = NeckConfig(extra_from="output", relu_before_extra=True)


def retinanet() -> DetectorConfig:
    """RetinaNet (Lin et al. 2017b): 9 anchors, focal loss, smooth L1."""
    return DetectorConfig("retinanet", RetinaNetHeadConfig())


def retinanet_1anchor() -> DetectorConfig:
    """RetinaNet with one square anchor (8 x stride) per location."""
    return DetectorConfig("retinanet_1anchor", RetinaNetHeadConfig(anchors=ONE_ANCHOR))


def fcos_vanilla() -> DetectorConfig:
    """FCOS as in the paper (Tian et al. 2019): centerness on the cls tower, exp distances, IoU loss."""
    return DetectorConfig("fcos_vanilla", FCOSHeadConfig(), neck=FCOS_NECK,
                          test=TestConfig(nms_iou=0.5, fusion="multiply"))


def fcos() -> DetectorConfig:
    """FCOS* with the official code's improvements (the baseline MOD builds on)."""
    head = FCOSHeadConfig(center_sampling=True, norm_on_bbox=True, quality_on_reg=True, box_loss="giou",
                          weight_box_by_centerness=True)
    return DetectorConfig("fcos", head, neck=FCOS_NECK, test=TestConfig(nms_iou=0.6, fusion="sqrt"))


def fcos_giou() -> DetectorConfig:
    """FCOS* whose quality branch predicts the GIoU of its box (MOD's quality branch)."""
    cfg = fcos()
    return replace(cfg, name="fcos_giou", head=replace(cfg.head, quality="giou"))


MODELS: dict[str, Callable[[], DetectorConfig]] = {
    "retinanet": retinanet,
    "retinanet_1anchor": retinanet_1anchor,
    "fcos": fcos,
    "fcos_vanilla": fcos_vanilla,
    "fcos_giou": fcos_giou,
    "atss": atss,
    "gfl": gfl,
    "gflv2": gflv2,
    "foveabox": foveabox,
    "iou_aware_retinanet": iou_aware_retinanet,
}

PROFILE_WIDTHS = {"smoke": (64, 2), "synthetic": (128, 4)}  # (FPN/head channels, tower convs)


def model_config(name: str, profile: str = "coco", num_classes: int | None = None) -> DetectorConfig:
    """The preset ``name`` adapted to a data profile (``coco`` leaves it unchanged)."""
    if name not in MODELS:
        raise ReplicateError(f"unknown model {name!r}; choose from {sorted(MODELS)} (see `replicate models`)")
    cfg = MODELS[name]()
    if num_classes is not None:
        cfg = replace(cfg, num_classes=num_classes)
    if profile in PROFILE_WIDTHS:
        width, convs = PROFILE_WIDTHS[profile]
        cfg = replace(
            cfg,
            backbone=BackboneConfig(name="narrow", norm="bn", frozen_stages=-1),
            neck=replace(cfg.neck, out_channels=width),
            head=replace(cfg.head, feat_channels=width, num_convs=convs),
        )
    elif profile != "coco":
        raise ReplicateError(f"unknown profile {profile!r}; choose from ['coco', 'smoke', 'synthetic']")
    return cfg


def describe(name: str) -> str:
    doc = (MODELS[name].__doc__ or "").strip().splitlines()
    return doc[0] if doc else MODELS[name]().head.__class__.__name__
