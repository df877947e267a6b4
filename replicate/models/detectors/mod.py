"""MOD (Hao et al. 2022, "Rethinking the task-driven feature misaligned problem in one-stage object
detection"): the Receptive Field Adaptor (RFA, Sec. 3.1) and the Aligned Points Sampler (APS, Sec. 3.2)
on FCOS, and their transfer to RetinaNet and FoveaBox (Sec. 4.5, Table 6).

* **Base detector** (Sec. 4.1, Table 2's "FCOS"): FCOS* (:func:`replicate.models.zoo.fcos`) whose
  quality branch predicts the GIoU of its box (``quality="giou"``); focal loss and GIoU loss.
* **RFA** (Sec. 3.1, Eq. 2, Fig. 2): one conv of each head tower becomes a deformable conv whose
  offsets are predicted from the tower's input, one per branch (``rfa``). The paper replaces the
  *first* conv (``rfa="first"``, default); the released code the *last* one (``rfa="last"``) and
  uses a modulated DCN (DCNv2). The paper only says "deformable convolution", citing DCNv1 and DCNv2;
  ``rfa_modulated=True`` (default) is DCNv2, ``False`` DCNv1. Like every head conv, the deformable
  conv and its offset conv start from N(0, 0.01) (so offsets start near 0); the released code keeps
  mmcv's uniform init for the main weight.
* **APS** (Sec. 3.2, Eqs. 3-8): every point inside a GT, on every level, is a candidate; its
  classification cost is the focal loss summed over the classes as if it were a positive of that GT
  (one-hot target), its regression cost the detector's box loss of its prediction against the GT
  (``1 - GIoU`` for FCOS), both computed without gradient ("not the final losses for
  backpropagation, only used for label assignment"). :func:`replicate.models.aps.aps_assign` then
  keeps the top-K points per level, the two levels of smallest mean cost, and the GMM's positive
  component of S (:mod:`replicate.models.aps` documents the score and the GMM). The training losses
  are the base detector's on the resulting assignment.
* **Ablations**: ``aps.criterion`` ranks levels by the cls, reg or combined cost (Table 1, with
  ``num_levels_kept=1`` and ``spatial="center"``); ``aps.scale``/``aps.spatial`` switch off either
  step (Table 5); ``assigner="fcos"`` keeps FCOS's own assignment (RFA alone, Tables 2-4).
* **Anchor-based transfer** (Sec. 4.5): RetinaNet has A anchors per point; each (GT, point) pair takes
  the cost of the anchor with the smallest ``L_cls + L_reg`` ("we simply assign each feature point
  with only one anchor, by choosing the one with the smallest loss"), APS runs on points, and a
  positive point makes that one anchor positive. The point's other anchors are left out of the
  classification loss (``other_anchors="ignore"``): the point is assigned through one anchor only. Making
  them negatives instead (``"negative"``) pits anchors that share one feature against each other; on the
  smoke check that variant did not learn within 100 iterations (AP50 0 vs 0.13). The regression cost is RetinaNet's box loss (smooth
  L1 / L1 on the deltas, summed over the 4 coordinates). FoveaBox is point-based: its cost is its
  own focal loss (alpha 0.4, gamma 1.5) and smooth L1 on the log-space targets. Neither transfer is in
  the released code, so these follow the paper's one sentence.
* **Tables 3-4 statistics**: the FCOS-family MOD head logs ``stat_loss_gap`` and ``stat_loss_sum``
  every iteration: for each GT, the mean classification and regression cost over its positives (its
  assigned levels), their absolute difference and their sum, averaged over the GTs of the batch.
  They are logged, never back-propagated (the engine sums only ``loss*`` terms).

Released-code behaviour as options (``../shared/notes/official-code.md`` Sec. 1): ``rfa="last"``,
``aps.score="code"`` (score and GMM on 10 S), ``aps.conflict="drop_gt"``, ``quality_target_clamp=False``.
The whole assignment is vectorised over the batch and the GTs: no Python loop over boxes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ...errors import ReplicateError
from .._utils import conv_tower, flatten_levels, init_normal
from ..aps import APSConfig, aps_assign
from ..assigners import IGNORED, Assignment, _with_labels, _nonempty_gt, fcos_point_masks, ignore_points_in_crowds, pad_targets
from ..detector import DetectorConfig
from ..losses import focal_pair_cost, giou_loss, smooth_l1_loss
from ..postprocess import TestConfig
from .fcos import FCOS_NECK, FCOSHead, FCOSHeadConfig
from .foveabox import FoveaBoxHead, FoveaBoxHeadConfig, fovea_encode, foveabox
from .retinanet import RetinaNetHead, RetinaNetHeadConfig

RFA_POSITIONS = ("none", "first", "last")
ASSIGNERS = ("aps", "base")


# ------------------------------------------------------------------------------ RFA


def rfa_indices(position: str, num_convs: int) -> tuple[int, ...]:
    """Tower conv indices made deformable by RFA: ``first`` (paper, Fig. 2), ``last`` (released code)."""
    if position not in RFA_POSITIONS:
        raise ReplicateError(f"MOD rfa must be one of {RFA_POSITIONS}, got {position!r}")
    return {"none": (), "first": (0,), "last": (num_convs - 1,)}[position]


def install_rfa(head: nn.Module, in_channels: int, feat_channels: int, num_convs: int, norm: str | None,
                position: str, modulated: bool) -> None:
    """Rebuild ``head.cls_tower`` and ``head.reg_tower`` with RFA's deformable conv, N(0, 0.01) init."""
    dcn = rfa_indices(position, num_convs)
    if not dcn:
        return
    for name in ("cls_tower", "reg_tower"):
        tower = conv_tower(in_channels, feat_channels, num_convs, norm, dcn, modulated)
        init_normal(tower)
        for module in tower.modules():
            if hasattr(module, "conv_offset"):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        setattr(head, name, tower)


# ------------------------------------------------------------------------------ assignment costs


def _dense(values: Tensor, img: Tensor, gt: Tensor, prior: Tensor, shape: tuple[int, int, int]) -> Tensor:
    out = torch.full(shape, float("inf"), dtype=values.dtype, device=values.device)
    out[img, gt, prior] = values
    return out


def _inside(points: Tensor, gt_boxes: Tensor) -> Tensor:
    """(B, G, P) bool: point strictly inside the box."""
    x, y = points[None, None, :, 0], points[None, None, :, 1]
    g = gt_boxes[:, :, None, :]
    return (x > g[..., 0]) & (y > g[..., 1]) & (x < g[..., 2]) & (y < g[..., 3])


def _check_transfer(aps: APSConfig, detector: str) -> None:
    if aps.scale != "loss" or aps.spatial != "gmm":
        raise ReplicateError(f"{detector}+MOD supports the full APS only (scale='loss', spatial='gmm'); "
                             f"got scale={aps.scale!r}, spatial={aps.spatial!r}")


def _check_assigner(assigner: str) -> None:
    if assigner not in ASSIGNERS:
        raise ReplicateError(f"MOD assigner must be one of {ASSIGNERS}, got {assigner!r}")


# ------------------------------------------------------------------------------ FCOS + MOD


@dataclass(frozen=True)
class MODHeadConfig(FCOSHeadConfig):
    rfa: str = "first"  # "first" (paper), "last" (released code) or "none"
    rfa_modulated: bool = True  # DCNv2 (released code); False: DCNv1
    assigner: str = "aps"  # "aps" or "base" (FCOS's own rule)
    aps: APSConfig = field(default_factory=APSConfig)

    def build(self, in_channels: int, num_classes: int) -> "MODHead":
        return MODHead(self, in_channels, num_classes)


class MODHead(FCOSHead):
    """FCOS* head with a GIoU quality branch, RFA and APS (see the module docstring)."""

    def __init__(self, cfg: MODHeadConfig, in_channels: int, num_classes: int) -> None:
        _check_assigner(cfg.assigner)
        cfg.aps.check()
        super().__init__(cfg, in_channels, num_classes)
        install_rfa(self, in_channels, cfg.feat_channels, cfg.num_convs, cfg.norm, cfg.rfa, cfg.rfa_modulated)

    def pair_costs(self, cls: Tensor, dist: Tensor, points: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                   img: Tensor, gt: Tensor, prior: Tensor) -> tuple[Tensor, Tensor]:
        """Classification and regression cost of K (image, GT, point) pairs, each (K,)."""
        c = self.cfg
        cost_cls = focal_pair_cost(cls, img, prior, gt_labels[img, gt], c.focal_alpha, c.focal_gamma)
        boxes = self.coder.decode(points[prior], dist[img, prior].float())
        return cost_cls, giou_loss(boxes, gt_boxes[img, gt].float(), reduction="none")

    def assign(self, outs: dict[str, list[Tensor]], targets: list[dict]) -> tuple[Assignment, Tensor]:
        c = self.cfg
        if c.assigner == "base":
            return super().assign(outs, targets)
        pts, strides, level = self.level_points(outs["cls"])
        points = torch.cat(pts)
        gt_boxes, gt_labels, gt_valid, ig_boxes, ig_valid = pad_targets(targets)
        gt_boxes, gt_labels, gt_valid = _nonempty_gt(gt_boxes, gt_labels, gt_valid)
        with torch.no_grad():
            cls = flatten_levels(outs["cls"], self.num_classes)
            dist = flatten_levels(outs["dist"], 4)
            inside, center, in_range = (m.transpose(1, 2) for m in fcos_point_masks(
                points, strides, level, gt_boxes, c.scale_ranges, c.center_radius))
            inside = inside & gt_valid[:, :, None]
            img, gt, prior = inside.nonzero(as_tuple=True)
            cost_cls, cost_reg = self.pair_costs(cls, dist, points, gt_boxes, gt_labels, img, gt, prior)
            shape = tuple(inside.shape)
            gt_index = aps_assign(_dense(cost_cls, img, gt, prior, shape), _dense(cost_reg, img, gt, prior, shape),
                                  inside, level, len(c.strides), gt_boxes, gt_valid, c.aps,
                                  center=center, in_range=in_range)
        gt_index = ignore_points_in_crowds(points, gt_index, ig_boxes, ig_valid)
        a = _with_labels(gt_index, gt_labels, torch.zeros(gt_index.shape, device=gt_index.device))
        return a, a.matched_boxes(gt_boxes)

    def loss(self, outs: dict[str, list[Tensor]], targets: list[dict], batch_hw: tuple[int, int]) -> dict[str, Tensor]:
        a, matched = self.assign(outs, targets)
        return {**self.losses(outs, a, matched), **self.level_stats(outs, a, matched)}

    @torch.no_grad()
    def level_stats(self, outs: dict[str, list[Tensor]], a: Assignment, matched: Tensor) -> dict[str, Tensor]:
        """Tables 3-4: per GT the mean cls and reg cost over its positives; their gap and sum, averaged
        over the GTs of the batch (0 when the batch has no positive)."""
        pts, _, _ = self.level_points(outs["cls"])
        points = torch.cat(pts)
        cls = flatten_levels(outs["cls"], self.num_classes)
        dist = flatten_levels(outs["dist"], 4)
        img, prior = a.pos_mask.nonzero(as_tuple=True)
        gt = a.gt_index[img, prior]
        boxes = self.coder.decode(points[prior], dist[img, prior].float())
        cost_cls = focal_pair_cost(cls, img, prior, a.labels[img, prior], self.cfg.focal_alpha, self.cfg.focal_gamma)
        cost_reg = giou_loss(boxes, matched[img, prior].float(), reduction="none")
        gap, total = per_gt_gap_and_sum(cost_cls, cost_reg, img * (int(a.gt_index.max()) + 1) + gt)
        return {"stat_loss_gap": gap, "stat_loss_sum": total}


def per_gt_gap_and_sum(cost_cls: Tensor, cost_reg: Tensor, group: Tensor) -> tuple[Tensor, Tensor]:
    """Mean over groups (GTs) of ``|mean cls - mean reg|`` and of ``mean cls + mean reg``; 0-d tensors."""
    if group.numel() == 0:
        zero = cost_cls.new_zeros(())
        return zero, zero
    _, inverse = group.unique(return_inverse=True)
    n = int(inverse.max()) + 1
    count = torch.zeros(n, device=group.device).index_add_(0, inverse, torch.ones_like(cost_cls))
    mean_cls = torch.zeros(n, device=group.device).index_add_(0, inverse, cost_cls) / count
    mean_reg = torch.zeros(n, device=group.device).index_add_(0, inverse, cost_reg) / count
    return (mean_cls - mean_reg).abs().mean(), (mean_cls + mean_reg).mean()


# ------------------------------------------------------------------------------ RetinaNet + MOD


@dataclass(frozen=True)
class MODRetinaNetHeadConfig(RetinaNetHeadConfig):
    rfa: str = "first"
    rfa_modulated: bool = True
    assigner: str = "aps"  # "aps" or "base" (max-IoU)
    aps: APSConfig = field(default_factory=APSConfig)
    other_anchors: str = "ignore"  # the other anchors of a positive point: "ignore" (our reading) or "negative"

    def build(self, in_channels: int, num_classes: int) -> "MODRetinaNetHead":
        return MODRetinaNetHead(self, in_channels, num_classes)


class MODRetinaNetHead(RetinaNetHead):
    """RetinaNet with RFA and APS on points, one anchor per point (Sec. 4.5)."""

    def __init__(self, cfg: MODRetinaNetHeadConfig, in_channels: int, num_classes: int) -> None:
        _check_assigner(cfg.assigner)
        if cfg.other_anchors not in ("ignore", "negative"):
            raise ReplicateError(f"RetinaNet+MOD other_anchors must be 'ignore' or 'negative', got {cfg.other_anchors!r}")
        cfg.aps.check()
        _check_transfer(cfg.aps, "RetinaNet")
        super().__init__(cfg, in_channels, num_classes)
        install_rfa(self, in_channels, cfg.feat_channels, cfg.num_convs, cfg.norm, cfg.rfa, cfg.rfa_modulated)

    def anchor_costs(self, cls: Tensor, reg: Tensor, anchors: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                     img: Tensor, gt: Tensor, anchor: Tensor) -> tuple[Tensor, Tensor]:
        """Focal (summed over classes) and box-loss (summed over the 4 deltas) cost of (image, GT, anchor) pairs."""
        c = self.cfg
        cost_cls = focal_pair_cost(cls, img, anchor, gt_labels[img, gt], c.focal_alpha, c.focal_gamma)
        target = self.coder.encode(anchors[anchor], gt_boxes[img, gt].float())
        beta = c.smooth_l1_beta if c.box_loss == "smooth_l1" else 0.0
        return cost_cls, c.box_loss_weight * smooth_l1_loss(reg[img, anchor].float(), target, beta).sum(-1)

    def assign(self, outs: dict[str, list[Tensor]], targets: list[dict]) -> tuple[Assignment, Tensor]:
        c = self.cfg
        if c.assigner == "base":
            return super().assign(outs, targets)
        per_level = self.anchors(outs["cls"])
        anchors = torch.cat(per_level)
        A = self.num_anchors
        centres = ((anchors[:, :2] + anchors[:, 2:]) / 2).view(-1, A, 2)[:, 0]  # (P, 2), one per location
        level = torch.cat([torch.full((len(a) // A,), i, dtype=torch.long, device=anchors.device)
                           for i, a in enumerate(per_level)])
        gt_boxes, gt_labels, gt_valid, ig_boxes, ig_valid = pad_targets(targets)
        gt_boxes, gt_labels, gt_valid = _nonempty_gt(gt_boxes, gt_labels, gt_valid)
        with torch.no_grad():
            cls = flatten_levels(outs["cls"], self.num_classes)
            reg = flatten_levels(outs["reg"], 4)
            inside = _inside(centres, gt_boxes) & gt_valid[:, :, None]  # (B, G, P)
            img, gt, point = inside.nonzero(as_tuple=True)
            k = torch.arange(A, device=anchors.device)
            anchor = (point[:, None] * A + k).flatten()
            rep = lambda t: t.repeat_interleave(A)  # noqa: E731
            cost_cls, cost_reg = self.anchor_costs(cls, reg, anchors, gt_boxes, gt_labels, rep(img), rep(gt), anchor)
            cost_cls, cost_reg = cost_cls.view(-1, A), cost_reg.view(-1, A)
            best = (cost_cls + cost_reg).argmin(dim=1, keepdim=True)
            shape = tuple(inside.shape)
            point_gt = aps_assign(_dense(cost_cls.gather(1, best)[:, 0], img, gt, point, shape),
                                  _dense(cost_reg.gather(1, best)[:, 0], img, gt, point, shape),
                                  inside, level, len(per_level), gt_boxes, gt_valid, c.aps)
            best_anchor = torch.zeros(shape, dtype=torch.long, device=anchors.device)
            best_anchor[img, gt, point] = best[:, 0]
        gt_index = torch.full((shape[0], anchors.shape[0]), -1, dtype=torch.long, device=anchors.device)
        b, p = (point_gt >= 0).nonzero(as_tuple=True)
        g = point_gt[b, p]
        if c.other_anchors == "ignore":
            gt_index[b.repeat_interleave(A), (p[:, None] * A + torch.arange(A, device=p.device)).flatten()] = IGNORED
        gt_index[b, p * A + best_anchor[b, g, p]] = g
        gt_index = ignore_points_in_crowds(centres.repeat_interleave(A, dim=0), gt_index, ig_boxes, ig_valid)
        a = _with_labels(gt_index, gt_labels, torch.zeros(gt_index.shape, device=gt_index.device))
        return a, a.matched_boxes(gt_boxes)


# ------------------------------------------------------------------------------ FoveaBox + MOD


@dataclass(frozen=True)
class MODFoveaBoxHeadConfig(FoveaBoxHeadConfig):
    rfa: str = "first"
    rfa_modulated: bool = True
    assigner: str = "aps"  # "aps" or "base" (fovea areas)
    aps: APSConfig = field(default_factory=APSConfig)

    def build(self, in_channels: int, num_classes: int) -> "MODFoveaBoxHead":
        return MODFoveaBoxHead(self, in_channels, num_classes)


class MODFoveaBoxHead(FoveaBoxHead):
    """FoveaBox with RFA and APS: candidates are all cells inside the box on every level (Sec. 4.5)."""

    def __init__(self, cfg: MODFoveaBoxHeadConfig, in_channels: int, num_classes: int) -> None:
        _check_assigner(cfg.assigner)
        cfg.aps.check()
        _check_transfer(cfg.aps, "FoveaBox")
        super().__init__(cfg, in_channels, num_classes)
        install_rfa(self, in_channels, cfg.feat_channels, cfg.num_convs, cfg.norm, cfg.rfa, cfg.rfa_modulated)

    def assign(self, outs: dict[str, list[Tensor]], targets: list[dict]) -> tuple[Assignment, Tensor]:
        c = self.cfg
        if c.assigner == "base":
            return super().assign(outs, targets)
        pts, zs = self.cells(outs["cls"])
        points, z = torch.cat(pts), torch.cat(zs)
        level = torch.cat([torch.full((len(p),), i, dtype=torch.long, device=points.device) for i, p in enumerate(pts)])
        gt_boxes, gt_labels, gt_valid, ig_boxes, ig_valid = pad_targets(targets)
        gt_boxes, gt_labels, gt_valid = _nonempty_gt(gt_boxes, gt_labels, gt_valid)
        with torch.no_grad():
            cls = flatten_levels(outs["cls"], self.num_classes)
            reg = flatten_levels(outs["reg"], 4)
            inside = _inside(points, gt_boxes) & gt_valid[:, :, None]
            img, gt, prior = inside.nonzero(as_tuple=True)
            cost_cls = focal_pair_cost(cls, img, prior, gt_labels[img, gt], c.focal_alpha, c.focal_gamma)
            target = fovea_encode(points[prior], z[prior], gt_boxes[img, gt].float(), c.target_clamp)
            cost_reg = c.box_loss_weight * smooth_l1_loss(reg[img, prior].float(), target, c.smooth_l1_beta).sum(-1)
            shape = tuple(inside.shape)
            gt_index = aps_assign(_dense(cost_cls, img, gt, prior, shape), _dense(cost_reg, img, gt, prior, shape),
                                  inside, level, len(pts), gt_boxes, gt_valid, c.aps)
        gt_index = ignore_points_in_crowds(points, gt_index, ig_boxes, ig_valid)
        a = _with_labels(gt_index, gt_labels, torch.zeros(gt_index.shape, device=gt_index.device))
        return a, a.matched_boxes(gt_boxes)


# ------------------------------------------------------------------------------ presets


def mod_fcos_baseline_head() -> MODHeadConfig:
    """Table 2's "FCOS": FCOS* with the GIoU quality branch, no RFA, FCOS's assignment (logs Tables 3-4's stats)."""
    return MODHeadConfig(center_sampling=True, norm_on_bbox=True, quality="giou", quality_on_reg=True,
                         box_loss="giou", weight_box_by_centerness=True, rfa="none", assigner="base")


def mod() -> DetectorConfig:
    """MOD: FCOS* (GIoU quality) + RFA (first tower conv, DCNv2) + APS (paper score, K=9, 2 levels)."""
    head = replace(mod_fcos_baseline_head(), rfa="first", assigner="aps")
    return DetectorConfig("mod", head, neck=FCOS_NECK, test=TestConfig(nms_iou=0.6, fusion="sqrt"))


def mod_code() -> DetectorConfig:
    """MOD as released (HaoGood/MOD): RFA on the last tower conv, the code's APS score, GMM on 10 S, drop-GT conflicts."""
    cfg = mod()
    head = replace(cfg.head, rfa="last", quality_target_clamp=False,
                   aps=APSConfig(score="code", conflict="drop_gt"))
    return replace(cfg, name="mod_code", head=head)


def retinanet_mod() -> DetectorConfig:
    """RetinaNet + MOD (Table 6): RFA on the first tower conv, APS on points with one anchor per point."""
    return DetectorConfig("retinanet_mod", MODRetinaNetHeadConfig())


def foveabox_mod() -> DetectorConfig:
    """FoveaBox + MOD (Table 6): RFA on the first tower conv, APS over all in-box cells."""
    base = foveabox()
    fields = {f: getattr(base.head, f) for f in FoveaBoxHeadConfig.__dataclass_fields__}
    return replace(base, name="foveabox_mod", head=MODFoveaBoxHeadConfig(**fields))
