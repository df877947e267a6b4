"""FoveaBox (Kong et al. 2020, "FoveaBox: Beyound Anchor-Based Object Detection", IEEE TIP 29).

The non-aligned FoveaBox of mmdetection's ``configs/foveabox/fovea_r50_fpn_4x4_1x_coco.py`` (the
detector MOD's Table 3 transfers to), following the paper where the two differ. (The paper's text is
not among the project's papers; section references are to the TIP version, Sec. III-A to III-F =
arXiv 1904.03797 Sec. 3.1 to 3.6.)

* Head (Sec. III-A; mmdetection ``with_deform=False``): FPN P3-P7 (strides 8-128), a classification
  tower and a box tower of 4 x (3x3 conv, ReLU) each, no normalisation in the 1x config, a 3x3
  classifier with C sigmoid outputs and a 3x3 box regressor with 4 outputs per location. Every conv
  N(0, 0.01), classifier bias ``-log((1 - pi) / pi)``, pi = 0.01 (RetinaNet's initialisation).
* Scale assignment (Sec. III-B): level l has a base scale r_l (32 ... 512 on P3-P7, i.e. the basic
  areas S_l = r_l^2) and responds to boxes with ``r_l / eta <= sqrt(w h) <= r_l * eta``; eta = 2
  gives overlapping ranges, so one box is learned on every level whose range contains it
  (adjacent levels). mmdetection's ranges ``(1, 64), (32, 128), (64, 256), (128, 512),
  (256, 2048)`` are these with the ends widened; they are the default (``scale_ranges``).
* Object fovea (Sec. III-C): the box is projected onto the level, ``x' = x / s_l``; the positive
  area is the box shrunk by sigma about its centre, ``[c'_x - sigma w'/2, c'_x + sigma w'/2]``
  (and the same in y). A cell ``(i, j)`` (centre ``(i + 0.5, j + 0.5)`` in level coordinates) is
  positive when its centre lies in that interval; the integer bounds are computed as mmdetection
  does (``ceil(lo - 0.5)`` .. ``floor(hi - 0.5)`` clamped to the map), which is the same rule up to
  the clamp at the map border. sigma = 0.4 (the TIP paper and mmdetection). Where the positive
  areas of several boxes on one level overlap, the box of *smallest* area wins: mmdetection paints
  the boxes of a level in order of decreasing area, so later (smaller) boxes overwrite larger ones.
  The arXiv v1 of the paper also had a wider "negative" shrink sigma_2 whose band around the
  positive area is ignored; ``neg_sigma`` (default ``None``: no band, as in the TIP paper and
  mmdetection) enables it. Crowd regions (``ignore_boxes``): non-positive cells whose centre lies
  strictly inside a crowd box are ignored by the classification loss (mmdetection ignores crowds).
* Box targets (Sec. III-D, the box-prediction equation): for a positive cell at ``(x, y)`` on level l,
  ``t_x1 = log((s_l (x + 0.5) - x1) / z)``, ``t_y1 = log((s_l (y + 0.5) - y1) / z)``,
  ``t_x2 = log((x2 - s_l (x + 0.5)) / z)``, ``t_y2 = log((y2 - s_l (y + 0.5)) / z)`` with the
  normaliser ``z = sqrt(S_l) = r_l`` (32 at P3: ``base_edges=(32, 64, 128, 256, 512)``).
  **Code difference:** mmdetection (and the official code) normalise by ``base_edge_list =
  (16, 32, 64, 128, 256)``, i.e. ``r_l / 2``; set ``base_edges=MMDET_BASE_EDGES`` for it. The
  ratio inside the log is clamped to ``[1/16, 16]`` as in mmdetection (``target_clamp``; ``None``
  disables it; the paper does not mention a clamp).
* Loss (Sec. III-E; mmdetection config): focal loss with gamma = 1.5, alpha = 0.4 over all
  non-ignored cells, normalised by ``num_pos + num_images`` (mmdetection's ``avg_factor``;
  ``cls_normalizer="num_pos"`` gives RetinaNet's normalisation); smooth L1 (beta 0.11, weight 1)
  on the four log targets of positive cells, normalised by ``num_pos``.
* Inference (Sec. III-F): box ``(x - z e^{t_x1}, y - z e^{t_y1}, x + z e^{t_x2}, y + z e^{t_y2})`` with ``x, y``
  the cell centre in pixels; threshold 0.05, top 1000 per level, NMS 0.5, 100 per image. (mmdetection
  takes the per-level top 1000 locations by max class score before thresholding; the shared
  :func:`replicate.models.postprocess.postprocess` ranks (location, class) pairs above threshold.)

The assignment is vectorised over the batch and the ground truths, (B, N_l, M) per level; the only
Python loop runs over the five pyramid levels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...errors import ReplicateError
from .._utils import conv_tower, flatten_levels, init_normal, mean_over_ranks, prior_prob_bias
from ..assigners import IGNORED, NEGATIVE, Assignment, _with_labels, _nonempty_gt, _points_in_crowd, pad_targets
from ..detector import DetectorConfig, NeckConfig
from ..losses import focal_pair_cost, sigmoid_focal_loss_labels, smooth_l1_loss
from ..head import DenseHead, Priors, point_priors
from ..postprocess import TestConfig, postprocess
from ..priors import points_for

FOVEA_RANGES: tuple[tuple[float, float], ...] = ((1, 64), (32, 128), (64, 256), (128, 512), (256, 2048))
PAPER_BASE_EDGES: tuple[float, ...] = (32, 64, 128, 256, 512)  # z = sqrt(S_l), Sec. III-D
MMDET_BASE_EDGES: tuple[float, ...] = (16, 32, 64, 128, 256)  # mmdetection's base_edge_list


@dataclass(frozen=True)
class FoveaBoxHeadConfig:
    feat_channels: int = 256
    num_convs: int = 4
    norm: str | None = None  # None (1x config) or "gn" (the "gn-head" configs)
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    base_edges: tuple[float, ...] = PAPER_BASE_EDGES  # box-target normaliser z per level
    scale_ranges: tuple[tuple[float, float], ...] = FOVEA_RANGES  # on sqrt(w h), inclusive
    sigma: float = 0.4  # positive (fovea) shrink factor
    neg_sigma: float | None = None  # arXiv v1's sigma_2: band between sigma and neg_sigma is ignored
    target_clamp: tuple[float, float] | None = (1.0 / 16, 16.0)  # clamp of distance / z before log
    focal_alpha: float = 0.4
    focal_gamma: float = 1.5
    cls_normalizer: str = "num_pos_plus_images"  # mmdetection; or "num_pos"
    smooth_l1_beta: float = 0.11
    box_loss_weight: float = 1.0
    prior_prob: float = 0.01

    def build(self, in_channels: int, num_classes: int) -> "FoveaBoxHead":
        return FoveaBoxHead(self, in_channels, num_classes)


# ------------------------------------------------------------------------------ box coding


def fovea_encode(points: Tensor, z: Tensor, gt: Tensor, clamp: tuple[float, float] | None = (1.0 / 16, 16.0)) -> Tensor:
    """FoveaBox box targets (Sec. III-D): ``log((x - x1) / z)``, ``log((y - y1) / z)``,
    ``log((x2 - x) / z)``, ``log((y2 - y) / z)``.

    ``points`` (..., 2) are cell centres in pixels (``s_l (x + 0.5)``), ``z`` (...) the level's
    normaliser, ``gt`` (..., 4) xyxy; the ratios are clamped to ``clamp`` before the log.
    """
    x, y = points.unbind(-1)
    x1, y1, x2, y2 = gt.unbind(-1)
    ratio = torch.stack(torch.broadcast_tensors(x - x1, y - y1, x2 - x, y2 - y), dim=-1) / z[..., None]
    if clamp is not None:
        ratio = ratio.clamp(min=clamp[0], max=clamp[1])
    else:
        ratio = ratio.clamp(min=1e-12)
    return ratio.log()


def fovea_decode(points: Tensor, z: Tensor, t: Tensor, max_log: float = math.log(1e4)) -> Tensor:
    """Inverse of :func:`fovea_encode`: ``(x - z e^{t0}, y - z e^{t1}, x + z e^{t2}, y + z e^{t3})``."""
    x, y = points.unbind(-1)
    d = t.clamp(max=max_log).exp() * z[..., None]
    l, tp, r, b = d.unbind(-1)
    return torch.stack(torch.broadcast_tensors(x - l, y - tp, x + r, y + b), dim=-1)


# ------------------------------------------------------------------------------ assignment


def _fovea_cells(gt: Tensor, stride: float, sigma: float, h: int, w: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Inclusive integer cell bounds (left, top, right, bottom) of the sigma-shrunk boxes, (B, M) each.

    Cell i's centre is i + 0.5 in level coordinates, so the cells whose centres lie in
    ``[lo, hi]`` are ``ceil(lo - 0.5) .. floor(hi - 0.5)``; bounds are clamped to the map.
    """
    g = gt / stride
    half_w = 0.5 * (g[..., 2] - g[..., 0])
    half_h = 0.5 * (g[..., 3] - g[..., 1])
    left = torch.ceil(g[..., 0] + (1 - sigma) * half_w - 0.5).clamp(0, w - 1)
    right = torch.floor(g[..., 0] + (1 + sigma) * half_w - 0.5).clamp(0, w - 1)
    top = torch.ceil(g[..., 1] + (1 - sigma) * half_h - 0.5).clamp(0, h - 1)
    bottom = torch.floor(g[..., 1] + (1 + sigma) * half_h - 0.5).clamp(0, h - 1)
    return left, top, right, bottom


def _in_cells(ix: Tensor, iy: Tensor, bounds: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
    """(B, N, M) bool: cell (ix, iy) (N,) lies within the inclusive bounds (B, M)."""
    left, top, right, bottom = (b[:, None, :] for b in bounds)
    x = ix[None, :, None]
    y = iy[None, :, None]
    return (x >= left) & (x <= right) & (y >= top) & (y <= bottom)


def fovea_assign(
    featmap_sizes: list[tuple[int, int]],
    strides: tuple[int, ...],
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_valid: Tensor,
    *,
    scale_ranges: tuple[tuple[float, float], ...] = FOVEA_RANGES,
    sigma: float = 0.4,
    neg_sigma: float | None = None,
    ignore_boxes: Tensor | None = None,
    ignore_valid: Tensor | None = None,
) -> Assignment:
    """FoveaBox label assignment (Sec. III-B, III-C) for a batch, over the concatenated cells of all levels.

    On level l, a valid ground truth with ``lo_l <= sqrt(w h) <= hi_l`` makes positive the cells of
    its sigma-shrunk box (see :func:`_fovea_cells`); overlaps go to the smallest-area box (exact
    ties: lowest GT index). With ``neg_sigma``, non-positive cells inside some range-matched box
    shrunk by ``neg_sigma`` are ignored. Non-positive cells whose centre lies strictly inside a
    valid crowd box are ignored. Cells are ordered level by level, row-major (as
    :func:`replicate.models.priors.points_for`).

    Returns:
        :class:`Assignment` (``max_iou`` all zeros: cells have no extent).
    """
    if len(featmap_sizes) != len(strides) or len(scale_ranges) != len(strides):
        raise ReplicateError(f"FoveaBox needs one size, stride and scale range per level: {len(featmap_sizes)} "
                             f"sizes, {len(strides)} strides, {len(scale_ranges)} ranges")
    if neg_sigma is not None and neg_sigma < sigma:
        raise ReplicateError(f"neg_sigma ({neg_sigma}) must not be smaller than sigma ({sigma})")
    gt_boxes, gt_labels, gt_valid = _nonempty_gt(gt_boxes, gt_labels, gt_valid)
    device = gt_boxes.device
    wh = (gt_boxes[..., 2:] - gt_boxes[..., :2]).clamp(min=0)
    sqrt_area = (wh[..., 0] * wh[..., 1]).sqrt()  # (B, M)
    area = wh[..., 0] * wh[..., 1]
    out = []
    for (h, w), stride, (lo, hi) in zip(featmap_sizes, strides, scale_ranges):  # levels only
        hit = gt_valid & (sqrt_area >= lo) & (sqrt_area <= hi)  # (B, M)
        iy, ix = torch.meshgrid(torch.arange(h, device=device, dtype=gt_boxes.dtype),
                                torch.arange(w, device=device, dtype=gt_boxes.dtype), indexing="ij")
        ix, iy = ix.reshape(-1), iy.reshape(-1)
        pos = _in_cells(ix, iy, _fovea_cells(gt_boxes, stride, sigma, h, w)) & hit[:, None, :]  # (B, N_l, M)
        cand_area = torch.where(pos, area[:, None, :].expand_as(pos), torch.full_like(pos, math.inf, dtype=area.dtype))
        best = cand_area.argmin(dim=2)  # smallest box wins; first index on ties
        idx = torch.where(pos.any(dim=2), best, torch.full_like(best, NEGATIVE))
        if neg_sigma is not None:
            band = (_in_cells(ix, iy, _fovea_cells(gt_boxes, stride, neg_sigma, h, w)) & hit[:, None, :]).any(dim=2)
            idx = torch.where(band & (idx == NEGATIVE), torch.full_like(idx, IGNORED), idx)
        out.append(idx)
    gt_index = torch.cat(out, dim=1)

    if ignore_boxes is not None and ignore_boxes.shape[1] > 0:
        if ignore_valid is None:
            ignore_valid = torch.ones(ignore_boxes.shape[:2], dtype=torch.bool, device=device)
        pts = torch.cat(points_for(tuple(strides), list(featmap_sizes), 0.5, device)).to(gt_boxes.dtype)
        crowd = _points_in_crowd(pts, ignore_boxes.to(gt_boxes.dtype), ignore_valid)
        gt_index = torch.where(crowd & (gt_index == NEGATIVE), torch.full_like(gt_index, IGNORED), gt_index)

    return _with_labels(gt_index, gt_labels, torch.zeros(gt_index.shape, dtype=gt_boxes.dtype, device=device))


# ------------------------------------------------------------------------------------ head


class FoveaBoxHead(DenseHead):
    prior_kind = "point"

    def __init__(self, cfg: FoveaBoxHeadConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        n = len(cfg.strides)
        if len(cfg.base_edges) != n or len(cfg.scale_ranges) != n:
            raise ReplicateError(f"FoveaBox needs one base edge and scale range per stride: {len(cfg.base_edges)} "
                                 f"edges, {len(cfg.scale_ranges)} ranges, {n} strides")
        if cfg.cls_normalizer not in ("num_pos_plus_images", "num_pos"):
            raise ReplicateError(f"FoveaBox cls_normalizer must be 'num_pos_plus_images' or 'num_pos', "
                                 f"got {cfg.cls_normalizer!r}")
        if not 0 < cfg.sigma <= 1:
            raise ReplicateError(f"FoveaBox sigma must lie in (0, 1], got {cfg.sigma}")
        self.cfg, self.num_classes = cfg, num_classes
        self.cls_tower = conv_tower(in_channels, cfg.feat_channels, cfg.num_convs, cfg.norm)
        self.reg_tower = conv_tower(in_channels, cfg.feat_channels, cfg.num_convs, cfg.norm)
        self.cls_out = nn.Conv2d(cfg.feat_channels, num_classes, 3, padding=1)
        self.reg_out = nn.Conv2d(cfg.feat_channels, 4, 3, padding=1)
        init_normal(self)
        nn.init.constant_(self.cls_out.bias, prior_prob_bias(cfg.prior_prob))
        self._prior_cache: dict = {}

    def forward(self, feats: list[Tensor]) -> dict[str, list[Tensor]]:
        if len(feats) != len(self.cfg.strides):
            raise ReplicateError(f"FoveaBox head has {len(self.cfg.strides)} strides but got {len(feats)} levels")
        cls, reg = [], []
        for x in feats:
            cls.append(self.cls_out(self.cls_tower(x)))
            reg.append(self.reg_out(self.reg_tower(x)))
        return {"cls": cls, "reg": reg}

    def priors(self, outs: dict[str, list[Tensor]]) -> Priors:
        pts, _ = self.cells(outs["cls"])
        return point_priors(pts, self.cfg.strides)

    def cells(self, maps: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per-level cell centres ``s_l (x + 0.5)`` (N_l, 2) and normalisers z (N_l,), cached per size."""
        sizes = tuple(tuple(m.shape[-2:]) for m in maps)
        key = (sizes, maps[0].device)
        if key not in self._prior_cache:
            pts = points_for(self.cfg.strides, list(sizes), 0.5, maps[0].device)
            z = [torch.full((len(p),), float(e), device=p.device) for p, e in zip(pts, self.cfg.base_edges)]
            self._prior_cache = {key: (pts, z)}
        return self._prior_cache[key]

    def assign_priors(self, maps: list[Tensor], targets: list[dict]) -> tuple[Assignment, Tensor]:
        """Fovea assignment for the batch; returns it and the matched GT box per cell (B, N, 4)."""
        gt_boxes, gt_labels, gt_valid, ig_boxes, ig_valid = pad_targets(targets)
        c = self.cfg
        sizes = [tuple(m.shape[-2:]) for m in maps]
        a = fovea_assign(sizes, c.strides, gt_boxes, gt_labels, gt_valid, scale_ranges=c.scale_ranges,
                         sigma=c.sigma, neg_sigma=c.neg_sigma, ignore_boxes=ig_boxes, ignore_valid=ig_valid)
        return a, a.matched_boxes(gt_boxes)

    def assign_by_rule(self, outs: dict[str, list[Tensor]], targets: list[dict]) -> tuple[Assignment, Tensor]:
        """The head's own assignment rule (it ignores the predictions; a plug-in assigner may not)."""
        return self.assign_priors(outs["cls"], targets)

    @torch.no_grad()
    def pair_costs(self, outs: dict[str, list[Tensor]], priors: Priors, img: Tensor, prior: Tensor, boxes: Tensor,
                   labels: Tensor) -> tuple[Tensor, Tensor]:
        """This head's losses of K (image, cell) pairs taken as positives of ``boxes`` / ``labels`` (K,): its
        focal loss summed over the classes (one-hot target) and smooth L1 on the log-space targets."""
        c = self.cfg
        _, zs = self.cells(outs["cls"])
        cls = flatten_levels(outs["cls"], self.num_classes)
        reg = flatten_levels(outs["reg"], 4)
        cost_cls = focal_pair_cost(cls, img, prior, labels, c.focal_alpha, c.focal_gamma)
        target = fovea_encode(priors.centres[prior], torch.cat(zs)[prior], boxes.float(), c.target_clamp)
        return cost_cls, c.box_loss_weight * smooth_l1_loss(reg[img, prior].float(), target, c.smooth_l1_beta).sum(-1)

    def losses(self, outs: dict[str, list[Tensor]], a: Assignment, matched: Tensor) -> dict[str, Tensor]:
        c = self.cfg
        pts, zs = self.cells(outs["cls"])
        points, z = torch.cat(pts), torch.cat(zs)
        cls = flatten_levels(outs["cls"], self.num_classes)
        reg = flatten_levels(outs["reg"], 4)
        num_pos = mean_over_ranks(a.num_pos)
        B = cls.shape[0]
        cls_norm = num_pos + B if c.cls_normalizer == "num_pos_plus_images" else num_pos.clamp(min=1.0)

        loss_cls = sigmoid_focal_loss_labels(cls, a.labels, ~a.ignore_mask, c.focal_alpha, c.focal_gamma,
                                             avg_factor=cls_norm)

        b_idx, p_idx = a.pos_mask.nonzero(as_tuple=True)
        target = fovea_encode(points[p_idx], z[p_idx], matched[b_idx, p_idx], c.target_clamp)
        loss_bbox = smooth_l1_loss(reg[b_idx, p_idx].float(), target, c.smooth_l1_beta, reduction="mean",
                                   avg_factor=num_pos.clamp(min=1.0))
        return {"loss_cls": loss_cls, "loss_bbox": c.box_loss_weight * loss_bbox}

    def predict(self, outs: dict[str, list[Tensor]], image_sizes: list[tuple[int, int]],
                cfg: TestConfig) -> list[dict[str, Tensor]]:
        pts, zs = self.cells(outs["cls"])
        probs = [flatten_levels([m], self.num_classes).sigmoid() for m in outs["cls"]]
        regs = [flatten_levels([m], 4) for m in outs["reg"]]

        def decode(level: int, img: Tensor, prior: Tensor) -> Tensor:
            return fovea_decode(pts[level][prior], zs[level][prior], regs[level][img, prior].float())

        return postprocess(probs, decode, image_sizes, cfg)


def foveabox() -> DetectorConfig:
    """FoveaBox R50-FPN 1x (Kong et al. 2020; mmdetection fovea_r50_fpn_4x4_1x_coco): fovea sigma 0.4, eta-overlapping ranges."""
    # P6 from C5 (mmdetection ``add_extra_convs='on_input'``); P7 = conv(ReLU(P6)) as in RetinaNet's FPN,
    # which the paper follows (mmdetection's FPN skips that ReLU: ``relu_before_extra_convs=False``).
    return DetectorConfig("foveabox", FoveaBoxHeadConfig(),
                          neck=NeckConfig(extra_from="input", relu_before_extra=True),
                          test=TestConfig(score_thr=0.05, pre_nms_topk=1000, nms_iou=0.5, max_per_image=100))
