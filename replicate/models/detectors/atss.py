"""ATSS (Zhang et al. 2020, "Bridging the Gap Between Anchor-based and Anchor-free Detection via
Adaptive Training Sample Selection"), as mmdetection's ``atss_r50_fpn_1x_coco`` defines it.

* Priors (Sec. 4, "ATSS" rows of Tables 3/5; RetinaNet with A = 1): one square anchor of
  8 * stride per location on P3-P7 (``octave_base_scale=8``, one scale, ratio 1).
* Assignment (Sec. 3.2, Algorithm 1): :func:`replicate.models.assigners.atss_assign` with
  ``topk=9`` -- per level the 9 anchors closest to the GT centre, IoU threshold mean + std,
  anchor centre inside the GT.
* Head (Sec. 4.1 implementation details, built on FCOS): cls and reg towers of 4 x (3x3 conv,
  GroupNorm(32), ReLU); C sigmoid classifiers, 4 box deltas (R-CNN ``DeltaXYWH`` with stds
  ``(0.1, 0.1, 0.2, 0.2)``) multiplied by a learnable per-level ``Scale``, and a one-channel
  centerness branch on the *regression* tower (FCOS Sec. 3.3, as in the ATSS reference code).
* Losses (Sec. 4.1; FCOS Eq. 2): focal loss (alpha 0.25, gamma 2) over non-ignored anchors
  normalised by the mean-over-ranks number of positives; GIoU loss (weight 2.0) on the decoded
  boxes of positives, weighted by the centerness target of the *anchor centre* w.r.t. its GT
  (FCOS Eq. 3) and normalised by the mean-over-ranks sum of those targets; BCE on the centerness
  logits normalised by the number of positives.
* Inference: score = sigmoid(cls) * sigmoid(centerness) (``fusion="multiply"``), threshold 0.05 on
  the class probability, top 1000 per level, NMS 0.6, 100 per image.
* Neck: FPN with P6 from the P5 *output* (``add_extra_convs='on_output'``) and no ReLU before
  the extra convs (mmdetection's default ``relu_before_extra_convs=False``; the maskrcnn-benchmark
  based ATSS / GFL reference code applies a ReLU before P7: ``NeckConfig.relu_before_extra``).

Differences from mmdetection, kept deliberately (options where they matter):

* ``num_pos``: mmdetection counts ``max(positives, 1)`` per image before summing; here the batch
  total is clamped at 1 (the convention of every head in this package).
* The centerness-sum normaliser is clamped at ``box_norm_min`` (1.0, as mmdetection >= 2.x does;
  earlier versions did not clamp).
* Crowd regions: non-positive anchors covering a crowd box by IoF >= ``ignore_iof`` are excluded
  from the classification loss (the repository's RetinaNet convention); mmdetection's ATSS default
  ``ignore_iof_thr=-1`` does not ignore them (``ignore_iof=None``).

:class:`OneAnchorHead` holds what ATSS and GFL / GFLv2 share (towers, per-level scales, the single
anchor per location and the ATSS assignment).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ...errors import ReplicateError
from .._utils import Scale, conv_tower, flatten_levels, init_normal, mean_over_ranks, prior_prob_bias
from ..assigners import Assignment, atss_assign, pad_targets
from ..box_coders import DeltaXYWHCoder, DistanceCoder
from ..detector import DetectorConfig, NeckConfig
from ..losses import binary_cross_entropy_with_logits, giou_loss, sigmoid_focal_loss_labels
from ..head import DenseHead, Priors, anchor_priors
from ..postprocess import TestConfig, postprocess
from ..priors import AnchorConfig
from .fcos import centerness_target
from .retinanet import ONE_ANCHOR, RetinaNetHead

# mmdetection's atss / gfl configs: FPN(add_extra_convs='on_output', num_outs=5), no ReLU before P7.
ATSS_NECK = NeckConfig(extra_from="output", relu_before_extra=False)


def anchor_centres(anchors: Tensor) -> Tensor:
    """(..., 4) xyxy anchors -> (..., 2) centres."""
    return (anchors[..., :2] + anchors[..., 2:]) / 2


@dataclass(frozen=True)
class ATSSHeadConfig:
    feat_channels: int = 256
    num_convs: int = 4
    norm: str | None = "gn"
    anchors: AnchorConfig = field(default_factory=lambda: ONE_ANCHOR)
    topk: int = 9
    ignore_iof: float | None = 0.5  # crowd IoF for ignoring; None: crowds are plain background (mmdet)
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    box_loss_weight: float = 2.0
    centerness_loss_weight: float = 1.0
    box_norm_min: float = 1.0  # clamp of the centerness-sum normaliser
    prior_prob: float = 0.01
    target_means: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    target_stds: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)

    def build(self, in_channels: int, num_classes: int) -> "ATSSHead":
        return ATSSHead(self, in_channels, num_classes)


class OneAnchorHead(DenseHead):
    """Shared body of ATSS / GFL / GFLv2: cls and reg towers, a C-way classifier, a
    ``reg_channels`` regressor scaled per level, one anchor per location, ATSS assignment."""

    def __init__(self, cfg, in_channels: int, num_classes: int, reg_channels: int) -> None:
        super().__init__()
        if cfg.anchors.num_anchors != 1:
            raise ReplicateError(f"{type(self).__name__} needs one anchor per location, got {cfg.anchors.num_anchors}")
        self.cfg, self.num_classes = cfg, num_classes
        self.cls_tower = conv_tower(in_channels, cfg.feat_channels, cfg.num_convs, cfg.norm)
        self.reg_tower = conv_tower(in_channels, cfg.feat_channels, cfg.num_convs, cfg.norm)
        self.cls_out = nn.Conv2d(cfg.feat_channels, num_classes, 3, padding=1)
        self.reg_out = nn.Conv2d(cfg.feat_channels, reg_channels, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in cfg.anchors.strides)
        self._anchor_cache: dict = {}

    def init_weights(self) -> None:
        """N(0, 0.01) for every conv, classifier bias from the prior (RetinaNet Sec. 4.1)."""
        init_normal(self)
        nn.init.constant_(self.cls_out.bias, prior_prob_bias(self.cfg.prior_prob))

    prior_kind = "anchor"
    anchors = RetinaNetHead.anchors  # per-level (H*W, 4) anchors, cached per size and device

    def priors(self, outs: dict[str, list[Tensor]]) -> Priors:
        return anchor_priors(self.anchors(outs["cls"]), self.cfg.anchors.strides, 1)

    def towers(self, feats: list[Tensor]):
        """Yield ``(cls_feat, reg_feat, scaled regression map)`` per level."""
        if len(feats) != len(self.scales):
            raise ReplicateError(f"{type(self).__name__} has {len(self.scales)} levels but got {len(feats)}")
        for x, scale in zip(feats, self.scales):
            c, r = self.cls_tower(x), self.reg_tower(x)
            yield c, r, scale(self.reg_out(r)).float()

    @staticmethod
    def level_strides(levels: list[Tensor], strides: tuple[int, ...]) -> Tensor:
        """(N,) stride of every anchor of the concatenated levels."""
        return torch.cat([torch.full((len(a),), float(s), device=a.device) for a, s in zip(levels, strides)])

    def assign_by_rule(self, outs: dict[str, list[Tensor]], targets: list[dict]) -> tuple[Assignment, Tensor]:
        """The head's own assignment rule (it ignores the predictions; a plug-in assigner may not)."""
        return self.assign_priors(self.anchors(outs["cls"]), targets)

    def assign_priors(self, levels: list[Tensor], targets: list[dict]) -> tuple[Assignment, Tensor]:
        """ATSS assignment (Algorithm 1) for the batch and the matched GT box of every anchor (B, N, 4)."""
        gt_boxes, gt_labels, gt_valid, ig_boxes, ig_valid = pad_targets(targets)
        anchors = torch.cat(levels)
        gt_boxes = gt_boxes.to(anchors.device)
        kw = {}
        if self.cfg.ignore_iof is not None:
            kw = dict(ignore_boxes=ig_boxes.to(anchors.device), ignore_valid=ig_valid.to(anchors.device),
                      ignore_iof=self.cfg.ignore_iof)
        a = atss_assign(anchors, [len(l) for l in levels], gt_boxes, gt_labels.to(anchors.device),
                        gt_valid.to(anchors.device), topk=self.cfg.topk, **kw)
        return a, a.matched_boxes(gt_boxes)


class ATSSHead(OneAnchorHead):
    def __init__(self, cfg: ATSSHeadConfig, in_channels: int, num_classes: int) -> None:
        super().__init__(cfg, in_channels, num_classes, 4)
        self.centerness_out = nn.Conv2d(cfg.feat_channels, 1, 3, padding=1)
        self.coder = DeltaXYWHCoder(cfg.target_means, cfg.target_stds)
        self.init_weights()

    def forward(self, feats: list[Tensor]) -> dict[str, list[Tensor]]:
        cls, reg, ctr = [], [], []
        for c, r, deltas in self.towers(feats):
            cls.append(self.cls_out(c))
            reg.append(deltas)
            ctr.append(self.centerness_out(r))
        return {"cls": cls, "reg": reg, "centerness": ctr}

    def focal_and_positives(self, outs: dict[str, list[Tensor]], a: Assignment, matched: Tensor):
        """What ATSS's and PAA's losses share: the focal loss over the non-ignored anchors (normalised by the
        mean-over-ranks number of positives), and the positives' indices, anchors, decoded boxes, ground truths
        and quality-branch logits: ``(loss_cls, num_pos, (b_idx, p_idx), pos_anchors, pred, gt, logits)``."""
        c = self.cfg
        anchors = torch.cat(self.anchors(outs["cls"]))
        cls = flatten_levels(outs["cls"], self.num_classes)
        reg = flatten_levels(outs["reg"], 4)
        num_pos = mean_over_ranks(a.num_pos).clamp(min=1.0)
        loss_cls = sigmoid_focal_loss_labels(cls, a.labels, ~a.ignore_mask, c.focal_alpha, c.focal_gamma,
                                             avg_factor=num_pos)
        b_idx, p_idx = a.pos_mask.nonzero(as_tuple=True)
        pos_anchors = anchors[p_idx]
        pred = self.coder.decode(pos_anchors, reg[b_idx, p_idx])
        logits = flatten_levels(outs["centerness"], 1)[b_idx, p_idx, 0]
        return loss_cls, num_pos, (b_idx, p_idx), pos_anchors, pred, matched[b_idx, p_idx], logits

    def losses(self, outs: dict[str, list[Tensor]], a: Assignment, matched: Tensor) -> dict[str, Tensor]:
        c = self.cfg
        loss_cls, num_pos, _, pos_anchors, pred, gt, ctr_logits = self.focal_and_positives(outs, a, matched)
        ctr_t = centerness_target(DistanceCoder().encode(anchor_centres(pos_anchors), gt))
        box_norm = mean_over_ranks(ctr_t.sum()).clamp(min=c.box_norm_min)
        loss_bbox = giou_loss(pred, gt, reduction="mean", weight=ctr_t, avg_factor=box_norm)
        loss_ctr = binary_cross_entropy_with_logits(ctr_logits, ctr_t, reduction="mean", avg_factor=num_pos)
        return {"loss_cls": loss_cls, "loss_bbox": c.box_loss_weight * loss_bbox,
                "loss_centerness": c.centerness_loss_weight * loss_ctr}

    def predict(self, outs: dict[str, list[Tensor]], image_sizes: list[tuple[int, int]],
                cfg: TestConfig) -> list[dict[str, Tensor]]:
        levels = self.anchors(outs["cls"])
        probs = [flatten_levels([m], self.num_classes).sigmoid() for m in outs["cls"]]
        quality = [flatten_levels([m], 1)[..., 0].sigmoid() for m in outs["centerness"]]
        regs = [flatten_levels([m], 4) for m in outs["reg"]]

        def decode(level: int, img: Tensor, prior: Tensor) -> Tensor:
            return self.coder.decode(levels[level][prior], regs[level][img, prior])

        return postprocess(probs, decode, image_sizes, cfg, quality)


def atss() -> DetectorConfig:
    """ATSS (Zhang et al. 2020): one 8*stride anchor, adaptive sample selection, centerness, GIoU."""
    return DetectorConfig("atss", ATSSHeadConfig(), neck=ATSS_NECK, test=TestConfig(nms_iou=0.6, fusion="multiply"))
