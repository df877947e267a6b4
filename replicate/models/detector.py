"""A dense detector = backbone -> FPN -> head, built from a typed :class:`DetectorConfig`.

The head owns its priors, assignment, losses and decoding (one file per detector under
:mod:`replicate.models.detectors`, the contract in :mod:`replicate.models.head`); this module only composes
them:

* ``detector(images, targets)`` in training returns a dict of named loss terms (every key
  starting with ``loss`` is summed by the engine; each is logged separately);
* ``detector.predict(images, image_sizes)`` returns per-image ``boxes``/``scores``/``labels``
  in the coordinates of the (resized, unpadded) input images.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol, Sequence

import torch
from torch import Tensor, nn

from ..errors import ReplicateError
from ..provenance import jsonable
from .backbone import BackboneConfig, build_backbone
from .fpn import FPN
from .head import DenseHead
from .postprocess import TestConfig
from .task_split import TaskBranch, TaskSplit


@dataclass(frozen=True)
class NeckConfig:
    out_channels: int = 256
    num_extra: int = 2  # P6, P7 on top of P3-P5
    extra_from: str = "input"  # RetinaNet: P6 from C5; FCOS: "output" (from P5)
    relu_before_extra: bool = True


class HeadConfig(Protocol):
    """Every head config is a frozen dataclass with these fields and a ``build`` method."""

    feat_channels: int
    num_convs: int

    def build(self, in_channels: int, num_classes: int) -> DenseHead: ...


@dataclass(frozen=True)
class DetectorConfig:
    name: str
    head: Any  # a HeadConfig dataclass of the detector's module; its build() gives a DenseHead
    num_classes: int = 80
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    test: TestConfig = field(default_factory=TestConfig)
    task_split: TaskSplit = field(default_factory=TaskSplit)  # TSD's D_s8/16/32: a backbone copy per task


class Detector(nn.Module):
    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone)
        n = cfg.neck

        def neck() -> FPN:
            return FPN(self.backbone.out_channels, n.out_channels, n.num_extra, n.extra_from, n.relu_before_extra)

        self.neck = neck()
        self.task_branch = TaskBranch(self.backbone, cfg.task_split, neck) if cfg.task_split.stride else None
        self.head = cfg.head.build(n.out_channels, cfg.num_classes)
        if self.task_branch is not None and not getattr(self.head, "reads_task_pyramids", False):
            raise ReplicateError(f"{cfg.name}: a backbone split per task (task_split.stride={cfg.task_split.stride}) "
                                 "needs a head whose two tasks have their own branches: a two-stage detector with "
                                 "TSD's RoI head without the sibling head (head.roi.sibling=False) and no mask branch")

    def features(self, images: Tensor) -> list[Tensor] | dict[str, list[Tensor]]:
        """The FPN pyramid; with a backbone split per task (:mod:`~.task_split`) a dict of the classification
        (``cls``) and localization (``reg``) pyramids, and under ``rpn`` the one the RPN reads."""
        maps = self.backbone(images)
        if self.task_branch is None:
            return self.neck(maps)
        pyramids = {"cls": self.neck(maps), "reg": self.task_branch(maps)}
        return {**pyramids, "rpn": pyramids[self.cfg.task_split.rpn]}

    def raw_outputs(self, images: Tensor) -> dict:
        """The head's raw maps, in float32 even under autocast (which lowers only the network's convs)."""
        return full_precision(self.head(self.features(images)))

    def forward(self, images: Tensor, targets: list[dict] | None = None) -> dict:
        """Training: the dict of loss terms. Without targets: the head's raw outputs.

        Under mixed precision the backbone, neck and head towers run in the autocast dtype, while
        assignment and losses run in float32 (autocast off), as in mmdetection's fp16 recipe."""
        outs = self.raw_outputs(images)
        if targets is None:
            return outs
        if len(targets) != images.shape[0]:
            raise ReplicateError(f"{images.shape[0]} images but {len(targets)} targets")
        with torch.autocast(images.device.type, enabled=False):
            return self.head.loss(outs, targets, tuple(images.shape[-2:]))

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes: list[tuple[int, int]] | None = None,
                test: TestConfig | None = None) -> list[dict[str, Tensor]]:
        return self.predict_variants(images, image_sizes, [test])[0]

    @torch.no_grad()
    def predict_variants(self, images: Tensor, image_sizes: list[tuple[int, int]] | None,
                         tests: Sequence[TestConfig | None]) -> list[list[dict[str, Tensor]]]:
        """Detections under each test config (``None``: the model's own) from one forward pass.

        Returns one list of per-image detections per entry of ``tests``: re-scoring variants (score
        fusion, its exponent, quality filters, NMS settings) share the raw head outputs.
        """
        if image_sizes is None:
            image_sizes = [tuple(images.shape[-2:])] * images.shape[0]
        outs = self.raw_outputs(images)
        with torch.autocast(images.device.type, enabled=False):
            return [self.head.predict(outs, list(image_sizes), test or self.cfg.test) for test in tests]


def full_precision(value: Any) -> Any:
    """``value`` (tensors in nested dicts, lists and tuples) with every floating tensor in float32."""
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
    if isinstance(value, dict):
        return {k: full_precision(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(full_precision(v) for v in value)
    return value


LATER_MODEL_FIELDS = {"head.reg_init_std": 0.01, "head.salt": None, "head.salt_coarse_weight": 0.5,
                      "head.anchors.octaves": 1, "head.anchor_roiconv": False,
                      "task_split": {"stride": None, "rpn": "cls"}}
"""Model config fields added after records existed (dotted paths into the config as JSON), left out of a run's
identity at these values (the value every run had before the field), so that the runs made before them keep
their names (as :data:`replicate.engine.config.LATER_FIELDS` for the training config)."""


def without_later_fields(model: dict[str, Any]) -> dict[str, Any]:
    """A model config as JSON without the :data:`LATER_MODEL_FIELDS` that hold their earlier values."""
    return _without(model, LATER_MODEL_FIELDS)


def _without(fields: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """``fields`` without the entries of ``later`` (dotted paths) that hold their listed values."""
    nested: dict[str, dict[str, Any]] = {}
    for path, value in later.items():
        name, _, rest = path.partition(".")
        if rest:
            nested.setdefault(name, {})[rest] = value
    kept = {}
    for name, value in fields.items():
        if name in later and value == later[name]:
            continue
        kept[name] = _without(value, nested[name]) if name in nested and isinstance(value, dict) else value
    return kept


def weights_fields(cfg: DetectorConfig) -> dict[str, Any]:
    """The model config as JSON without its test config: what determines the trained weights (a run's
    name and its checkpoints' config hash), so that test-time variants share one trained model."""
    fields = without_later_fields(jsonable(cfg))
    del fields["test"]
    return {**fields, "head_type": type(cfg.head).__name__}


def trains_masks(cfg: DetectorConfig) -> bool:
    """Whether the detector trains on instance masks (a mask branch): its training data must carry them."""
    return getattr(cfg.head, "mask", None) is not None


def build_detector(cfg: DetectorConfig, **overrides) -> Detector:
    """Build a detector from its config (a preset's: :func:`replicate.models.zoo.model_config`)."""
    if not isinstance(cfg, DetectorConfig):
        raise ReplicateError(f"build_detector takes a DetectorConfig, got {type(cfg).__name__} (for a preset name "
                             "use replicate.models.zoo.model_config)")
    if overrides:
        cfg = replace(cfg, **overrides)
    return Detector(cfg)
