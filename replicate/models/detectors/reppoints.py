"""RepPoints with grid features (Yang et al., "RepPoints: Point Set Representation for Object Detection", ICCV
2019), the baseline SALT-Net's Table 3 calls "RepPoints w/ GridF", and SALT-RepPoints.

RepPoints is anchor-free and two-staged within one dense head. Each location starts from a centre point; an
*initial* stage predicts a first object box from the regression tower, the features at points of that box are
read by a 3x3 deformable convolution, and from them a *refine* stage predicts the final box and the
classifier the class scores (Sec. 4, Fig. 3). The paper's representation is a free set of 9 points
converted to a box; its "bounding box" baseline keeps a box and reads the 3x3 grid of points that spans it
(its "GridF", grid features). SALT-Net compares against this box variant: its 37.4 AP is the released
RepPoints code's "BBox, no anchor" row of ``bbox_r50_grid_center_fpn_gn-neck+Bhead_1x_coco``
(``shared/notes/official-code.md`` Sec. 6). The free point-set representations (moment / min-max
conversion) are not built here.

* Towers (the code's config): 3 x (3x3 conv, GroupNorm, ReLU) per task, shared across P3-P7.
* Initial stage: a 3x3 conv + ReLU and a 1x1 conv on the regression tower give ``(dx, dy, dw, dh)``
  relative to a square of ``base_scale`` strides centred on the location (:func:`box_from_deltas`: centre
  moved by ``(dx w, dy h)``, size scaled by ``exp(dw), exp(dh)``).
* Grid features: the 3x3 grid spanning the initial box (corners, side midpoints, centre; :func:`grid_points`)
  drives the taps of a 3x3 deformable convolution (+ ReLU) on each tower. The gradient from the sampling into
  the initial box is scaled by ``grad_mul`` = 0.1 (Sec. 4.1: "the gradient ... is scaled").
* Refine stage: a 1x1 conv on the sampled regression features gives deltas relative to the (detached) initial
  box; a 1x1 conv on the sampled classification features the class logits (sigmoid).
* Assignment (Sec. 4.1): the initial stage's positives are the locations nearest each box's centre on the
  level its size maps to (:func:`~replicate.models.assigners.point_assign`, scale 4, one point); the refine
  stage's are max-IoU matches of the initial boxes (0.5 / 0.4, each ground truth keeping its best box).
* Losses: focal loss (0.25, 2) on the refine assignment; smooth L1 (beta 0.11) of each stage's box against
  its ground truth, both divided by ``base_scale`` strides, weights 0.5 (initial) and 1 (refine), each
  normalised by its positives.
* Inference: the refine boxes and the class probabilities, RetinaNet's thresholds and NMS (``test.boxes =
  "coarse"`` scores the initial boxes instead).

Where the paper is silent, the released code: locations at ``(x, y) * stride`` (no half-stride offset),
N(0, 0.01) initialisation of every head conv with the classifier's prior 0.01. Our FPN has no GroupNorm (the
code's config puts it in the neck too).

**SALT-RepPoints** (SALT-Net Sec. 4.3, Table 3; ``salt``): the SALT operator (:mod:`replicate.models.salt`)
takes the place of the initial stage and the grid sampling. Its coarse box (Eq. 1) is the initial box, trained
by the initial stage's assignment and loss (the released code's RepPoints variant weights it 0.5 too), and the
classifier and the refine stage read SALT's task-aligned features; the refine stage refines the coarse box.
The paper says no more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from .._utils import Scale, conv_tower, flatten_levels, init_normal, mean_over_ranks, prior_prob_bias
from ..assigners import Assignment, max_iou_assign, pad_targets, point_assign
from ..dcn import deform_conv
from ..detector import DetectorConfig
from ..head import DenseHead, Priors, point_priors
from ..losses import sigmoid_focal_loss_labels, smooth_l1_loss
from ..postprocess import TestConfig, postprocess
from ..priors import points_for
from ..salt import SALT, points_to_offsets

MAX_LOG_SCALE = math.log(1e4)  # the size deltas are clamped before exp (the code leaves them unbounded)


@dataclass(frozen=True)
class RepPointsHeadConfig:
    feat_channels: int = 256
    num_convs: int = 3
    point_channels: int = 256  # the initial conv's and the deformable convs' outputs
    norm: str | None = "gn"
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    point_offset: float = 0.0  # locations at (x + offset) * stride: the code's 0
    base_scale: float = 4.0  # the initial hypothesis, a square of base_scale strides; also the loss's normaliser
    grad_mul: float = 0.1  # the gradient from the grid sampling into the initial box
    init_scale: float = 4.0  # the initial stage's level rule (point_assign's scale)
    init_pos_num: int = 1
    refine_pos_iou: float = 0.5
    refine_neg_iou: float = 0.4
    init_weight: float = 0.5
    refine_weight: float = 1.0
    smooth_l1_beta: float = 0.11
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    prior_prob: float = 0.01
    salt: str | None = None  # SALT-RepPoints (SALT-Net Table 3): SALT's classification points ("exp", Eq. 5)

    def narrowed(self, width: int, num_convs: int) -> "RepPointsHeadConfig":
        return replace(self, feat_channels=width, num_convs=num_convs, point_channels=width)

    def build(self, in_channels: int, num_classes: int) -> "RepPointsHead":
        return RepPointsHead(self, in_channels, num_classes)


def box_from_deltas(deltas: Tensor, previous: Tensor) -> Tensor:
    """(B, 4, H, W) boxes (x1, y1, x2, y2) from deltas (dx, dy, dw, dh) relative to ``previous`` boxes
    (broadcastable): the centre moves by (dx w, dy h), the size scales by (exp(dw), exp(dh))."""
    centre = (previous[:, :2] + previous[:, 2:]) / 2
    size = (previous[:, 2:] - previous[:, :2]).clamp(min=1e-6)
    new_size = size * deltas[:, 2:].clamp(max=MAX_LOG_SCALE).exp()
    top_left = centre + size * deltas[:, :2] - new_size / 2
    return torch.cat((top_left, top_left + new_size), dim=1)


def grid_points(boxes: Tensor) -> Tensor:
    """(B, 18, H, W): the 3x3 grid spanning each box, row-major, as (dy, dx) pairs (the offset layout of a
    3x3 deformable convolution, :func:`~replicate.models.salt.points_to_offsets`)."""
    t = torch.linspace(0.0, 1.0, 3, dtype=boxes.dtype, device=boxes.device).view(1, 3, 1, 1)
    xs = boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * t  # (B, 3, H, W): the grid's columns
    ys = boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * t  # its rows
    B, _, H, W = boxes.shape
    yy = ys[:, :, None].expand(B, 3, 3, H, W)
    xx = xs[:, None, :].expand(B, 3, 3, H, W)
    return torch.stack((yy, xx), dim=3).reshape(B, 18, H, W)


class RepPointsHead(DenseHead):
    """Towers -> initial box -> grid features -> refine box and class scores (or SALT in their place).

    The priors, the plug-in assignment and the statistics of :class:`DenseHead` are the initial stage's; the
    refine stage assigns on the initial boxes itself (:meth:`loss`)."""

    prior_kind = "point"

    def __init__(self, cfg: RepPointsHeadConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        f, p = cfg.feat_channels, cfg.point_channels
        self.cls_tower = conv_tower(in_channels, f, cfg.num_convs, cfg.norm)
        self.reg_tower = conv_tower(in_channels, f, cfg.num_convs, cfg.norm)
        if cfg.salt is None:
            self.init_conv = nn.Conv2d(f, p, 3, padding=1)
            self.init_out = nn.Conv2d(p, 4, 1)
            self.cls_sample = nn.Conv2d(f, p, 3, padding=1)  # the weights of the deformable convolutions
            self.reg_sample = nn.Conv2d(f, p, 3, padding=1)
            last = p
        else:
            self.salt = SALT(f, cfg.salt, norm=cfg.norm)
            self.coarse_scales = nn.ModuleList(Scale(1.0) for _ in cfg.strides)
            last = f
        self.cls_out = nn.Conv2d(last, num_classes, 1)
        self.refine_out = nn.Conv2d(last, 4, 1)
        init_normal(self)
        nn.init.constant_(self.cls_out.bias, prior_prob_bias(cfg.prior_prob))
        s = cfg.base_scale / 2
        self.register_buffer("base_box", torch.tensor([-s, -s, s, s]).view(1, 4, 1, 1), persistent=False)
        self._prior_cache: dict = {}

    # ----------------------------------------------------------------------------- forward
    def forward(self, feats: list[Tensor]) -> dict[str, list[Tensor]]:
        """Per level: ``cls`` logits and the ``init`` and ``refine`` boxes (B, 4, H, W), float32, in strides
        relative to each location."""
        cls, init, refine = [], [], []
        for level, x in enumerate(feats):
            c, r = self.cls_tower(x), self.reg_tower(x)
            if self.cfg.salt is None:
                box = box_from_deltas(self.init_out(torch.relu(self.init_conv(r))).float(), self.base_box)
                points = grid_points(box)
                g = self.cfg.grad_mul
                offsets = points_to_offsets((1 - g) * points.detach() + g * points)
                c = torch.relu(self._sample(c, offsets, self.cls_sample))
                r = torch.relu(self._sample(r, offsets, self.reg_sample))
            else:
                s = self.salt(c, r, self.coarse_scales[level])
                left, top, right, bottom = s["coarse"].unbind(1)
                box = torch.stack((-left, -top, right, bottom), dim=1)
                c, r = s["cls_feat"], s["reg_feat"]
            cls.append(self.cls_out(c))
            init.append(box)
            refine.append(box_from_deltas(self.refine_out(r).float(), box.detach()))
        return {"cls": cls, "init": init, "refine": refine}

    @staticmethod
    def _sample(x: Tensor, offsets: Tensor, conv: nn.Conv2d) -> Tensor:
        return deform_conv(x, offsets, conv.weight, conv.bias, 1, 1, 1).to(x.dtype)

    # ------------------------------------------------------------------------------ priors
    def level_points(self, maps: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        """Per-level locations and the concatenated per-location stride (cached per size)."""
        sizes = tuple(tuple(m.shape[-2:]) for m in maps)
        key = (sizes, maps[0].device)
        if key not in self._prior_cache:
            pts = points_for(self.cfg.strides, list(sizes), self.cfg.point_offset, maps[0].device)
            strides = torch.cat([torch.full((len(q),), float(s), device=q.device)
                                 for q, s in zip(pts, self.cfg.strides)])
            self._prior_cache = {key: (pts, strides)}
        return self._prior_cache[key]

    def priors(self, outs: dict[str, list[Tensor]]) -> Priors:
        return point_priors(self.level_points(outs["cls"])[0], self.cfg.strides)

    def image_boxes(self, outs: dict[str, list[Tensor]], stage: str) -> Tensor:
        """(B, N, 4) a stage's boxes in image coordinates: location + box x stride."""
        pts, strides = self.level_points(outs["cls"])
        boxes = flatten_levels(outs[stage], 4)
        return torch.cat(pts).repeat(1, 2) + boxes * strides[:, None]

    # ------------------------------------------------------------------------------- train
    def assign_by_rule(self, outs: dict[str, list[Tensor]], targets: list[dict]) -> tuple[Assignment, Tensor]:
        """The initial stage's rule: the location nearest each box's centre on its level."""
        pts, strides = self.level_points(outs["cls"])
        gt_boxes, gt_labels, gt_valid, _, _ = pad_targets(targets)
        a = point_assign(torch.cat(pts), strides, gt_boxes, gt_labels, gt_valid, scale=self.cfg.init_scale,
                         pos_num=self.cfg.init_pos_num)
        return a, a.matched_boxes(gt_boxes)

    def box_loss(self, boxes: Tensor, matched: Tensor, a: Assignment, strides: Tensor) -> Tensor:
        """Smooth L1 of the positives' boxes, in units of ``base_scale`` strides, over the positives."""
        pos = a.pos_mask
        norm = (self.cfg.base_scale * strides)[None, :, None].expand_as(boxes)[pos]
        num_pos = mean_over_ranks(a.num_pos).clamp(min=1.0)
        return smooth_l1_loss(boxes[pos] / norm, matched[pos] / norm, self.cfg.smooth_l1_beta, reduction="mean",
                              avg_factor=num_pos)

    def losses(self, outs: dict[str, list[Tensor]], a: Assignment, matched: Tensor) -> dict[str, Tensor]:
        """The initial stage's box loss on assignment ``a``; :meth:`loss` adds the refine stage's terms."""
        _, strides = self.level_points(outs["cls"])
        return {"loss_bbox_init": self.cfg.init_weight * self.box_loss(self.image_boxes(outs, "init"), matched, a,
                                                                        strides)}

    def refine_losses(self, outs: dict[str, list[Tensor]], targets: list[dict]) -> dict[str, Tensor]:
        """Max-IoU assignment on each image's initial boxes, then the focal loss and the refine box loss."""
        c = self.cfg
        gt_boxes, gt_labels, gt_valid, ig_boxes, ig_valid = pad_targets(targets)
        init = self.image_boxes(outs, "init").detach()
        a = max_iou_assign(init, gt_boxes, gt_labels, gt_valid, pos_iou=c.refine_pos_iou, neg_iou=c.refine_neg_iou,
                           ignore_boxes=ig_boxes, ignore_valid=ig_valid)
        cls = flatten_levels(outs["cls"], self.num_classes)
        num_pos = mean_over_ranks(a.num_pos).clamp(min=1.0)
        _, strides = self.level_points(outs["cls"])
        return {"loss_cls": sigmoid_focal_loss_labels(cls, a.labels, ~a.ignore_mask, c.focal_alpha, c.focal_gamma,
                                                      avg_factor=num_pos),
                "loss_bbox_refine": c.refine_weight * self.box_loss(self.image_boxes(outs, "refine"),
                                                                    a.matched_boxes(gt_boxes), a, strides)}

    def loss(self, outs: dict[str, list[Tensor]], targets: list[dict], batch_hw: tuple[int, int]) -> dict[str, Tensor]:
        return {**super().loss(outs, targets, batch_hw), **self.refine_losses(outs, targets)}

    # ----------------------------------------------------------------------------- predict
    def predict(self, outs: dict[str, list[Tensor]], image_sizes: list[tuple[int, int]],
                cfg: TestConfig) -> list[dict[str, Tensor]]:
        stage = "init" if cfg.boxes == "coarse" else "refine"
        pts, _ = self.level_points(outs["cls"])
        probs = [flatten_levels([c], self.num_classes).sigmoid() for c in outs["cls"]]
        boxes = [flatten_levels([b], 4) for b in outs[stage]]

        def decode(level: int, img: Tensor, prior: Tensor) -> Tensor:
            return pts[level][prior].repeat(1, 2) + boxes[level][img, prior] * self.cfg.strides[level]

        return postprocess(probs, decode, image_sizes, cfg)


def reppoints() -> DetectorConfig:
    """RepPoints w/ GridF (Yang et al. 2019): the box representation with 3x3 grid features, centre-point start."""
    return DetectorConfig("reppoints", RepPointsHeadConfig())


def salt_reppoints() -> DetectorConfig:
    """SALT-RepPoints (SALT-Net, Table 3): the SALT operator in place of RepPoints' initial stage and grid."""
    return DetectorConfig("salt_reppoints", RepPointsHeadConfig(salt="exp"))
