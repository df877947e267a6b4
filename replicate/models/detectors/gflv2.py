"""GFLv2 (Li et al. 2021, "Generalized Focal Loss V2: Learning Reliable Localization Quality Estimation
for Dense Object Detection", CVPR): GFL (:mod:`.gfl`) plus the Distribution-Guided Quality Predictor.

* Decomposed classification-IoU representation (Sec. 3, "Decomposed Classification-IoU
  Representation"): ``J = C x I`` with ``C`` the C-way sigmoid classification probabilities and
  ``I`` a scalar IoU estimate per location; ``J`` is the joint score used both in training (QFL,
  as in GFL) and at test time (``fusion="none"``).
* DGQP (Sec. 3, "Distribution-Guided Quality Predictor"): from each side's general distribution
  ``P^w`` (softmax over the 17 bins of GFL) take the top-k probabilities (k = 4) and their mean,
  concatenated over the four sides into ``F`` of 4 (k + 1) = 20 channels (``Topkm``;
  ``dgqp_add_mean=False`` drops the mean, 4k channels); ``I = sigmoid(W2 ReLU(W1 F))`` with
  W1: 20 -> 64 (``dgqp_channels``, the official ``reg_channels``) and W2: 64 -> 1, as 1x1 convs
  shared over locations and levels.
* Training (GFLv1's losses, which the paper keeps): QFL on ``J`` -- a probability, so the loss is
  the binary cross entropy of ``J`` itself scaled by ``|y - J|^beta`` (the official code's
  ``QualityFocalLoss(use_sigmoid=False)``), not QFL on the classification logits; GIoU and DFL
  weighted by the detached max over classes of ``J`` and normalised as in GFL. The QFL's gradient
  reaches the distribution through the DGQP (the official code does not detach the DGQP input;
  ``detach_dgqp_input=True`` does).
* Initialisation: as GFL, and the DGQP's two 1x1 convs N(0, 0.01) with zero bias (official code),
  so ``I`` starts at 0.5.

The official GFocalV2 ``gfocal_r50_fpn_1x`` config is used for the rest: ATSS assignment on one
8*stride anchor, 4-conv GN towers, GIoU 2.0, DFL 0.25, FPN on the P5 output, NMS 0.6.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...errors import ReplicateError
from .._utils import flatten_levels, init_normal
from ..detector import DetectorConfig
from ..losses import quality_focal_loss_prob
from ..postprocess import TestConfig
from .atss import ATSS_NECK
from .gfl import GFLHead, GFLHeadConfig


@dataclass(frozen=True)
class GFLv2HeadConfig(GFLHeadConfig):
    dgqp_topk: int = 4
    dgqp_add_mean: bool = True
    dgqp_channels: int = 64  # "reg_channels" of the official code
    detach_dgqp_input: bool = False

    def build(self, in_channels: int, num_classes: int) -> "GFLv2Head":
        return GFLv2Head(self, in_channels, num_classes)


class GFLv2Head(GFLHead):
    def __init__(self, cfg: GFLv2HeadConfig, in_channels: int, num_classes: int) -> None:
        if not 1 <= cfg.dgqp_topk <= cfg.reg_max + 1:
            raise ReplicateError(f"dgqp_topk must lie in [1, {cfg.reg_max + 1}], got {cfg.dgqp_topk}")
        super().__init__(cfg, in_channels, num_classes)
        self.dgqp_dim = 4 * (cfg.dgqp_topk + (1 if cfg.dgqp_add_mean else 0))
        self.dgqp = nn.Sequential(nn.Conv2d(self.dgqp_dim, cfg.dgqp_channels, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(cfg.dgqp_channels, 1, 1))
        init_normal(self.dgqp)

    def dgqp_features(self, dist_logits: Tensor) -> Tensor:
        """``F = Concat_w Topkm(P^w)`` (DGQP): (B, 4(n), H, W) distribution logits ->
        (B, 4 (k + 1), H, W): per side (l, t, r, b) its top-k probabilities (descending) then their mean."""
        B, _, H, W = dist_logits.shape
        n = self.dist_coder.num_bins
        if self.cfg.detach_dgqp_input:
            dist_logits = dist_logits.detach()
        prob = dist_logits.reshape(B, 4, n, H, W).softmax(dim=2)
        top = prob.topk(self.cfg.dgqp_topk, dim=2).values
        if self.cfg.dgqp_add_mean:
            top = torch.cat([top, top.mean(dim=2, keepdim=True)], dim=2)
        return top.reshape(B, self.dgqp_dim, H, W)

    def quality(self, dist_logits: Tensor) -> Tensor:
        """``I = sigmoid(W2 ReLU(W1 F))``: (B, 1, H, W) IoU estimate."""
        return self.dgqp(self.dgqp_features(dist_logits)).sigmoid()

    def forward(self, feats: list[Tensor]) -> dict[str, list[Tensor]]:
        outs = super().forward(feats)
        outs["quality"] = [self.quality(r) for r in outs["reg"]]
        return outs

    # J = C x I in probability space; QFL on probabilities.
    def level_scores(self, outs: dict[str, list[Tensor]]) -> list[Tensor]:
        return [flatten_levels([c], self.num_classes).sigmoid() * flatten_levels([q], 1)
                for c, q in zip(outs["cls"], outs["quality"])]

    def to_prob(self, scores: Tensor) -> Tensor:
        return scores

    def quality_focal(self, scores: Tensor, labels: Tensor, quality: Tensor, avg_factor: Tensor) -> Tensor:
        return quality_focal_loss_prob(scores, labels, quality, self.cfg.qfl_beta, reduction="mean",
                                       avg_factor=avg_factor)


def gflv2() -> DetectorConfig:
    """GFLv2 (Li et al. 2021): GFL with the Distribution-Guided Quality Predictor, J = C x I."""
    return DetectorConfig("gflv2", GFLv2HeadConfig(), neck=ATSS_NECK, test=TestConfig(nms_iou=0.6, fusion="none"))
