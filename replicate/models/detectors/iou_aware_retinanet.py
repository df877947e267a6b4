"""IoU-aware RetinaNet (Wu, Li, Wang 2020, "IoU-aware single-stage object detector for accurate
localization", Image and Vision Computing 97; arXiv 1912.05992).

RetinaNet (:mod:`replicate.models.detectors.retinanet`: towers, anchors, max-IoU assignment,
focal loss, smooth L1 with beta 0.11) plus an IoU prediction head:

* Architecture (Sec. 3.1, Fig. 1): a 3x3 conv on the *last feature of the regression tower*
  predicts one IoU logit per anchor (A outputs per location), in parallel with the box regressor
  (the official head ``iou_aware_retina_head.py`` with ``shared_conv=4``). Initialised N(0, 0.01),
  bias 0, like the other RetinaNet convs.
* Training (Sec. 3.2, Eqs. 1-3): for each positive anchor the target is the IoU between the
  regressed box (the anchor decoded with the predicted deltas) and its ground truth; the loss is
  binary cross-entropy with logits, summed over positives and divided by the number of positives,
  weight 1.0, added to RetinaNet's losses (``loss_iou``).
* Gradient through the target (Sec. 3.2 and its ablation): the paper computes the gradient of the
  IoU loss with respect to the IoU *target* as well and back-propagates it into the regression
  branch, reporting that this improves localisation; the official code does the same (its
  ``.detach()`` is commented out). Default ``detach_iou_target=False`` follows both; ``True``
  treats the target as a constant (the usual IoU-branch practice, e.g. MOD's quality branch).
* Inference (Sec. 3.3, Eq. 4): detection confidence ``S = p^(1 - alpha) * IoU^alpha`` with
  ``IoU = sigmoid`` of the IoU logit, alpha = 0.5 (the official code's hard-coded value); the fused
  score is what is thresholded (0.05), ranked (top 1000 per level) and passed to NMS (0.5):
  ``TestConfig(fusion="power", fusion_alpha=0.5, threshold_on="fused")``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._utils import flatten_levels, mean_over_ranks
from ..assigners import Assignment
from ..detector import DetectorConfig
from ..losses import aligned_box_iou, binary_cross_entropy_with_logits
from ..postprocess import TestConfig
from .retinanet import RetinaNetHead, RetinaNetHeadConfig


@dataclass(frozen=True)
class IoUAwareRetinaNetHeadConfig(RetinaNetHeadConfig):
    iou_loss_weight: float = 1.0
    detach_iou_target: bool = False  # False: paper and official code (gradient flows into the box branch)

    def build(self, in_channels: int, num_classes: int) -> "IoUAwareRetinaNetHead":
        return IoUAwareRetinaNetHead(self, in_channels, num_classes)


class IoUAwareRetinaNetHead(RetinaNetHead):
    def __init__(self, cfg: IoUAwareRetinaNetHeadConfig, in_channels: int, num_classes: int) -> None:
        super().__init__(cfg, in_channels, num_classes)
        self.iou_out = nn.Conv2d(cfg.feat_channels, self.num_anchors, 3, padding=1)
        nn.init.normal_(self.iou_out.weight, std=0.01)
        nn.init.constant_(self.iou_out.bias, 0.0)

    def forward(self, feats: list[Tensor]) -> dict[str, list[Tensor]]:
        outs = super().forward(feats)
        outs["iou"] = [self.iou_out(r) for r in outs["reg_feat"]]
        return outs

    def iou_loss(self, iou_logits: Tensor, reg: Tensor, anchors: Tensor, matched: Tensor, pos: Tensor,
                 num_pos: Tensor) -> tuple[Tensor, Tensor]:
        """BCE between the predicted IoU logits of positives and IoU(decoded box, GT) (Sec. 3.2).

        Returns the loss and the (P,) IoU targets, in ``pos.nonzero()`` order.
        """
        b_idx, p_idx = pos.nonzero(as_tuple=True)
        pred_boxes = self.coder.decode(anchors[p_idx], reg[b_idx, p_idx])
        target = aligned_box_iou(pred_boxes, matched[b_idx, p_idx])
        if self.cfg.detach_iou_target:
            target = target.detach()
        loss = binary_cross_entropy_with_logits(iou_logits[b_idx, p_idx], target, reduction="mean",
                                                avg_factor=num_pos)
        return self.cfg.iou_loss_weight * loss, target

    def losses(self, outs: dict[str, list[Tensor]], a: Assignment, matched: Tensor) -> dict[str, Tensor]:
        anchors = torch.cat(self.anchors(outs["cls"]))
        cls = flatten_levels(outs["cls"], self.num_classes)
        reg = flatten_levels(outs["reg"], 4)
        iou = flatten_levels(outs["iou"], 1)[..., 0]
        num_pos = mean_over_ranks(a.num_pos).clamp(min=1.0)
        loss_iou, _ = self.iou_loss(iou, reg, anchors, matched, a.pos_mask, num_pos)
        return {
            "loss_cls": self.classification_loss(cls, a, num_pos),
            "loss_bbox": self.box_loss(reg, anchors, matched, a, num_pos),
            "loss_iou": loss_iou,
        }

    def quality(self, outs: dict[str, list[Tensor]]) -> list[Tensor]:
        """Per level (B, H*W*A) predicted IoU in [0, 1], in anchor order."""
        return [flatten_levels([m], 1)[..., 0].sigmoid() for m in outs["iou"]]


def iou_aware_retinanet() -> DetectorConfig:
    """IoU-aware RetinaNet (Wu et al. 2020): IoU branch on the box tower, score cls^0.5 * IoU^0.5."""
    return DetectorConfig("iou_aware_retinanet", IoUAwareRetinaNetHeadConfig(),
                          test=TestConfig(score_thr=0.05, pre_nms_topk=1000, nms_iou=0.5, max_per_image=100,
                                          fusion="power", fusion_alpha=0.5, threshold_on="fused"))
