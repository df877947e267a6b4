"""PAA (Kim & Lee 2020, "Probabilistic Anchor Assignment with IoU Prediction for Object Detection"), as
mmdetection's ``paa_r50_fpn_1x_coco`` runs it: a baseline MOD compares with (Table 7, Figure 4's text).

ATSS's body (:class:`.atss.ATSSHead`: one 8*stride anchor per location, 4 GN convs per tower, ``DeltaXYWH``
box deltas with stds (0.1, 0.1, 0.2, 0.2) times a per-level scale), with three changes:

* Assignment (Sec. 3.1): :func:`replicate.models.assigners.paa_assign` on the head's own predictions. Each
  anchor pre-assigned to a ground truth (IoU >= 0.1) is scored by the losses it would have as that ground
  truth's positive, the focal loss summed over the classes plus 1.3 x the GIoU loss of its decoded box; the 9
  cheapest per level are the candidates and a two-component GMM on their scores separates the positives.
* The one-channel branch on the regression tower predicts the IoU of the anchor's decoded box with its ground
  truth (Sec. 3.2, "IoU prediction"), trained with binary cross-entropy against that IoU (the box detached),
  weight 0.5, normalised by the number of positives.
* Losses: focal loss over every anchor (the positives PAA selected; every other anchor is background) and the
  GIoU loss of the positives' decoded boxes, weight 1.3 (unweighted, normalised by the number of positives).
* Inference: score ``sqrt(p * IoU)`` (``fusion="sqrt"``), thresholded at 0.05 and ranked on that fused score;
  NMS 0.6, 100 per image, then score voting (Sec. 3.3, ``TestConfig.score_voting``, sigma 0.025).

Crowd regions: the released config does not ignore them (``ignore_iof_thr=-1``); as the repository's other
anchor heads, non-positive anchors covering a crowd box by IoF >= 0.5 leave the classification loss
(``ignore_iof``; ``None`` for the released behaviour).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._utils import flatten_levels
from ..assigners import PAA_BOX_WEIGHT, PAA_POOL_IOU, Assignment, paa_assign, pad_targets
from ..detector import DetectorConfig
from ..losses import aligned_box_iou, binary_cross_entropy_with_logits, focal_pair_cost, giou_loss
from ..postprocess import TestConfig
from .atss import ATSS_NECK, ATSSHead, ATSSHeadConfig

PAA_SCORE_VOTING = 0.025  # the released config's sigma


@dataclass(frozen=True)
class PAAHeadConfig(ATSSHeadConfig):
    box_loss_weight: float = PAA_BOX_WEIGHT
    iou_loss_weight: float = 0.5
    pool_iou: float = PAA_POOL_IOU

    def build(self, in_channels: int, num_classes: int) -> "PAAHead":
        return PAAHead(self, in_channels, num_classes)


class PAAHead(ATSSHead):
    """ATSS's towers and predictors; the centerness branch predicts IoU; PAA's assignment and losses."""

    def assign_by_rule(self, outs: dict[str, list[Tensor]], targets: list[dict]) -> tuple[Assignment, Tensor]:
        """PAA (Sec. 3.1) on the current predictions, scored by the training losses (see the module docstring)."""
        c = self.cfg
        levels = self.anchors(outs["cls"])
        anchors = torch.cat(levels)
        gt_boxes, gt_labels, gt_valid, ig_boxes, ig_valid = (t.to(anchors.device) for t in pad_targets(targets))
        cls = flatten_levels(outs["cls"], self.num_classes).detach()
        reg = flatten_levels(outs["reg"], 4).detach()

        def pair_cost(img: Tensor, anchor: Tensor, gt: Tensor) -> Tensor:
            focal = focal_pair_cost(cls, img, anchor, gt_labels[img, gt], c.focal_alpha, c.focal_gamma)
            boxes = self.coder.decode(anchors[anchor], reg[img, anchor].float())
            return focal + c.box_loss_weight * giou_loss(boxes, gt_boxes[img, gt], reduction="none")

        kw = {}
        if c.ignore_iof is not None:
            kw = dict(ignore_boxes=ig_boxes, ignore_valid=ig_valid, ignore_iof=c.ignore_iof)
        a = paa_assign(anchors, [len(level) for level in levels], gt_boxes, gt_labels, gt_valid, pair_cost,
                       topk=c.topk, pool_iou=c.pool_iou, **kw)
        return a, a.matched_boxes(gt_boxes)

    def losses(self, outs: dict[str, list[Tensor]], a: Assignment, matched: Tensor) -> dict[str, Tensor]:
        c = self.cfg
        loss_cls, num_pos, _, _, pred, gt, iou_logits = self.focal_and_positives(outs, a, matched)
        loss_bbox = giou_loss(pred, gt, reduction="mean", avg_factor=num_pos)
        iou_target = aligned_box_iou(pred.detach(), gt)
        loss_iou = binary_cross_entropy_with_logits(iou_logits, iou_target, reduction="mean", avg_factor=num_pos)
        return {"loss_cls": loss_cls, "loss_bbox": c.box_loss_weight * loss_bbox,
                "loss_iou": c.iou_loss_weight * loss_iou}


def paa() -> DetectorConfig:
    """PAA (Kim & Lee 2020): ATSS's head with an IoU branch, probabilistic anchor assignment, score voting."""
    test = TestConfig(nms_iou=0.6, fusion="sqrt", threshold_on="fused", score_voting=PAA_SCORE_VOTING)
    return DetectorConfig("paa", PAAHeadConfig(), neck=ATSS_NECK, test=test)
