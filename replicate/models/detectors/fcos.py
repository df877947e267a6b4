"""FCOS (Tian et al. 2019, "FCOS: Fully Convolutional One-Stage Object Detection").

* Head (Sec. 3.1, Fig. 2): classification and regression towers of 4 x (3x3 conv, GroupNorm, ReLU)
  shared across P3-P7; C sigmoid classifiers, 4 distances ``(l, t, r, b)`` per location
  (Eq. 1) as ``exp(s_i x)`` with a learnable scale ``s_i`` per level (Sec. 3.2), and a
  one-channel centerness branch (Sec. 3.3).
* Assignment (Sec. 3.1-3.2): locations inside a box, per-level ranges
  ``(0, 64, 128, 256, 512, inf)``, smallest box wins (:func:`fcos_assign`).
* Loss (Eq. 2): focal loss normalised by the number of positives + IoU loss on positives
  (UnitBox, ``-ln IoU``) + BCE centerness (Eq. 3 target ``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))``).
* Inference (Sec. 3.3): the class score is multiplied by the predicted centerness.

``FCOS*`` (the "imprv" tricks of the official code that MOD builds on): centre sampling (radius
1.5), distances as ``ReLU(s_i x) * stride``, centerness on the regression tower, GIoU loss and a
box loss weighted by the centerness targets and normalised by their sum; score ``sqrt(p * c)``,
NMS 0.6. ``quality="giou"`` swaps the centerness branch for a GIoU-quality branch trained with
BCE towards the (detached, clamped to [0, 1]) GIoU of the predicted box (MOD, Sec. 3.3; the
official code leaves the target undetached and negative GIoU unclamped: ``quality_target_clamp``).

SALT-FCOS (SALT-Net, Sec. 4.3, Table 3; ``salt``): the SALT operator (:mod:`replicate.models.salt`) between the
towers and the predictors. It predicts a coarse box (``ReLU(s'_i x)`` stride units, its own per-level scale)
and reads each task's features at its points; FCOS's classifier, distances and quality branch then predict
from those features, and a GIoU loss (``salt_coarse_weight``, weighted and normalised as the box loss) trains
the coarse box. The paper gives no further detail; the coarse weight is the released code's FCOS variant's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ...errors import ReplicateError
from .._utils import Scale, conv_tower, flatten_levels, init_normal, mean_over_ranks, prior_prob_bias
from ..assigners import DEFAULT_FCOS_RANGES, Assignment, fcos_assign, fcos_point_masks, pad_targets
from ..box_coders import DistanceCoder
from ..detector import DetectorConfig, NeckConfig
from ..head import DenseHead, Priors, point_priors
from ..losses import binary_cross_entropy_with_logits, focal_pair_cost, giou_loss, iou_loss, sigmoid_focal_loss_labels
from ..postprocess import TestConfig, postprocess
from ..priors import points_for
from ..salt import SALT


REG_INIT_STD = 0.01  # the papers' N(0, 0.01) init of every head conv (RetinaNet Sec. 4.1, FCOS's code)


@dataclass(frozen=True)
class FCOSHeadConfig:
    feat_channels: int = 256
    num_convs: int = 4
    norm: str | None = "gn"
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    scale_ranges: tuple[tuple[float, float], ...] = DEFAULT_FCOS_RANGES
    center_sampling: bool = False
    center_radius: float = 1.5
    norm_on_bbox: bool = False  # False: exp(s x) in pixels (paper); True: ReLU(s x) * stride
    quality: str = "centerness"  # "centerness" (paper) or "giou" (MOD's quality branch)
    quality_on_reg: bool = False  # branch on the regression tower (FCOS*; MOD) instead of the cls tower
    box_loss: str = "iou"  # "iou": UnitBox -ln(IoU) (paper, reference code) or "giou" (FCOS*)
    weight_box_by_centerness: bool = False  # FCOS*: weight by centerness target, normalise by its sum
    quality_target_clamp: bool = True  # GIoU quality target clamped to [0, 1] (False: as official MOD code)
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    prior_prob: float = 0.01
    tower_dcn: tuple[int, ...] = ()  # conv indices in both towers replaced by DCNv2
    reg_init_std: float = REG_INIT_STD  # std of the regression predictor's N(0, std) weights (an ablation option:
    # the sign of each distance channel's weight sum over the non-negative tower features, not this std, decides
    # whether the ReLU distances start dead; see scripts/probe_regression_start.py)
    salt: str | None = None  # SALT-FCOS (SALT-Net Table 3): SALT's classification points ("exp", Eq. 5); None: off
    salt_coarse_weight: float = 0.5  # SALT-FCOS: GIoU weight of the coarse box (the released code's)

    def build(self, in_channels: int, num_classes: int) -> "FCOSHead":
        return FCOSHead(self, in_channels, num_classes)


def centerness_target(ltrb: Tensor) -> Tensor:
    """FCOS Eq. 3: ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` for (..., 4) distances."""
    l, t, r, b = ltrb.unbind(-1)
    lr = torch.minimum(l, r) / torch.maximum(l, r).clamp(min=1e-12)
    tb = torch.minimum(t, b) / torch.maximum(t, b).clamp(min=1e-12)
    return (lr * tb).clamp(min=0).sqrt()


def generalized_iou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """Paired GIoU (Rezatofighi et al. 2019) of (..., 4) boxes, in [-1, 1]."""
    return 1.0 - giou_loss(a, b, eps=eps)


class FCOSHead(DenseHead):
    prior_kind = "point"

    def __init__(self, cfg: FCOSHeadConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        if cfg.quality not in ("centerness", "giou"):
            raise ReplicateError(f"FCOS quality must be 'centerness' or 'giou', got {cfg.quality!r}")
        if cfg.box_loss not in ("iou", "giou"):
            raise ReplicateError(f"FCOS box_loss must be 'iou' or 'giou', got {cfg.box_loss!r}")
        if len(cfg.scale_ranges) != len(cfg.strides):
            raise ReplicateError(f"FCOS needs one scale range per stride: {len(cfg.scale_ranges)} ranges, "
                                 f"{len(cfg.strides)} strides")
        self.cfg, self.num_classes = cfg, num_classes
        self.cls_tower = conv_tower(in_channels, cfg.feat_channels, cfg.num_convs, cfg.norm, cfg.tower_dcn)
        self.reg_tower = conv_tower(in_channels, cfg.feat_channels, cfg.num_convs, cfg.norm, cfg.tower_dcn)
        self.cls_out = nn.Conv2d(cfg.feat_channels, num_classes, 3, padding=1)
        self.reg_out = nn.Conv2d(cfg.feat_channels, 4, 3, padding=1)
        self.quality_out = nn.Conv2d(cfg.feat_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in cfg.strides)
        if cfg.salt is not None:
            self.salt = SALT(cfg.feat_channels, cfg.salt, norm=cfg.norm)
            self.coarse_scales = nn.ModuleList(Scale(1.0) for _ in cfg.strides)
        init_normal(self, std=REG_INIT_STD)
        with torch.no_grad():  # N(0, std) as a scaled N(0, 0.01) draw: the same random stream at every std
            self.reg_out.weight.mul_(cfg.reg_init_std / REG_INIT_STD)
        nn.init.constant_(self.cls_out.bias, prior_prob_bias(cfg.prior_prob))
        self.coder = DistanceCoder()
        self._prior_cache: dict = {}

    def forward(self, feats: list[Tensor]) -> dict[str, list[Tensor]]:
        if len(feats) != len(self.cfg.strides):
            raise ReplicateError(f"FCOS head has {len(self.cfg.strides)} strides but got {len(feats)} levels")
        cls, dist, quality, coarse = [], [], [], []
        for level, (x, scale, stride) in enumerate(zip(feats, self.scales, self.cfg.strides)):
            c, r = self.cls_tower(x), self.reg_tower(x)
            if self.cfg.salt is not None:  # SALT-FCOS: the predictors read SALT's aligned features
                s = self.salt(c, r, self.coarse_scales[level])
                c, r = s["cls_feat"], s["reg_feat"]
                coarse.append(s["coarse"] * stride)
            cls.append(self.cls_out(c))
            quality.append(self.quality_out(r if self.cfg.quality_on_reg else c))
            s = scale(self.reg_out(r)).float()
            dist.append(torch.relu(s) * stride if self.cfg.norm_on_bbox else s.clamp(max=math.log(1e5)).exp())
        outs = {"cls": cls, "dist": dist, "quality": quality}
        return {**outs, "coarse": coarse} if coarse else outs

    def priors(self, outs: dict[str, list[Tensor]]) -> Priors:
        pts, _, _ = self.level_points(outs["cls"])
        return point_priors(pts, self.cfg.strides)

    def level_points(self, maps: list[Tensor]) -> tuple[list[Tensor], Tensor, Tensor]:
        """Per-level points, and the concatenated per-point stride and level index (cached per size)."""
        sizes = tuple(tuple(m.shape[-2:]) for m in maps)
        key = (sizes, maps[0].device)
        if key not in self._prior_cache:
            pts = points_for(self.cfg.strides, list(sizes), 0.5, maps[0].device)
            strides = torch.cat([torch.full((len(p),), float(s), device=p.device) for p, s in zip(pts, self.cfg.strides)])
            level = torch.cat([torch.full((len(p),), i, dtype=torch.long, device=p.device) for i, p in enumerate(pts)])
            self._prior_cache = {key: (pts, strides, level)}
        return self._prior_cache[key]

    def assign_priors(self, points: Tensor, strides: Tensor, level: Tensor, targets: list[dict]) -> tuple[Assignment, Tensor]:
        gt_boxes, gt_labels, gt_valid, ig_boxes, ig_valid = pad_targets(targets)
        c = self.cfg
        a = fcos_assign(points, strides, level, gt_boxes, gt_labels, gt_valid, scale_ranges=c.scale_ranges,
                        center_sampling=c.center_sampling, center_radius=c.center_radius,
                        ignore_boxes=ig_boxes, ignore_valid=ig_valid)
        return a, a.matched_boxes(gt_boxes)

    def assign_by_rule(self, outs: dict[str, list[Tensor]], targets: list[dict]) -> tuple[Assignment, Tensor]:
        """The head's own assignment rule (it ignores the predictions; a plug-in assigner may not)."""
        pts, strides, level = self.level_points(outs["cls"])
        return self.assign_priors(torch.cat(pts), strides, level, targets)

    def aps_candidates(self, priors: Priors, gt_boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, G, P) masks of each GT's points: inside its box, inside its centre region, in its level's
        scale range (what a loss-based assigner such as MOD's APS may narrow its candidates by)."""
        c = self.cfg
        masks = fcos_point_masks(priors.centres, priors.strides, priors.level, gt_boxes, c.scale_ranges,
                                 c.center_radius)
        return tuple(m.transpose(1, 2) for m in masks)

    @torch.no_grad()
    def pair_costs(self, outs: dict[str, list[Tensor]], priors: Priors, img: Tensor, prior: Tensor, boxes: Tensor,
                   labels: Tensor) -> tuple[Tensor, Tensor]:
        """This head's losses of K (image, point) pairs taken as positives of ``boxes`` / ``labels`` (K,):
        the focal loss summed over the classes (one-hot target) and ``1 - GIoU`` of the decoded box."""
        c = self.cfg
        cls = flatten_levels(outs["cls"], self.num_classes)
        dist = flatten_levels(outs["dist"], 4)
        cost_cls = focal_pair_cost(cls, img, prior, labels, c.focal_alpha, c.focal_gamma)
        decoded = self.coder.decode(priors.centres[prior], dist[img, prior].float())
        return cost_cls, giou_loss(decoded, boxes.float(), reduction="none")

    def losses(self, outs: dict[str, list[Tensor]], a: Assignment, matched: Tensor) -> dict[str, Tensor]:
        """Eq. 2's terms (and FCOS*'s variants) for a given assignment."""
        pts, _, _ = self.level_points(outs["cls"])
        points = torch.cat(pts)
        cls = flatten_levels(outs["cls"], self.num_classes)
        dist = flatten_levels(outs["dist"], 4)
        quality = flatten_levels(outs["quality"], 1)[..., 0]
        num_pos = mean_over_ranks(a.num_pos).clamp(min=1.0)
        c = self.cfg

        loss_cls = sigmoid_focal_loss_labels(cls, a.labels, ~a.ignore_mask, c.focal_alpha, c.focal_gamma,
                                             avg_factor=num_pos)

        pos = a.pos_mask
        b_idx, p_idx = pos.nonzero(as_tuple=True)
        pos_points = points[p_idx]
        gt = matched[b_idx, p_idx]
        pred_boxes = self.coder.decode(pos_points, dist[b_idx, p_idx])
        ctr = centerness_target(self.coder.encode(pos_points, gt))
        if c.weight_box_by_centerness:
            weight, box_norm = ctr, mean_over_ranks(ctr.sum()).clamp(min=1e-6)
        else:
            weight, box_norm = None, num_pos
        if c.box_loss == "giou":
            loss_bbox = giou_loss(pred_boxes, gt, reduction="mean", weight=weight, avg_factor=box_norm)
        else:
            loss_bbox = iou_loss(pred_boxes, gt, mode="log", reduction="mean", weight=weight, avg_factor=box_norm)

        if c.quality == "centerness":
            q_target = ctr
        else:
            q_target = generalized_iou(pred_boxes.detach(), gt)
            q_target = q_target.clamp(0.0, 1.0) if c.quality_target_clamp else q_target.clamp(max=1.0)
        loss_quality = binary_cross_entropy_with_logits(quality[b_idx, p_idx], q_target, reduction="mean",
                                                        avg_factor=num_pos)
        terms = {"loss_cls": loss_cls, "loss_bbox": loss_bbox, f"loss_{c.quality}": loss_quality}
        if c.salt is not None:
            coarse = self.coder.decode(pos_points, flatten_levels(outs["coarse"], 4)[b_idx, p_idx])
            terms["loss_bbox_coarse"] = c.salt_coarse_weight * giou_loss(coarse, gt, reduction="mean", weight=weight,
                                                                         avg_factor=box_norm)
        return terms

    def predict(self, outs: dict[str, list[Tensor]], image_sizes: list[tuple[int, int]],
                cfg: TestConfig) -> list[dict[str, Tensor]]:
        pts, _, _ = self.level_points(outs["cls"])
        probs = [flatten_levels([m], self.num_classes).sigmoid() for m in outs["cls"]]
        quality = [flatten_levels([m], 1)[..., 0].sigmoid() for m in outs["quality"]]
        dists = [flatten_levels([m], 4) for m in outs["dist"]]

        def decode(level: int, img: Tensor, prior: Tensor) -> Tensor:
            return self.coder.decode(pts[level][prior], dists[level][img, prior])

        return postprocess(probs, decode, image_sizes, cfg, quality)


# ------------------------------------------------------------------------------------------ presets


FCOS_NECK = NeckConfig(extra_from="output", relu_before_extra=True)
"""FCOS' P6 from P5 (the FPN output) after a ReLU, as in its official code."""


def fcos_vanilla() -> DetectorConfig:
    """FCOS as in the paper (Tian et al. 2019): centerness on the cls tower, exp distances, IoU loss."""
    return DetectorConfig("fcos_vanilla", FCOSHeadConfig(), neck=FCOS_NECK,
                          test=TestConfig(nms_iou=0.5, fusion="multiply"))


def fcos() -> DetectorConfig:
    """FCOS* with the official code's improvements (the baseline MOD builds on)."""
    head = FCOSHeadConfig(center_sampling=True, norm_on_bbox=True, quality_on_reg=True, box_loss="giou",
                          weight_box_by_centerness=True)
    return DetectorConfig("fcos", head, neck=FCOS_NECK, test=TestConfig(nms_iou=0.6, fusion="sqrt"))


def salt_fcos() -> DetectorConfig:
    """SALT-FCOS (SALT-Net, Table 3): FCOS* with the SALT operator between its towers and its predictors."""
    cfg = fcos()
    return replace(cfg, name="salt_fcos", head=replace(cfg.head, salt="exp"))


def fcos_giou() -> DetectorConfig:
    """FCOS* whose quality branch predicts the GIoU of its box (MOD's quality branch)."""
    cfg = fcos()
    return replace(cfg, name="fcos_giou", head=replace(cfg.head, quality="giou"))
