"""RetinaNet-Conf (Wu, Chen, Zhang, Li, "Improvement of Classification in One-Stage Detector",
arXiv 2011.10465; text in ``shared/papers/002_*.txt``).

RetinaNet (:mod:`.retinanet`) plus an *object-confidence* branch that shares the classification
tower:

* Architecture (Sec. 3.1, Fig. 3(d)): one 3x3 conv on the last feature of the **classification**
  tower, one sigmoid output per anchor (class-agnostic, A per location), initialised N(0, 0.01) with
  bias 0 like the other RetinaNet convs. ``obj_on="reg"`` puts it on the regression tower instead,
  which is IoU-aware RetinaNet's placement (Fig. 3(b)), for ablations.
* Target (Sec. 3.1: "the target of new task is same with that of IoU task proposed in (b)"; Sec. 4,
  Table 5 discussion: "the target of IoU task or object confidence is decided by localization
  task"): for each positive anchor, the IoU between the box *predicted* for it (the anchor decoded
  with the live regression output) and its matched ground truth. The released code does the same
  (``bbox_overlaps(decoded pred, decoded target, is_aligned=True)``). The paper does not say whether
  the target is detached; the released code does not detach it, so by default the loss also
  back-propagates into the regression branch through the target (``detach_obj_target=False``).
* Loss (Sec. 3.2): Eq. 9, binary cross-entropy of the positives only, divided by the number of
  positives; Eq. 10, total = focal + L1 box + object confidence with weights 1/1/1. The box loss is
  the L1 of MMDetection's RetinaNet (Eq. 5), not the paper-of-RetinaNet smooth L1.
* Loss variants of Table 2 (``obj_loss``), all normalised by the number of positives:
  ``"l1"`` ``|y - p|``, ``"smooth_l1"`` (beta ``obj_smooth_l1_beta``, MMDetection's default 1.0, which
  on residuals in [0, 1] is half the squared error), ``"l2"`` ``(y - p)^2``, ``"gfocal"`` Eq. 13
  ``|y - p|^gamma * CE(p, y)`` (gamma 2, as GFL's QFL; positives only, as the paper states), ``"ce"``
  Eq. 9, and ``"ce_w"`` (CE^w: Eq. 9 plus ``w * CE(p, 0)`` summed over the negative anchors, w =
  ``obj_neg_weight``, 1e-4 or 1e-3 in Table 2).
* Inference (Sec. 3.3, Eq. 11): ``product = obj^alpha * cls^(1 - alpha)``, alpha = 0.4, ranks the
  candidates and guides NMS: ``TestConfig(fusion="power", fusion_alpha=0.4)``. As in the released code
  (MMDetection's ``multiclass_nms`` on the fused scores) the 0.05 threshold applies to the product.
  The optional ``obj > 0.5`` filter of Table 4 is ``TestConfig.quality_thr=0.5``. The released code
  forms the product only on levels with more than 1000 anchors (``TestConfig.fusion_min_priors=1000``,
  off by default: the paper fuses everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...errors import ReplicateError
from .._utils import flatten_levels, mean_over_ranks
from ..assigners import Assignment
from ..detector import DetectorConfig
from ..losses import aligned_box_iou, binary_cross_entropy_with_logits, smooth_l1_loss
from ..postprocess import TestConfig
from .retinanet import RetinaNetHead, RetinaNetHeadConfig

OBJ_LOSSES = ("ce", "ce_w", "l1", "smooth_l1", "l2", "gfocal")


@dataclass(frozen=True)
class RetinaNetConfHeadConfig(RetinaNetHeadConfig):
    box_loss: str = "l1"  # Eq. 5: MMDetection's RetinaNet
    obj_on: str = "cls"  # "cls": the paper (Fig. 3(d)); "reg": IoU-aware RetinaNet's tower
    obj_loss: str = "ce"  # one of OBJ_LOSSES (Table 2); "ce" is Eq. 9
    obj_loss_weight: float = 1.0  # Eq. 10
    obj_neg_weight: float = 1e-4  # w of CE^w (Table 2)
    obj_gamma: float = 2.0  # exponent of the GFocal variant (Eq. 13)
    obj_smooth_l1_beta: float = 1.0
    detach_obj_target: bool = False  # paper silent; the released code back-propagates through the IoU

    def build(self, in_channels: int, num_classes: int) -> "RetinaNetConfHead":
        return RetinaNetConfHead(self, in_channels, num_classes)


def object_confidence_loss(logits: Tensor, target: Tensor, kind: str, *, neg_logits: Tensor | None = None,
                           neg_weight: float = 1e-4, gamma: float = 2.0, smooth_l1_beta: float = 1.0) -> Tensor:
    """Summed object-confidence loss of Table 2 (divide by the number of positives outside).

    Args:
        logits: (P,) object-confidence logits of the positive anchors.
        target: (P,) their IoU targets in [0, 1].
        kind: one of :data:`OBJ_LOSSES`.
        neg_logits: (Q,) logits of the negative anchors (used by ``"ce_w"`` only, target 0).
    """
    p = logits.sigmoid()
    if kind == "ce":
        return binary_cross_entropy_with_logits(logits, target, reduction="sum")
    if kind == "ce_w":
        if neg_logits is None:
            raise ReplicateError("object-confidence loss 'ce_w' needs the negatives' logits")
        neg = binary_cross_entropy_with_logits(neg_logits, torch.zeros_like(neg_logits), reduction="sum")
        return binary_cross_entropy_with_logits(logits, target, reduction="sum") + neg_weight * neg
    if kind == "l1":
        return (p - target).abs().sum()
    if kind == "smooth_l1":
        return smooth_l1_loss(p, target, smooth_l1_beta, reduction="sum")
    if kind == "l2":
        return (p - target).pow(2).sum()
    if kind == "gfocal":
        ce = binary_cross_entropy_with_logits(logits, target)
        return ((p - target).abs().pow(gamma) * ce).sum()
    raise ReplicateError(f"unknown object-confidence loss {kind!r}; choose from {OBJ_LOSSES}")


class RetinaNetConfHead(RetinaNetHead):
    def __init__(self, cfg: RetinaNetConfHeadConfig, in_channels: int, num_classes: int) -> None:
        if cfg.obj_on not in ("cls", "reg"):
            raise ReplicateError(f"RetinaNet-Conf obj_on must be 'cls' or 'reg', got {cfg.obj_on!r}")
        if cfg.obj_loss not in OBJ_LOSSES:
            raise ReplicateError(f"unknown object-confidence loss {cfg.obj_loss!r}; choose from {OBJ_LOSSES}")
        super().__init__(cfg, in_channels, num_classes)
        self.obj_out = nn.Conv2d(cfg.feat_channels, self.num_anchors, 3, padding=1)
        nn.init.normal_(self.obj_out.weight, std=0.01)
        nn.init.constant_(self.obj_out.bias, 0.0)

    def forward(self, feats: list[Tensor]) -> dict[str, list[Tensor]]:
        outs = super().forward(feats)
        outs["obj"] = [self.obj_out(f) for f in outs[f"{self.cfg.obj_on}_feat"]]
        return outs

    def obj_targets(self, reg: Tensor, anchors: Tensor, matched: Tensor, pos: Tensor) -> Tensor:
        """(P,) IoU(predicted box, matched GT) of the positives, in ``pos.nonzero()`` order."""
        b_idx, p_idx = pos.nonzero(as_tuple=True)
        pred_boxes = self.coder.decode(anchors[p_idx], reg[b_idx, p_idx])
        target = aligned_box_iou(pred_boxes, matched[b_idx, p_idx])
        return target.detach() if self.cfg.detach_obj_target else target

    def obj_loss(self, obj: Tensor, reg: Tensor, anchors: Tensor, matched: Tensor, a: Assignment,
                 num_pos: Tensor) -> Tensor:
        c = self.cfg
        pos = a.pos_mask
        target = self.obj_targets(reg, anchors, matched, pos)
        neg = obj[a.neg_mask] if c.obj_loss == "ce_w" else None
        total = object_confidence_loss(obj[pos], target, c.obj_loss, neg_logits=neg, neg_weight=c.obj_neg_weight,
                                       gamma=c.obj_gamma, smooth_l1_beta=c.obj_smooth_l1_beta)
        return c.obj_loss_weight * total / num_pos

    def losses(self, outs: dict[str, list[Tensor]], a: Assignment, matched: Tensor) -> dict[str, Tensor]:
        anchors = torch.cat(self.anchors(outs["cls"]))
        cls = flatten_levels(outs["cls"], self.num_classes)
        reg = flatten_levels(outs["reg"], 4)
        obj = flatten_levels(outs["obj"], 1)[..., 0]
        num_pos = mean_over_ranks(a.num_pos).clamp(min=1.0)
        return {
            "loss_cls": self.classification_loss(cls, a, num_pos),
            "loss_bbox": self.box_loss(reg, anchors, matched, a, num_pos),
            "loss_obj": self.obj_loss(obj, reg, anchors, matched, a, num_pos),
        }

    def quality(self, outs: dict[str, list[Tensor]]) -> list[Tensor]:
        """Per level (B, H*W*A) object confidence in [0, 1], in anchor order."""
        return [flatten_levels([m], 1)[..., 0].sigmoid() for m in outs["obj"]]


def retinanet_conf() -> DetectorConfig:
    """RetinaNet-Conf (Wu et al.): object confidence on the cls tower, score obj^0.4 * cls^0.6."""
    return DetectorConfig("retinanet_conf", RetinaNetConfHeadConfig(),
                          test=TestConfig(score_thr=0.05, pre_nms_topk=1000, nms_iou=0.5, max_per_image=100,
                                          fusion="power", fusion_alpha=0.4, threshold_on="fused"))
