"""Two-stage detectors: an RPN proposes, an RoI head classifies and refines (Faster R-CNN with FPN).

The meta-architecture composes :class:`~.rpn.RPNHead` with an RoI head (Faster R-CNN's sibling head,
:class:`~.roi_heads.RoIHead`, or TSD's, :class:`~.tsd.TSDHead`), the way
:class:`~replicate.models.detector.Detector` composes a dense head: it *is* the detector's head. Its
dense part (priors, assignment, the RPN's loss) is the RPN's; :meth:`TwoStageHead.loss` adds the RoI head's
terms on the training proposals, and :meth:`TwoStageHead.predict` runs the RoI head on the test proposals.

The pyramid is FPN's for Faster R-CNN (Lin et al. 2017, Sec. 4): P2-P5 from C2-C5 and P6 by max-pooling
P5 (for the RPN only); the RoI head pools from P2-P5. With a backbone split per task (TSD's ``D_s8/16/32``,
:mod:`~replicate.models.task_split`) the RPN reads one of the two pyramids and the RoI head both. Proposals
are drawn without gradient, so the two stages train jointly as in the approximate joint training of Faster
R-CNN (Sec. 3.2).

Under mixed precision the RoI head and the mask branch run in float32: they run inside the head's loss and
prediction, where :class:`~replicate.models.detector.Detector` turns autocast off (mmdetection's fp16 recipe
runs them in half precision). Only the backbone, neck and RPN conv run in the autocast dtype. On the proxy's
CPU, TSD's step did not get faster with its RoI head under bf16 autocast (one thread, a busy machine:
1406 ms either way), so the float32 path stays.

Mask R-CNN (He et al. 2017) is the same composition with a mask branch beside the RoI head
(:mod:`~.mask_head`): it trains on the positives of the RoI head's sampled proposals and predicts a mask for
each of the RoI head's detections, whichever RoI head it is (``mask_rcnn``, ``tsd_mask_rcnn``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from torch import Tensor

from ..assigners import Assignment
from ..backbone import BackboneConfig
from ..detector import DetectorConfig, NeckConfig
from ..head import DenseHead, Priors
from ..postprocess import TestConfig
from ..task_split import task_pyramid
from .mask_head import MaskHeadConfig
from .roi_heads import RoIHeadConfig, sample_rois
from .rpn import RPNConfig, RPNHead

FPN_P2_P6 = NeckConfig(num_extra=1, extra_from="pool")
C2_C5 = BackboneConfig(out_stages=(1, 2, 3, 4))


@dataclass(frozen=True)
class TwoStageConfig:
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi: Any = field(default_factory=RoIHeadConfig)  # RoIHeadConfig or tsd.TSDHeadConfig
    mask: MaskHeadConfig | None = None  # Mask R-CNN's branch

    @property
    def feat_channels(self) -> int:
        return self.rpn.feat_channels

    @property
    def num_convs(self) -> int:
        return 1  # the RPN's one shared conv

    def narrowed(self, width: int, num_convs: int) -> "TwoStageConfig":
        """The small profiles' detector: the RPN conv ``width`` wide and the RoI head scaled with it."""
        return replace(self, rpn=replace(self.rpn, feat_channels=width), roi=self.roi.narrowed(width),
                       mask=self.mask.narrowed(width) if self.mask is not None else None)

    def build(self, in_channels: int, num_classes: int) -> "TwoStageHead":
        return TwoStageHead(self, in_channels, num_classes)


class TwoStageHead(DenseHead):
    prior_kind = "anchor"

    def __init__(self, cfg: TwoStageConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        self.rpn = RPNHead(cfg.rpn, in_channels)
        self.roi_head = cfg.roi.build(in_channels, num_classes)
        self.mask_head = cfg.mask.build(in_channels, num_classes) if cfg.mask is not None else None

    @property
    def reads_task_pyramids(self) -> bool:
        """Whether the head can read a backbone split per task (:mod:`~replicate.models.task_split`): its RoI
        head gives each task its own branch and it has no mask branch."""
        return self.mask_head is None and getattr(self.roi_head, "reads_task_pyramids", False)

    def forward(self, feats: list[Tensor] | dict[str, list[Tensor]]) -> dict:
        return {**self.rpn(task_pyramid(feats, "rpn")), "feats": feats}

    def priors(self, outs: dict[str, list[Tensor]]) -> Priors:
        return self.rpn.priors(outs)

    def assign_by_rule(self, outs: dict[str, list[Tensor]], targets: list[dict]) -> tuple[Assignment, Tensor]:
        return self.rpn.assign_by_rule(outs, targets)

    def losses(self, outs: dict[str, list[Tensor]], a: Assignment, matched: Tensor) -> dict[str, Tensor]:
        return self.rpn.losses(outs, a, matched)

    def loss(self, outs: dict[str, list[Tensor]], targets: list[dict], batch_hw: tuple[int, int]) -> dict[str, Tensor]:
        terms = super().loss(outs, targets, batch_hw)
        sizes = [tuple(t.get("img_size", batch_hw)) for t in targets]
        proposals = self.rpn.proposals(outs, sizes, training=True)
        s = sample_rois(proposals, targets, self.cfg.roi.sampling, self.num_classes)
        terms.update(self.roi_head.loss(outs["feats"], s))
        if self.mask_head is not None:
            terms.update(self.mask_head.loss(outs["feats"], s, targets))
        return terms

    def predict(self, outs: dict[str, list[Tensor]], image_sizes: list[tuple[int, int]],
                cfg: TestConfig) -> list[dict[str, Tensor]]:
        """Per-image detections; with a mask branch each also has ``masks``, (n, 28, 28) probabilities."""
        proposals = self.rpn.proposals(outs, image_sizes, training=False)
        dets = self.roi_head.predict(outs["feats"], proposals, image_sizes, cfg)
        return self.mask_head.predict(outs["feats"], dets) if self.mask_head is not None else dets


def two_stage(name: str, roi: Any, mask: MaskHeadConfig | None = None) -> DetectorConfig:
    """A two-stage detector on ResNet-50 C2-C5 and FPN P2-P6 with the RoI head ``roi`` (and a mask branch)."""
    return DetectorConfig(name, TwoStageConfig(roi=roi, mask=mask), backbone=C2_C5, neck=FPN_P2_P6)


def faster_rcnn() -> DetectorConfig:
    """Faster R-CNN with FPN (Ren et al. 2015; Lin et al. 2017): RPN + the 2-fc sibling RoI head."""
    return two_stage("faster_rcnn", RoIHeadConfig())


def mask_rcnn() -> DetectorConfig:
    """Mask R-CNN with FPN (He et al. 2017): Faster R-CNN + the mask branch (box and instance-mask AP)."""
    return two_stage("mask_rcnn", RoIHeadConfig(), mask=MaskHeadConfig())
