"""Where each profile's data lives and at what scale it is read.

Profiles are defined in :mod:`replicate.profiles`: the generated ones (``smoke``, ``proxy``, ``synthetic``;
see :mod:`replicate.data.synth`) and ``coco`` (COCO 2017 from a local folder: nothing is downloaded). Scales are named presets
(:mod:`replicate.data.scales`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from .. import profiles
from ..errors import DataError, ReplicateError
from . import synth
from .coco import CocoDetection
from .scales import SCALE_PRESETS, TEST_SCALES
from .transforms import Scale, test_transforms, train_transforms

@dataclass(frozen=True)
class DataConfig:
    profile: str
    root: Path
    train_ann: str
    train_images: str
    val_ann: str
    val_images: str
    train_scales: tuple[Scale, ...]
    scale_mode: str
    test_scale: Scale
    flip_prob: float = 0.5
    size_divisor: int = 32
    filter_empty_train: bool = True

    @property
    def generated(self) -> bool:
        return profiles.get(self.profile).synth is not None

    def paths(self, split: str) -> tuple[Path, Path]:
        if split not in ("train", "val"):
            raise DataError(f"unknown split {split!r}; use 'train' or 'val'")
        ann, img = (self.train_ann, self.train_images) if split == "train" else (self.val_ann, self.val_images)
        return self.root / ann, self.root / img

    def with_scale(self, preset: str) -> "DataConfig":
        """The same data read at a named scale preset (training and test scale)."""
        if preset not in SCALE_PRESETS:
            raise DataError(f"unknown scale preset {preset!r}; choose from {sorted(SCALE_PRESETS)}")
        scales, mode = SCALE_PRESETS[preset]
        test = TEST_SCALES.get(preset, max(scales, key=lambda s: s[1]))
        return replace(self, train_scales=scales, scale_mode=mode, test_scale=test)


def default_root(profile: str) -> Path:
    return Path(os.environ.get("REPLICATE_DATA", "data")) / profile


def data_config(profile: str, data_root: str | os.PathLike | None = None) -> DataConfig:
    """Where ``profile``'s data lives (``data_root``, else ``$REPLICATE_DATA/<profile>``, else
    ``data/<profile>``) and the scale it is read at (:data:`replicate.profiles.PROFILES`)."""
    try:
        p = profiles.get(profile)
    except ReplicateError as exc:
        raise DataError(str(exc)) from None
    root = Path(data_root) if data_root is not None else default_root(profile)
    scales, mode = SCALE_PRESETS[p.scale]
    test = TEST_SCALES.get(p.scale, max(scales, key=lambda s: s[1]))
    if p.synth is not None:
        return DataConfig(profile, root, "annotations/train.json", "images/train", "annotations/val.json",
                          "images/val", scales, mode, test)
    return DataConfig(profile, root, "annotations/instances_train2017.json", "train2017",
                      "annotations/instances_val2017.json", "val2017", scales, mode, test)


def ensure_data(cfg: DataConfig, *, seed: int = 0, progress: bool = True) -> None:
    """Generate a synthetic profile's data if absent; check that COCO is where it is said to be."""
    if cfg.generated:
        synth.generate(cfg.profile, cfg.root, seed=seed, progress=progress)
        return
    missing = [str(p) for split in ("train", "val") for p in cfg.paths(split) if not p.exists()]
    if missing:
        raise DataError(
            f"{cfg.profile} data not found under {cfg.root}: missing {', '.join(missing)}. Nothing is "
            "downloaded here: pass --data-root (or set REPLICATE_DATA) to a folder holding "
            "annotations/instances_{train,val}2017.json, train2017/ and val2017/."
        )


def build_dataset(cfg: DataConfig, split: str, *, train: bool, seed: int = 0, masks: bool = False) -> CocoDetection:
    """The dataset of one split with the profile's training or test transforms (``masks``: with instance masks)."""
    ann, images = cfg.paths(split)
    if train:
        transforms = train_transforms(cfg.train_scales, cfg.scale_mode, cfg.flip_prob)
    else:
        transforms = test_transforms(cfg.test_scale)
    return CocoDetection(ann, images, transforms, filter_empty=train and cfg.filter_empty_train, seed=seed,
                         masks=masks)
