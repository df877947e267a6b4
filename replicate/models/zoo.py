"""Named detector presets (``replicate models``) and their scaled-down forms for the CPU profiles.

Each preset is the reference configuration of its paper / mmdetection config for COCO with an
R50-FPN backbone. ``model_config(name, profile)`` adapts it to a data profile: on the generated profiles
the backbone is the narrow ResNet (pretrained on the profile's own training images where the profile
has such weights, else from scratch) and the FPN/head are narrower, so a run fits a CPU; the head's
design is unchanged (:func:`narrowed`, :mod:`replicate.profiles`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import Any, Callable

from .. import profiles
from ..errors import ReplicateError
from .backbone import BackboneConfig
from .detector import DetectorConfig
from .detectors.aligndet import aligndet, aligndet_3x3, aligndet_wo_adm
from .detectors.atss import atss
from .detectors.fcos import fcos, fcos_giou, fcos_vanilla, salt_fcos
from .detectors.foveabox import foveabox
from .detectors.gfl import gfl
from .detectors.gflv2 import gflv2
from .detectors.iou_aware_retinanet import iou_aware_retinanet
from .detectors.mod import foveabox_mod, mod, mod_code, retinanet_mod
from .detectors.paa import paa
from .detectors.retinanet import retinanet, retinanet_1anchor
from .detectors.retinanet_conf import retinanet_conf
from .detectors.reppoints import reppoints, salt_reppoints
from .detectors.salt_net import salt_net, salt_net_code, salt_s1
from .detectors.tsd import tsd, tsd_mask_rcnn
from .detectors.two_stage import faster_rcnn, mask_rcnn

MODELS: dict[str, Callable[[], DetectorConfig]] = {
    "retinanet": retinanet,
    "retinanet_1anchor": retinanet_1anchor,
    "fcos": fcos,
    "fcos_vanilla": fcos_vanilla,
    "fcos_giou": fcos_giou,
    "atss": atss,
    "paa": paa,
    "gfl": gfl,
    "gflv2": gflv2,
    "foveabox": foveabox,
    "iou_aware_retinanet": iou_aware_retinanet,
    "retinanet_conf": retinanet_conf,
    "mod": mod,
    "mod_code": mod_code,
    "retinanet_mod": retinanet_mod,
    "foveabox_mod": foveabox_mod,
    "aligndet": aligndet,
    "aligndet_wo_adm": aligndet_wo_adm,
    "aligndet_3x3": aligndet_3x3,
    "salt_net": salt_net,
    "salt_net_code": salt_net_code,
    "salt_s1": salt_s1,
    "salt_fcos": salt_fcos,
    "reppoints": reppoints,
    "salt_reppoints": salt_reppoints,
    "faster_rcnn": faster_rcnn,
    "tsd": tsd,
    "mask_rcnn": mask_rcnn,
    "tsd_mask_rcnn": tsd_mask_rcnn,
}

DEEP_BACKBONES = ("resnet101", "resnext101_32x8d", "resnext101_64x4d")  # -> narrow_deep on small profiles


def model_config(name: str, profile: str = "coco", num_classes: int | None = None,
                 overrides: dict[str, Any] | None = None, where: str = "") -> DetectorConfig:
    """The preset ``name`` with ``overrides`` (dotted paths, see :func:`apply_overrides`) adapted to a
    data profile (:func:`narrowed` with the profile's :class:`~replicate.profiles.ModelScale`; ``coco``
    leaves it unchanged).

    The overrides are applied before the narrowing, so a row asking for ``backbone.name = resnet101``
    gets the deeper narrow backbone on the small profiles. Explicit overrides of the other backbone
    fields (``backbone.norm``, ``backbone.frozen_stages``) are applied again after it, so that they hold
    on every profile.
    """
    if name not in MODELS:
        raise ReplicateError(f"unknown model {name!r}; choose from {sorted(MODELS)} (see `replicate models`)")
    scale = profiles.get(profile).model
    cfg = apply_overrides(MODELS[name](), overrides or {}, where or name)
    if num_classes is not None:
        cfg = replace(cfg, num_classes=num_classes)
    if scale is not None:
        cfg = narrowed(cfg, scale)
        kept = {k: v for k, v in (overrides or {}).items() if k.startswith("backbone.") and k != "backbone.name"}
        cfg = apply_overrides(cfg, kept, where or name)
    return cfg


def narrowed(cfg: DetectorConfig, scale: profiles.ModelScale) -> DetectorConfig:
    """``cfg`` narrowed for a small profile: the narrow ResNet (``narrow_deep`` for the 101-layer
    backbones, keeping any DCN stages), pretrained and frozen as in the papers when the profile has
    weights for it, else trained from scratch; FPN and head ``scale.width`` wide with ``scale.num_convs``
    tower convs. A head config may define ``narrowed(width, num_convs)`` (a two-stage RoI head, say);
    otherwise its ``feat_channels`` and ``num_convs`` are replaced."""
    narrow = "narrow_deep" if cfg.backbone.name in DEEP_BACKBONES else "narrow"
    weights = scale.weights.get(narrow)
    if weights is not None:
        backbone = BackboneConfig(name=narrow, norm="frozen_bn", frozen_stages=1, dcn_stages=cfg.backbone.dcn_stages,
                                  weights=weights, out_stages=cfg.backbone.out_stages)
    else:
        backbone = BackboneConfig(name=narrow, norm="bn", frozen_stages=-1, dcn_stages=cfg.backbone.dcn_stages,
                                  out_stages=cfg.backbone.out_stages)
    head = cfg.head.narrowed(scale.width, scale.num_convs) if hasattr(cfg.head, "narrowed") else \
        replace(cfg.head, feat_channels=scale.width, num_convs=scale.num_convs)
    return replace(cfg, backbone=backbone, neck=replace(cfg.neck, out_channels=scale.width), head=head)


def apply_overrides(obj: Any, overrides: dict[str, Any], where: str = "") -> Any:
    """A frozen dataclass with dotted-path fields replaced: ``{"head.quality": "giou"}``."""
    for path, value in overrides.items():
        obj = _replace_path(obj, path.split("."), value, where, path)
    return obj


def _replace_path(obj: Any, parts: list[str], value: Any, where: str, path: str) -> Any:
    if not dataclasses.is_dataclass(obj):
        raise ReplicateError(f"{where}: override {path!r}: {type(obj).__name__} has no fields")
    names = {f.name for f in dataclasses.fields(obj)}
    if parts[0] not in names:
        raise ReplicateError(f"{where}: override {path!r}: {type(obj).__name__} has no field {parts[0]!r}; "
                             f"fields are {sorted(names)}")
    if len(parts) == 1:
        current = getattr(obj, parts[0])
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        return dataclasses.replace(obj, **{parts[0]: value})
    return dataclasses.replace(obj, **{parts[0]: _replace_path(getattr(obj, parts[0]), parts[1:], value, where, path)})


def describe(name: str) -> str:
    doc = (MODELS[name].__doc__ or "").strip().splitlines()
    return doc[0] if doc else MODELS[name]().head.__class__.__name__
