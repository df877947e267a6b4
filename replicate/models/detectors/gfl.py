"""GFL (Li et al. 2020, "Generalized Focal Loss: Learning Qualified and Distributed Bounding Boxes for
Dense Object Detection", NeurIPS), as mmdetection's ``gfl_r50_fpn_1x_coco`` defines it.

* Priors and assignment: ATSS's (one 8*stride anchor per location, ``atss_assign(topk=9)``; the
  paper's experiments are built on ATSS, Sec. 4). Towers of 4 x (3x3 conv, GN, ReLU), per-level
  ``Scale`` on the regression output (see :mod:`.atss`).
* Classification-IoU joint representation (Sec. 3.1): the C sigmoid outputs are trained towards
  the IoU of the positive's predicted box (detached) with its GT at the GT class and 0 elsewhere,
  with Quality Focal Loss (Sec. 3.2, Eq. 5, beta = 2) over non-ignored anchors, normalised by the
  mean-over-ranks number of positives. Inference uses sigmoid(cls) directly (``fusion="none"``).
* General distribution (Sec. 3.3): each ltrb distance, in units of the anchor's stride, is a
  softmax over ``reg_max + 1 = 17`` integer bins and the box uses its integral
  ``y_hat = sum_i P(y_i) y_i`` (:class:`DistributionCoder`), i.e. ``centre + stride * y_hat``.
* Distribution Focal Loss (Sec. 3.3, Eq. 6) on the two bins around the stride-unit target
  distance (clamped to ``[0, reg_max - dfl_eps]``), averaged over the 4 sides, weight 1/4; GIoU
  loss (weight 2) on the decoded box.
* Training objective ("Training Dense Detectors with GFL", Sec. 3): ``L = 1/N_pos sum L_Q +
  1/N_pos sum_{pos} (2 L_B + 1/4 L_D)``; "following the official codes" L_B and L_D of each
  positive are weighted by its quality score -- here, as in the GFocal / mmdetection code, the
  max over classes of the detached predicted score.

Normaliser of L_B and L_D (``box_normalizer``): mmdetection's GFLHead (and the official GFocal
code) divides the weighted GIoU and DFL sums by the mean-over-ranks *sum of the weights*
(clamped at 1 in mmdetection >= 2.x, ``box_norm_min``), the practice of the FCOS/ATSS codes the
paper says it follows for the weighting; the paper's equation, written before the weighting,
has ``1/N_pos``. The default ``"weight_sum"`` follows the code (the paper defers to it for the
weighted form and its reported numbers come from it); ``"num_pos"`` is the literal equation.

Other notes: mmdetection clamps DFL targets at ``reg_max - 0.1`` (``bbox2distance``'s eps), kept
here as ``dfl_eps``; mmdetection counts ``max(positives, 1)`` per image for N_pos, here the batch
total is clamped at 1; crowd handling as in :mod:`.atss`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from ...errors import ReplicateError
from .._utils import flatten_levels, mean_over_ranks
from ..assigners import Assignment
from ..box_coders import DistanceCoder, DistributionCoder
from ..detector import DetectorConfig
from ..losses import aligned_box_iou, distribution_focal_loss, giou_loss, quality_focal_loss
from ..postprocess import TestConfig, postprocess
from ..priors import AnchorConfig
from .atss import ATSS_NECK, OneAnchorHead, anchor_centres
from .retinanet import ONE_ANCHOR

BOX_NORMALIZERS = ("weight_sum", "num_pos")


@dataclass(frozen=True)
class GFLHeadConfig:
    feat_channels: int = 256
    num_convs: int = 4
    norm: str | None = "gn"
    anchors: AnchorConfig = field(default_factory=lambda: ONE_ANCHOR)
    topk: int = 9
    ignore_iof: float | None = 0.5
    reg_max: int = 16
    qfl_beta: float = 2.0
    cls_loss_weight: float = 1.0
    box_loss_weight: float = 2.0
    dfl_weight: float = 0.25
    dfl_eps: float = 0.1
    box_normalizer: str = "weight_sum"  # "weight_sum" (GFocal / mmdetection code) or "num_pos" (paper's equation)
    box_norm_min: float = 1.0
    prior_prob: float = 0.01

    def build(self, in_channels: int, num_classes: int) -> "GFLHead":
        return GFLHead(self, in_channels, num_classes)


class Positives(NamedTuple):
    """A batch's positives as the GFL losses read them (boxes in units of each positive's stride)."""

    b_idx: Tensor  # (P,) image of each positive
    p_idx: Tensor  # (P,) its prior, levels concatenated
    centres: Tensor  # (P, 2) its anchor centre / stride
    gt: Tensor  # (P, 4) its GT box / stride
    scores: Tensor  # (B, N, C) every prior's scores in the space the QFL sees (level_scores)
    num_pos: Tensor  # positives averaged over processes, at least 1


class GFLHead(OneAnchorHead):
    def __init__(self, cfg: GFLHeadConfig, in_channels: int, num_classes: int) -> None:
        if cfg.box_normalizer not in BOX_NORMALIZERS:
            raise ReplicateError(f"GFL box_normalizer must be one of {BOX_NORMALIZERS}, got {cfg.box_normalizer!r}")
        super().__init__(cfg, in_channels, num_classes, 4 * (cfg.reg_max + 1))
        self.dist_coder = DistributionCoder(cfg.reg_max)
        self.init_weights()

    # ----------------------------------------------------------------------------- forward
    def forward(self, feats: list[Tensor]) -> dict[str, list[Tensor]]:
        cls, reg = [], []
        for c, _, dist_logits in self.towers(feats):
            cls.append(self.cls_out(c))
            reg.append(dist_logits)
        return {"cls": cls, "reg": reg}

    # -------------------------------------------------- score space (overridden by GFLv2)
    def level_scores(self, outs: dict[str, list[Tensor]]) -> list[Tensor]:
        """Per level (B, N_l, C) classification outputs in the space the QFL sees (logits here)."""
        return [flatten_levels([m], self.num_classes) for m in outs["cls"]]

    def to_prob(self, scores: Tensor) -> Tensor:
        """Joint cls-IoU probability from :meth:`level_scores`' outputs."""
        return scores.sigmoid()

    def quality_focal(self, scores: Tensor, labels: Tensor, quality: Tensor, avg_factor: Tensor) -> Tensor:
        return quality_focal_loss(scores, labels, quality, self.cfg.qfl_beta, reduction="mean", avg_factor=avg_factor)

    # ------------------------------------------------------------------------------- train
    def positives(self, outs: dict[str, list[Tensor]], a: Assignment, matched: Tensor) -> "Positives":
        """What every loss term reads: the positives' indices, centres and GTs in stride units, the scores."""
        levels = self.anchors(outs["cls"])
        anchors = torch.cat(levels)
        strides = self.level_strides(levels, self.cfg.anchors.strides)
        b_idx, p_idx = a.pos_mask.nonzero(as_tuple=True)
        s = strides[p_idx][:, None]
        return Positives(b_idx, p_idx, anchor_centres(anchors[p_idx]) / s, matched[b_idx, p_idx] / s,
                         torch.cat(self.level_scores(outs), dim=1), mean_over_ranks(a.num_pos).clamp(min=1.0))

    def quality_loss(self, pos: "Positives", a: Assignment, pred: Tensor) -> Tensor:
        """QFL (Eq. 5): soft target IoU(pred.detach(), gt) at the GT class, 0 elsewhere; label C = background."""
        quality = pos.scores.new_zeros(a.labels.shape)
        quality[pos.b_idx, pos.p_idx] = aligned_box_iou(pred.detach(), pos.gt).to(quality.dtype)
        labels = torch.where(a.pos_mask, a.labels, torch.full_like(a.labels, self.num_classes))
        valid = ~a.ignore_mask
        return self.quality_focal(pos.scores[valid], labels[valid], quality[valid], pos.num_pos)

    def box_weights(self, pos: "Positives") -> tuple[Tensor, Tensor]:
        """Each positive's box-loss weight (its detached max-over-classes score) and the normaliser."""
        weight = self.to_prob(pos.scores.detach()[pos.b_idx, pos.p_idx]).max(dim=-1).values  # (P,)
        if self.cfg.box_normalizer == "weight_sum":
            return weight, mean_over_ranks(weight.sum()).clamp(min=self.cfg.box_norm_min)
        return weight, pos.num_pos

    def losses(self, outs: dict[str, list[Tensor]], a: Assignment, matched: Tensor) -> dict[str, Tensor]:
        return self.distribution_losses(outs, a, self.positives(outs, a, matched))[0]

    def distribution_losses(self, outs: dict[str, list[Tensor]], a: Assignment,
                            pos: Positives) -> tuple[dict[str, Tensor], Tensor, tuple[Tensor, Tensor]]:
        """QFL, GIoU and DFL on the positives ``pos``; also the decoded boxes (stride units) and the box weights
        with their normaliser, for a head that adds terms on them (SALT-Net)."""
        c = self.cfg
        n = self.dist_coder.num_bins
        dist_logits = flatten_levels(outs["reg"], 4 * n)[pos.b_idx, pos.p_idx]  # (P, 4n)
        pred = DistanceCoder().decode(pos.centres, self.dist_coder.integral(dist_logits))
        loss_cls = self.quality_loss(pos, a, pred)
        weight, box_norm = self.box_weights(pos)
        loss_bbox = giou_loss(pred, pos.gt, reduction="mean", weight=weight, avg_factor=box_norm)
        target = DistanceCoder().encode(pos.centres, pos.gt).clamp(0.0, c.reg_max - c.dfl_eps)  # (P, 4)
        loss_dfl = distribution_focal_loss(dist_logits.reshape(-1, 4, n), target, reduction="mean",
                                           weight=weight[:, None], avg_factor=4.0 * box_norm)
        terms = {"loss_cls": c.cls_loss_weight * loss_cls, "loss_bbox": c.box_loss_weight * loss_bbox,
                 "loss_dfl": c.dfl_weight * loss_dfl}
        return terms, pred, (weight, box_norm)

    # ----------------------------------------------------------------------------- predict
    def decode_boxes(self, anchors: Tensor, dist_logits: Tensor, stride: float) -> Tensor:
        """Boxes ``centre +- stride * integral(distribution)`` (Sec. 3.3) for (K, 4) anchors, (K, 4n) logits."""
        return DistanceCoder().decode(anchor_centres(anchors), self.dist_coder.integral(dist_logits) * stride)

    def decoded(self, outs: dict[str, list[Tensor]], boxes: str = "final") -> tuple[Tensor, Tensor]:
        """Every prior's scores (B, N, C) in probability space and decoded box (B, N, 4) in image pixels, before
        any threshold (the analyses' dense view; ``boxes`` names a stage of a two-stage head)."""
        levels = self.anchors(outs["cls"])
        strides = self.level_strides(levels, self.cfg.anchors.strides)
        dist = flatten_levels(outs["reg"], 4 * self.dist_coder.num_bins)
        distances = self.dist_coder.integral(dist) * strides[None, :, None]
        probs = self.to_prob(torch.cat(self.level_scores(outs), dim=1))
        return probs, DistanceCoder().decode(anchor_centres(torch.cat(levels))[None], distances)

    def predict(self, outs: dict[str, list[Tensor]], image_sizes: list[tuple[int, int]],
                cfg: TestConfig) -> list[dict[str, Tensor]]:
        levels = self.anchors(outs["cls"])
        probs = [self.to_prob(s) for s in self.level_scores(outs)]
        regs = [flatten_levels([m], 4 * self.dist_coder.num_bins) for m in outs["reg"]]
        strides = self.cfg.anchors.strides

        def decode(level: int, img: Tensor, prior: Tensor) -> Tensor:
            return self.decode_boxes(levels[level][prior], regs[level][img, prior], float(strides[level]))

        return postprocess(probs, decode, image_sizes, cfg)


def gfl() -> DetectorConfig:
    """GFL (Li et al. 2020): joint cls-IoU score (QFL) and general box distribution (DFL) on ATSS."""
    return DetectorConfig("gfl", GFLHeadConfig(), neck=ATSS_NECK, test=TestConfig(nms_iou=0.6, fusion="none"))
