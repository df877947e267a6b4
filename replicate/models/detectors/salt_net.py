"""SALT-Net (Yang et al., "Rethinking the Misalignment Problem in Dense Object Detection"): ATSS as the
stage-one decoder, GFLv2 as the stage-two decoder, and the SALT operator (:mod:`replicate.models.salt`)
between them.

* Fig. 3 and Sec. 4: one 8*stride anchor per location on P3-P7 and ATSS assignment (Sec. 3.5: "both the
  coarse and the refined detection stages utilize ATSS"), from :class:`.gfl.GFLHead`'s body. The towers are
  "3x convolutions" (Sec. 3.1; GFLv2's config has 4). ``skip`` adds the FPN feature to the classification
  tower's output (Table 1's "skip": "the residual connection on the classification tower").
* Stage one (Eq. 1): the coarse box ``C = ReLU(s_l * conv_c(F^r))`` as (l, t, r, b) in stride units, with a
  learnable per-level scale ``s_l`` (FCOS/ATSS's; the paper writes none).
* Stage two (Sec. 3.3): GFLv2's predictors on SALT's aligned features: the classifier on the classification
  features, the general distribution (17 bins, Integral) on the regression features, its DGQP, and the
  joint score ``J = C x I`` (:class:`.gflv2.GFLv2Head`).
* Eq. 10, the loss: ``lambda_0 L_Q + lambda_1 L_R1 + lambda_2 L_R2 + lambda_3 L_D + lambda_4 L_SDR`` with
  weights 1, 1, 2, 0.5, 1 (``cls_loss_weight``, ``coarse_weight``, ``box_loss_weight``, ``dfl_weight``,
  ``sdr_weight``): QFL on ``J`` against the refined box's IoU, GIoU on the coarse box (R1) and on the refined
  box (R2), DFL on the distribution, and the SDR loss (Eq. 9) with ``y`` the positive's detached joint score
  at its GT class. The GIoU and DFL terms carry GFL's quality weights and normaliser (the detached
  max-over-classes score, :class:`.gfl.GFLHead`), as GFL's objective that Eq. 10 restates does; the SDR
  term is normalised by the number of positives.
* Inference (Table 4, ``test.boxes``): the final detections are the stage-two boxes with ``J``; ``"coarse"``
  keeps ``J`` and decodes the stage-one boxes ("both stages utilize the refined classification scores as the
  NMS ranking keywords"). NMS 0.6, as GFLv2.

``cls_points = "off"`` is Table 1's S1 baseline, "ATSS" whose stage-one decoder "utilizes joint
representation of IoU and classification scores instead of its original centerness branch, as in [13]": the
classifier on the classification tower trained with QFL against the coarse box's IoU, GIoU (weight 2) on the
coarse box, and no second stage.

The released code departs from Eq. 10 (``shared/notes/official-code.md``); its behaviour is an option each:
no SDR term (``sdr=False``), DFL weight 0.25 (``dfl_weight``), a 3x3 conv before the point predictors
(``point_convs=1``) and a linear disentanglement output (``disentangle="linear"``, see
:mod:`replicate.models.salt`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...errors import ReplicateError
from .._utils import Scale, flatten_levels
from ..assigners import Assignment
from ..box_coders import DistanceCoder
from ..detector import DetectorConfig
from ..losses import giou_loss
from ..postprocess import TestConfig, postprocess
from ..salt import CLS_POINTS, SALT, sdr_loss
from .atss import ATSS_NECK, anchor_centres
from .gfl import GFLHead
from .gflv2 import GFLv2Head, GFLv2HeadConfig


@dataclass(frozen=True)
class SALTHeadConfig(GFLv2HeadConfig):
    num_convs: int = 3  # Sec. 3.1: "the 3x convolutions"
    cls_points: str = "exp"  # Table 1/2: "off" (S1 baseline), "regression", "free", "exp" (Eq. 5), "add" (Eq. 6)
    skip: bool = True  # Table 1: the classification tower's residual connection
    sdr: bool = True  # Table 4 / Eq. 9
    disentangle: str = "relu"  # Eq. 4; "linear": the released code
    point_convs: int = 0  # Eq. 1; 1: the released code
    detach_regression: bool = False
    coarse_weight: float = 1.0  # lambda_1
    box_loss_weight: float = 2.0  # lambda_2
    dfl_weight: float = 0.5  # lambda_3 (the released code: 0.25)
    sdr_weight: float = 1.0  # lambda_4

    def build(self, in_channels: int, num_classes: int) -> "SALTHead":
        return SALTHead(self, in_channels, num_classes)


class SALTHead(GFLv2Head):
    """Towers -> stage one (coarse box) -> SALT -> stage two (GFLv2's predictors); ``cls_points="off"``: stage
    one only, its classifier on the classification tower."""

    def __init__(self, cfg: SALTHeadConfig, in_channels: int, num_classes: int) -> None:
        if cfg.cls_points not in ("off", *CLS_POINTS):
            raise ReplicateError(f"SALT-Net cls_points must be 'off' or one of {CLS_POINTS}, got {cfg.cls_points!r}")
        if cfg.skip and in_channels != cfg.feat_channels:
            raise ReplicateError(f"SALT-Net's skip connection needs the FPN width ({in_channels}) to equal the "
                                 f"head width ({cfg.feat_channels})")
        super().__init__(cfg, in_channels, num_classes)
        self.two_stage = cfg.cls_points != "off"
        if self.two_stage:
            self.coarse_scales = nn.ModuleList(Scale(1.0) for _ in cfg.anchors.strides)
            self.salt = SALT(cfg.feat_channels, cfg.cls_points, cfg.disentangle, cfg.point_convs,
                             cfg.detach_regression, cfg.norm)
        else:  # the S1 baseline: one stage, no distribution, no DGQP
            self.conv_c = nn.Conv2d(cfg.feat_channels, 4, 3, padding=1)  # the scale is self.scales
            nn.init.normal_(self.conv_c.weight, std=0.01)
            nn.init.zeros_(self.conv_c.bias)
            self.reg_out = None
            self.dgqp = None

    # ----------------------------------------------------------------------------- forward
    def forward(self, feats: list[Tensor]) -> dict[str, list[Tensor]]:
        if len(feats) != len(self.scales):
            raise ReplicateError(f"SALT-Net has {len(self.scales)} levels but got {len(feats)}")
        outs: dict[str, list[Tensor]] = {"cls": [], "coarse": []}
        if self.two_stage:
            outs.update(reg=[], quality=[], reg_points=[], cls_points=[])
        coarse_scales = self.coarse_scales if self.two_stage else self.scales
        for x, scale, coarse_scale in zip(feats, self.scales, coarse_scales):
            c, r = self.cls_tower(x), self.reg_tower(x)
            if self.cfg.skip:
                c = c + x
            if not self.two_stage:
                outs["coarse"].append(torch.relu(coarse_scale(self.conv_c(r)).float()))
                outs["cls"].append(self.cls_out(c))
                continue
            s = self.salt(c, r, coarse_scale)
            dist_logits = scale(self.reg_out(s["reg_feat"])).float()
            outs["coarse"].append(s["coarse"])
            outs["cls"].append(self.cls_out(s["cls_feat"]))
            outs["reg"].append(dist_logits)
            outs["quality"].append(self.quality(dist_logits))
            outs["reg_points"].append(s["reg_points"])
            outs["cls_points"].append(s["cls_points"])
        return outs

    # -------------------------------------------------- score space: J (two stages) or sigmoid logits (S1)
    def level_scores(self, outs: dict[str, list[Tensor]]) -> list[Tensor]:
        return super().level_scores(outs) if self.two_stage else GFLHead.level_scores(self, outs)

    def to_prob(self, scores: Tensor) -> Tensor:
        return super().to_prob(scores) if self.two_stage else GFLHead.to_prob(self, scores)

    def quality_focal(self, scores: Tensor, labels: Tensor, quality: Tensor, avg_factor: Tensor) -> Tensor:
        if self.two_stage:
            return super().quality_focal(scores, labels, quality, avg_factor)
        return GFLHead.quality_focal(self, scores, labels, quality, avg_factor)

    # ------------------------------------------------------------------------------- train
    def losses(self, outs: dict[str, list[Tensor]], a: Assignment, matched: Tensor) -> dict[str, Tensor]:
        c = self.cfg
        pos = self.positives(outs, a, matched)
        coarse = DistanceCoder().decode(pos.centres, flatten_levels(outs["coarse"], 4)[pos.b_idx, pos.p_idx])
        if not self.two_stage:
            weight, box_norm = self.box_weights(pos)
            return {"loss_cls": c.cls_loss_weight * self.quality_loss(pos, a, coarse),
                    "loss_bbox": c.box_loss_weight * giou_loss(coarse, pos.gt, reduction="mean", weight=weight,
                                                               avg_factor=box_norm)}
        terms, refined, (weight, box_norm) = self.distribution_losses(outs, a, pos)
        terms["loss_bbox_coarse"] = c.coarse_weight * giou_loss(coarse, pos.gt, reduction="mean", weight=weight,
                                                                avg_factor=box_norm)
        if c.sdr:
            y = pos.scores[pos.b_idx, pos.p_idx, a.labels[pos.b_idx, pos.p_idx]]
            terms["loss_sdr"] = c.sdr_weight * sdr_loss(coarse, refined, pos.gt, y, avg_factor=pos.num_pos)
        return terms

    # ----------------------------------------------------------------------------- predict
    def decoded(self, outs: dict[str, list[Tensor]], boxes: str = "final") -> tuple[Tensor, Tensor]:
        """:meth:`GFLHead.decoded`; ``boxes="coarse"`` (or the S1 baseline) decodes the stage-one distances."""
        if self.two_stage and boxes == "final":
            return super().decoded(outs, boxes)
        levels = self.anchors(outs["cls"])
        strides = self.level_strides(levels, self.cfg.anchors.strides)
        distances = flatten_levels(outs["coarse"], 4) * strides[None, :, None]
        probs = self.to_prob(torch.cat(self.level_scores(outs), dim=1))
        return probs, DistanceCoder().decode(anchor_centres(torch.cat(levels))[None], distances)

    def predict(self, outs: dict[str, list[Tensor]], image_sizes: list[tuple[int, int]],
                cfg: TestConfig) -> list[dict[str, Tensor]]:
        if self.two_stage and cfg.boxes == "final":
            return super().predict(outs, image_sizes, cfg)
        levels = self.anchors(outs["cls"])
        probs = [self.to_prob(s) for s in self.level_scores(outs)]
        coarse = [flatten_levels([m], 4) for m in outs["coarse"]]
        strides = self.cfg.anchors.strides

        def decode(level: int, img: Tensor, prior: Tensor) -> Tensor:
            centres = anchor_centres(levels[level][prior])
            return DistanceCoder().decode(centres, coarse[level][img, prior] * float(strides[level]))

        return postprocess(probs, decode, image_sizes, cfg)


# ------------------------------------------------------------------------------------------ presets

SALT_TEST = TestConfig(nms_iou=0.6, fusion="none")


def salt_net() -> DetectorConfig:
    """SALT-Net (Yang et al.): ATSS + SALT (Eq. 5 points, skip) + GFLv2 stage two, SDR loss (Eq. 10)."""
    return DetectorConfig("salt_net", SALTHeadConfig(), neck=ATSS_NECK, test=SALT_TEST)


def salt_net_code() -> DetectorConfig:
    """SALT-Net as the released code trains it: no SDR, DFL 0.25, a conv before the point predictors, linear D."""
    head = SALTHeadConfig(sdr=False, dfl_weight=0.25, point_convs=1, disentangle="linear")
    return DetectorConfig("salt_net_code", head, neck=ATSS_NECK, test=SALT_TEST)


def salt_s1() -> DetectorConfig:
    """SALT-Net's stage-one decoder alone: ATSS with the joint cls-IoU score (QFL) and GIoU, no centerness."""
    return DetectorConfig("salt_s1", SALTHeadConfig(cls_points="off", skip=False, sdr=False), neck=ATSS_NECK,
                          test=SALT_TEST)
