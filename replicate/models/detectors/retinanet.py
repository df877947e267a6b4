"""RetinaNet (Lin et al. 2017b, "Focal Loss for Dense Object Detection").

* Head (Sec. 4, Fig. 3): two 4-conv towers (3x3, 256 channels, ReLU) shared across P3-P7, a
  classifier of K*A sigmoid outputs and a box regressor of 4*A deltas; A = 9 anchors (3 scales
  ``2^{0,1/3,2/3}`` x 3 ratios) of base size 4 * stride (32-512 px on P3-P7).
* Initialisation (Sec. 4.1): all convs N(0, 0.01), bias 0; classifier bias ``-log((1-pi)/pi)``,
  pi = 0.01.
* Assignment (Sec. 4): IoU >= 0.5 foreground, < 0.4 background, in between ignored; each ground
  truth keeps its best anchor (Faster R-CNN's low-quality rule, as in the reference code).
* Loss (Sec. 3.3, 4.1): focal loss (alpha 0.25, gamma 2) summed over all non-ignored anchors and
  normalised by the number of positive anchors; smooth L1 on the R-CNN deltas of positives
  (beta 0.11 in Detectron; mmdetection v2 uses L1: ``box_loss="l1"``).
* Inference (Sec. 4.2): threshold 0.05, top 1000 per level, NMS 0.5, 100 per image.

The 1-anchor variant (``anchors=ONE_ANCHOR``, one square anchor of 8 * stride, as in ATSS's
comparisons) is the same head with A = 1; AlignDet's one anchor is 4 * stride (:mod:`.aligndet`).

``anchor_roiconv`` is AlignDet's "RetinaNet + RoIConv" (Sec. 5.2, Table 2): one 3x3 RoIConv
(:class:`~replicate.models.roiconv.AlignConv`, shared weights, ReLU) on each level "with the pre-defined anchors
as RoIs". AlignDet does not say how one RoIConv serves the A anchors of a location; here it runs once per
anchor, so each anchor gets the feature aligned to its own box, and the towers and predictors then run on
each anchor's map, the predictors producing only that anchor's outputs (the same weights as RetinaNet's
K*A / 4*A predictors, applied as a grouped convolution).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ...errors import ReplicateError
from .._utils import conv_tower, flatten_levels, init_normal, mean_over_ranks, prior_prob_bias
from ..assigners import Assignment, max_iou_assign, pad_targets
from ..box_coders import DeltaXYWHCoder
from ..detector import DetectorConfig
from ..head import DenseHead, Priors, anchor_priors
from ..losses import focal_pair_cost, l1_loss, sigmoid_focal_loss_labels, smooth_l1_loss
from ..postprocess import TestConfig, postprocess
from ..priors import AnchorConfig, anchors_for
from ..roiconv import AlignConv

ONE_ANCHOR = AnchorConfig(octave_base_scale=8.0, scales_per_octave=1, ratios=(1.0,))


@dataclass(frozen=True)
class RetinaNetHeadConfig:
    feat_channels: int = 256
    num_convs: int = 4
    norm: str | None = None  # None (paper) or "gn"
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    pos_iou: float = 0.5
    neg_iou: float = 0.4
    min_pos_iou: float = 0.0
    low_quality: bool = True
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    box_loss: str = "smooth_l1"  # "smooth_l1" (paper / Detectron) or "l1" (mmdetection v2, torchvision)
    smooth_l1_beta: float = 0.11
    box_loss_weight: float = 1.0
    prior_prob: float = 0.01
    target_means: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    target_stds: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    anchor_roiconv: bool = False  # AlignDet Table 2: a 3x3 RoIConv per anchor before the towers

    def build(self, in_channels: int, num_classes: int) -> "RetinaNetHead":
        return RetinaNetHead(self, in_channels, num_classes)


class RetinaNetHead(DenseHead):
    prior_kind = "anchor"

    def __init__(self, cfg: RetinaNetHeadConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        if cfg.box_loss not in ("smooth_l1", "l1"):
            raise ReplicateError(f"RetinaNet box_loss must be 'smooth_l1' or 'l1', got {cfg.box_loss!r}")
        self.cfg, self.num_classes = cfg, num_classes
        A = cfg.anchors.num_anchors
        self.num_anchors = A
        self.cls_tower = conv_tower(in_channels, cfg.feat_channels, cfg.num_convs, cfg.norm)
        self.reg_tower = conv_tower(in_channels, cfg.feat_channels, cfg.num_convs, cfg.norm)
        self.cls_out = nn.Conv2d(cfg.feat_channels, A * num_classes, 3, padding=1)
        self.reg_out = nn.Conv2d(cfg.feat_channels, A * 4, 3, padding=1)
        self.coder = DeltaXYWHCoder(cfg.target_means, cfg.target_stds)
        init_normal(self)
        nn.init.constant_(self.cls_out.bias, prior_prob_bias(cfg.prior_prob))
        if cfg.anchor_roiconv:
            self.roiconv = AlignConv(in_channels, in_channels, 3, "roiconv")
        self._anchor_cache: dict = {}

    # ----------------------------------------------------------------------------- forward
    def forward(self, feats: list[Tensor]) -> dict[str, list[Tensor]]:
        if self.cfg.anchor_roiconv:
            return self.forward_per_anchor(feats)
        cls, reg, cls_feat, reg_feat = [], [], [], []
        for x in feats:
            c, r = self.cls_tower(x), self.reg_tower(x)
            cls_feat.append(c)
            reg_feat.append(r)
            cls.append(self.cls_out(c))
            reg.append(self.reg_out(r))
        return {"cls": cls, "reg": reg, "cls_feat": cls_feat, "reg_feat": reg_feat}

    def forward_per_anchor(self, feats: list[Tensor]) -> dict[str, list[Tensor]]:
        """``anchor_roiconv``: each anchor's RoIConv-aligned map through the towers (the anchors folded into
        the batch), then each anchor's slice of the predictors (grouped convolutions); the same output layout."""
        A = self.num_anchors
        cls, reg, cls_feat, reg_feat = [], [], [], []
        for x, anchors, stride in zip(feats, self.anchors(feats), self.cfg.anchors.strides):
            B, C, H, W = x.shape
            boxes = anchors.view(H, W, A, 4).permute(2, 0, 1, 3).expand(B, A, H, W, 4).reshape(B * A, H, W, 4)
            aligned = F.relu(self.roiconv(x.unsqueeze(1).expand(B, A, C, H, W).reshape(B * A, C, H, W), boxes, stride))
            c = self.cls_tower(aligned).reshape(B, -1, H, W)  # (B, A * F, H, W), anchor-major
            r = self.reg_tower(aligned).reshape(B, -1, H, W)
            cls_feat.append(c)
            reg_feat.append(r)
            cls.append(F.conv2d(c, self.cls_out.weight, self.cls_out.bias, padding=1, groups=A))
            reg.append(F.conv2d(r, self.reg_out.weight, self.reg_out.bias, padding=1, groups=A))
        return {"cls": cls, "reg": reg, "cls_feat": cls_feat, "reg_feat": reg_feat}

    def anchors(self, maps: list[Tensor]) -> list[Tensor]:
        """Per-level (H*W*A, 4) anchors for these feature maps (cached per size and device)."""
        sizes = tuple(tuple(m.shape[-2:]) for m in maps)
        key = (sizes, maps[0].device)
        if key not in self._anchor_cache:
            self._anchor_cache = {key: anchors_for(self.cfg.anchors, list(sizes), maps[0].device)}
        return self._anchor_cache[key]

    # ------------------------------------------------------------------------------- train
    def priors(self, outs: dict[str, list[Tensor]]) -> Priors:
        return anchor_priors(self.anchors(outs["cls"]), self.cfg.anchors.strides, self.num_anchors)

    def assign_priors(self, anchors: Tensor, targets: list[dict]) -> tuple[Assignment, Tensor]:
        """Max-IoU assignment for the batch; returns it and the matched GT box per anchor (B, N, 4)."""
        gt_boxes, gt_labels, gt_valid, ig_boxes, ig_valid = pad_targets(targets)
        c = self.cfg
        a = max_iou_assign(anchors, gt_boxes, gt_labels, gt_valid, pos_iou=c.pos_iou, neg_iou=c.neg_iou,
                           min_pos_iou=c.min_pos_iou, low_quality=c.low_quality,
                           ignore_boxes=ig_boxes, ignore_valid=ig_valid)
        return a, a.matched_boxes(gt_boxes)

    def classification_loss(self, cls: Tensor, a: Assignment, num_pos: Tensor) -> Tensor:
        """Focal loss over non-ignored anchors, normalised by the number of positives (Sec. 3.3)."""
        return sigmoid_focal_loss_labels(cls, a.labels, ~a.ignore_mask, self.cfg.focal_alpha, self.cfg.focal_gamma,
                                         avg_factor=num_pos)

    def box_loss(self, reg: Tensor, anchors: Tensor, matched: Tensor, a: Assignment, num_pos: Tensor) -> Tensor:
        """The box loss of the positives' deltas; ``anchors`` (N, 4) shared by the batch or (B, N, 4) per image."""
        pos = a.pos_mask
        anchors_pos = anchors.expand(pos.shape[0], -1, -1)[pos]
        target = self.coder.encode(anchors_pos, matched[pos])
        if self.cfg.box_loss == "l1":
            loss = l1_loss(reg[pos], target, reduction="mean", avg_factor=num_pos)
        else:
            loss = smooth_l1_loss(reg[pos], target, self.cfg.smooth_l1_beta, reduction="mean", avg_factor=num_pos)
        return self.cfg.box_loss_weight * loss

    def assign_by_rule(self, outs: dict[str, list[Tensor]], targets: list[dict]) -> tuple[Assignment, Tensor]:
        """The head's own assignment rule (it ignores the predictions; a plug-in assigner may not)."""
        return self.assign_priors(torch.cat(self.anchors(outs["cls"])), targets)

    @torch.no_grad()
    def pair_costs(self, outs: dict[str, list[Tensor]], priors: Priors, img: Tensor, anchor: Tensor, boxes: Tensor,
                   labels: Tensor) -> tuple[Tensor, Tensor]:
        """This head's losses of K (image, anchor) pairs taken as positives of ``boxes`` / ``labels`` (K,): the
        focal loss summed over the classes (one-hot target) and the box loss summed over the 4 deltas."""
        c = self.cfg
        cls = flatten_levels(outs["cls"], self.num_classes)
        reg = flatten_levels(outs["reg"], 4)
        cost_cls = focal_pair_cost(cls, img, anchor, labels, c.focal_alpha, c.focal_gamma)
        target = self.coder.encode(priors.boxes[anchor], boxes.float())
        beta = c.smooth_l1_beta if c.box_loss == "smooth_l1" else 0.0
        return cost_cls, c.box_loss_weight * smooth_l1_loss(reg[img, anchor].float(), target, beta).sum(-1)

    def losses(self, outs: dict[str, list[Tensor]], a: Assignment, matched: Tensor) -> dict[str, Tensor]:
        anchors = torch.cat(self.anchors(outs["cls"]))
        cls = flatten_levels(outs["cls"], self.num_classes)
        reg = flatten_levels(outs["reg"], 4)
        num_pos = mean_over_ranks(a.num_pos).clamp(min=1.0)
        return {
            "loss_cls": self.classification_loss(cls, a, num_pos),
            "loss_bbox": self.box_loss(reg, anchors, matched, a, num_pos),
        }

    # ----------------------------------------------------------------------------- predict
    def quality(self, outs: dict[str, list[Tensor]]) -> list[Tensor] | None:
        """Per-level quality scores for score fusion; plain RetinaNet has none."""
        return None

    def predict(self, outs: dict[str, list[Tensor]], image_sizes: list[tuple[int, int]],
                cfg: TestConfig) -> list[dict[str, Tensor]]:
        anchors = self.anchors(outs["cls"])
        probs = [flatten_levels([c], self.num_classes).sigmoid() for c in outs["cls"]]
        regs = [flatten_levels([r], 4) for r in outs["reg"]]

        def decode(level: int, img: Tensor, prior: Tensor) -> Tensor:
            return self.coder.decode(anchors[level][prior], regs[level][img, prior])

        return postprocess(probs, decode, image_sizes, cfg, self.quality(outs))


# ------------------------------------------------------------------------------------------ presets


def retinanet() -> DetectorConfig:
    """RetinaNet (Lin et al. 2017b): 9 anchors, focal loss, smooth L1."""
    return DetectorConfig("retinanet", RetinaNetHeadConfig())


def retinanet_1anchor() -> DetectorConfig:
    """RetinaNet with one square anchor (8 x stride) per location."""
    return DetectorConfig("retinanet_1anchor", RetinaNetHeadConfig(anchors=ONE_ANCHOR))
