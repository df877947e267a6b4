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
* **Anchor-based transfer** (Sec. 4.5): RetinaNet has A anchors per point (the paper speaks of
  three; RetinaNet as published and in mmdetection has nine, 3 scales x 3 ratios, which ours keeps).
  Each (GT, point) pair takes the cost of the anchor with the smallest ``L_cls + L_reg`` ("we simply
  assign each feature point with only one anchor, by choosing the one with the smallest loss"), APS
  runs on points, and a positive point makes that one anchor positive. The paper is silent on the
  point's other anchors. Our reading (``other_anchors="ignore"``, fixed before any proxy run) leaves
  them out of the classification loss: the point is assigned through one anchor only. The other
  reading (``"negative"``) trains them as background, pitting anchors that share one feature against
  each other; Table 6 measures both. The regression cost is RetinaNet's box loss (smooth L1 / L1 on
  the deltas, summed over the 4 coordinates). FoveaBox is point-based: its cost is its own focal loss
  (alpha 0.4, gamma 1.5) and smooth L1 on the log-space targets. Neither transfer is in the released
  code, so these follow the paper's one sentence.
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

from ...errors import ReplicateError
from .._utils import conv_tower, init_normal
from ..aps import APSConfig, aps_assign
from ..assigners import IGNORED, Assignment, _nonempty_gt, _with_labels, ignore_points_in_crowds, pad_targets
from ..detector import DetectorConfig
from ..postprocess import TestConfig
from .fcos import FCOS_NECK, FCOSHead, FCOSHeadConfig
from .foveabox import FoveaBoxHead, FoveaBoxHeadConfig, foveabox
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


# ------------------------------------------------------------------------------ APS as a plug-in assigner


def _dense(values: Tensor, img: Tensor, gt: Tensor, prior: Tensor, shape: tuple[int, int, int]) -> Tensor:
    out = torch.full(shape, float("inf"), dtype=values.dtype, device=values.device)
    out[img, gt, prior] = values
    return out


def inside_boxes(points: Tensor, gt_boxes: Tensor) -> Tensor:
    """(B, G, P) bool: point strictly inside the box."""
    x, y = points[None, None, :, 0], points[None, None, :, 1]
    b = gt_boxes[..., None]
    return (x > b[:, :, 0]) & (x < b[:, :, 2]) & (y > b[:, :, 1]) & (y < b[:, :, 3])


def _check_assigner(assigner: str) -> None:
    if assigner not in ASSIGNERS:
        raise ReplicateError(f"MOD assigner must be one of {ASSIGNERS}, got {assigner!r}")


class APSAssigner:
    """The Aligned Points Sampler as the assignment of any dense head that prices its own pairs (Sec. 3.2,
    4.5): ``head.assigner = APSAssigner(cfg)``.

    It reads the head's contract only: :meth:`~replicate.models.head.DenseHead.priors` and the head's
    ``pair_costs(outs, priors, img, prior, boxes, labels)`` (its own classification and box losses of a
    prior taken as a positive of a box, without gradient). Candidates are the feature locations strictly
    inside a GT on every level (a head may narrow or annotate them with ``aps_candidates``: FCOS gives its
    centre region and scale range for Table 5's ablations). With A > 1 anchors per location (RetinaNet),
    each (GT, location) pair takes its cheapest anchor, APS runs on locations, and a positive location
    makes exactly that anchor positive; its other anchors are ignored (``other_anchors="ignore"``) or
    negatives (``"negative"``).
    """

    def __init__(self, cfg: APSConfig, other_anchors: str = "ignore") -> None:
        cfg.check()
        if other_anchors not in ("ignore", "negative"):
            raise ReplicateError(f"MOD other_anchors must be 'ignore' or 'negative', got {other_anchors!r}")
        self.cfg, self.other_anchors = cfg, other_anchors

    def __call__(self, head: nn.Module, outs: dict[str, list[Tensor]], targets: list[dict]) -> tuple[Assignment, Tensor]:
        pri = head.priors(outs)
        A = pri.per_location
        centres = pri.centres.view(-1, A, 2)[:, 0]  # (P, 2): one per feature location
        level = pri.level.view(-1, A)[:, 0]
        gt_boxes, gt_labels, gt_valid, ig_boxes, ig_valid = pad_targets(targets)
        gt_boxes, gt_labels, gt_valid = _nonempty_gt(gt_boxes, gt_labels, gt_valid)
        with torch.no_grad():
            if hasattr(head, "aps_candidates"):
                inside, center, in_range = head.aps_candidates(pri, gt_boxes)
            else:
                inside, center, in_range = inside_boxes(centres, gt_boxes), None, None
            inside = inside & gt_valid[:, :, None]
            img, gt, loc = inside.nonzero(as_tuple=True)
            k = torch.arange(A, device=loc.device)
            rep = lambda t: t.repeat_interleave(A, dim=0)  # noqa: E731
            prior = (loc[:, None] * A + k).flatten()
            cost_cls, cost_reg = head.pair_costs(outs, pri, rep(img), prior, rep(gt_boxes[img, gt]),
                                                 rep(gt_labels[img, gt]))
            cost_cls, cost_reg = cost_cls.view(-1, A), cost_reg.view(-1, A)
            best = (cost_cls + cost_reg).argmin(dim=1, keepdim=True)
            shape = tuple(inside.shape)
            loc_gt = aps_assign(_dense(cost_cls.gather(1, best)[:, 0], img, gt, loc, shape),
                                _dense(cost_reg.gather(1, best)[:, 0], img, gt, loc, shape),
                                inside, level, len(pri.per_level), gt_boxes, gt_valid, self.cfg,
                                center=center, in_range=in_range)
            best_anchor = torch.zeros(shape, dtype=torch.long, device=loc.device)
            best_anchor[img, gt, loc] = best[:, 0]
        if A == 1:
            gt_index = loc_gt
        else:
            gt_index = torch.full((shape[0], pri.centres.shape[0]), -1, dtype=torch.long, device=loc.device)
            b, p = (loc_gt >= 0).nonzero(as_tuple=True)
            g = loc_gt[b, p]
            if self.other_anchors == "ignore":
                gt_index[b.repeat_interleave(A), (p[:, None] * A + torch.arange(A, device=p.device)).flatten()] = IGNORED
            gt_index[b, p * A + best_anchor[b, g, p]] = g
        gt_index = ignore_points_in_crowds(pri.centres, gt_index, ig_boxes, ig_valid)
        a = _with_labels(gt_index, gt_labels, torch.zeros(gt_index.shape, device=gt_index.device))
        return a, a.matched_boxes(gt_boxes)


# ------------------------------------------------------------------------------ Tables 3-4 statistics


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


@torch.no_grad()
def loss_gap_statistics(head: nn.Module, outs: dict[str, list[Tensor]], targets: list[dict], a: Assignment,
                        matched: Tensor) -> dict[str, Tensor]:
    """Tables 3-4: per GT the mean cls and reg cost over its positives; their gap and sum, averaged over the
    GTs of the batch (0 when the batch has no positive). A head statistic (logged, never optimised)."""
    img, prior = a.pos_mask.nonzero(as_tuple=True)
    gt = a.gt_index[img, prior]
    cost_cls, cost_reg = head.pair_costs(outs, head.priors(outs), img, prior, matched[img, prior], a.labels[img, prior])
    gap, total = per_gt_gap_and_sum(cost_cls, cost_reg, img * (int(a.gt_index.max()) + 1) + gt)
    return {"stat_loss_gap": gap, "stat_loss_sum": total}


def with_mod(head: nn.Module, cfg, in_channels: int) -> nn.Module:
    """``head`` with MOD's parts as ``cfg`` asks: RFA in its towers, APS as its assigner."""
    _check_assigner(cfg.assigner)
    install_rfa(head, in_channels, cfg.feat_channels, cfg.num_convs, cfg.norm, cfg.rfa, cfg.rfa_modulated)
    if cfg.assigner == "aps":
        head.assigner = APSAssigner(cfg.aps, getattr(cfg, "other_anchors", "ignore"))
    return head


def _check_transfer(aps: APSConfig, detector: str) -> None:
    if aps.scale != "loss" or aps.spatial != "gmm":
        raise ReplicateError(f"{detector}+MOD supports the full APS only (scale='loss', spatial='gmm'); "
                             f"got scale={aps.scale!r}, spatial={aps.spatial!r}")


@dataclass(frozen=True)
class MODHeadConfig(FCOSHeadConfig):
    """FCOS* with RFA and APS (see the module docstring); it logs Tables 3-4's statistics."""

    rfa: str = "first"  # "first" (paper), "last" (released code) or "none"
    rfa_modulated: bool = True  # DCNv2 (released code); False: DCNv1
    assigner: str = "aps"  # "aps" or "base" (FCOS's own rule)
    aps: APSConfig = field(default_factory=APSConfig)

    def build(self, in_channels: int, num_classes: int) -> FCOSHead:
        head = with_mod(FCOSHead(self, in_channels, num_classes), self, in_channels)
        head.statistics = (loss_gap_statistics,)
        return head


@dataclass(frozen=True)
class MODRetinaNetHeadConfig(RetinaNetHeadConfig):
    """RetinaNet with RFA and APS on points, one anchor per point (Sec. 4.5)."""

    rfa: str = "first"
    rfa_modulated: bool = True
    assigner: str = "aps"  # "aps" or "base" (max-IoU)
    aps: APSConfig = field(default_factory=APSConfig)
    other_anchors: str = "ignore"  # the other anchors of a positive point: "ignore" (our reading) or "negative"

    def build(self, in_channels: int, num_classes: int) -> RetinaNetHead:
        _check_transfer(self.aps, "RetinaNet")
        return with_mod(RetinaNetHead(self, in_channels, num_classes), self, in_channels)


@dataclass(frozen=True)
class MODFoveaBoxHeadConfig(FoveaBoxHeadConfig):
    """FoveaBox with RFA and APS: candidates are all cells inside the box on every level (Sec. 4.5)."""

    rfa: str = "first"
    rfa_modulated: bool = True
    assigner: str = "aps"  # "aps" or "base" (fovea areas)
    aps: APSConfig = field(default_factory=APSConfig)

    def build(self, in_channels: int, num_classes: int) -> FoveaBoxHead:
        _check_transfer(self.aps, "FoveaBox")
        return with_mod(FoveaBoxHead(self, in_channels, num_classes), self, in_channels)


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
