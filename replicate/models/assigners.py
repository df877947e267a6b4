"""Label assignment: which prior (anchor or point) learns from which ground-truth box.

The assigners of the detectors this project replicates, all vectorised over the
batch. Ground truth arrives padded (see :func:`pad_targets`): ``gt_boxes`` (B, M, 4)
xyxy, ``gt_labels`` (B, M), ``gt_valid`` (B, M) with ``False`` marking padding;
crowd regions arrive as ``ignore_boxes`` (B, K, 4) with ``ignore_valid`` (B, K).
Priors are shared by every image of the batch (:func:`max_iou_assign` also takes one set per image).

* :func:`max_iou_assign` -- the max-IoU rule of Faster R-CNN (Ren et al. 2015) and
  RetinaNet (Lin et al. 2017), including the "low-quality" rescue of ground truths
  whose best IoU falls below the positive threshold.
* :func:`fcos_assign` -- FCOS (Tian et al. 2019): points inside the box (or its centre
  region), per-level regression-range limits, smallest-area tie-break.
* :func:`atss_assign` -- Adaptive Training Sample Selection (Zhang et al. 2020,
  Algorithm 1): per-level top-k closest anchors, IoU threshold mean + std.
* :func:`point_assign` -- RepPoints' initial stage (Yang et al. 2019): on the level the
  box's size maps to, the location nearest its centre.

Every assigner returns an :class:`Assignment`. Codes in ``gt_index``: ``>= 0`` the
index into M of the matched ground truth (positive), ``-1`` negative, ``-2`` ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

from .gmm import gmm2_positives
from .losses import aligned_box_iou

NEGATIVE = -1
IGNORED = -2

DEFAULT_FCOS_RANGES: tuple[tuple[float, float], ...] = (
    (-1.0, 64.0),
    (64.0, 128.0),
    (128.0, 256.0),
    (256.0, 512.0),
    (512.0, math.inf),
)


@dataclass
class Assignment:
    """Result of a label assignment for a batch of B images and A priors.

    Attributes:
        gt_index: (B, A) long. Index into M of the matched ground truth for positives,
            ``-1`` for negatives, ``-2`` for ignored priors.
        labels: (B, A) long. Class label of the matched ground truth for positives,
            ``-1`` otherwise (the "background = num_classes" convention belongs to the
            loss, not here).
        max_iou: (B, A) float. IoU with the matched ground truth for positives and with
            the best-overlapping valid ground truth otherwise; 0 when the image has no
            ground truth (and 0 throughout for the point-based FCOS assigner).
    """

    gt_index: Tensor
    labels: Tensor
    max_iou: Tensor

    @property
    def pos_mask(self) -> Tensor:
        """(B, A) bool, priors matched to a ground truth."""
        return self.gt_index >= 0

    @property
    def neg_mask(self) -> Tensor:
        """(B, A) bool, background priors."""
        return self.gt_index == NEGATIVE

    @property
    def ignore_mask(self) -> Tensor:
        """(B, A) bool, priors excluded from the classification loss."""
        return self.gt_index == IGNORED

    @property
    def num_pos(self) -> Tensor:
        """0-d long tensor: number of positives over the whole batch (no host sync)."""
        return self.pos_mask.sum()

    def matched_boxes(self, gt_boxes: Tensor) -> Tensor:
        """(B, A, 4): the matched ground-truth box of every prior (meaningful for positives only)."""
        idx = self.gt_index.clamp(min=0)
        if gt_boxes.shape[1] == 0:
            return gt_boxes.new_zeros(*idx.shape, 4)
        return torch.gather(gt_boxes, 1, idx[..., None].expand(-1, -1, 4))


# ----------------------------------------------------------------------------- helpers


def pad_targets(
    targets: Sequence[dict],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Pad per-image targets into the batched layout used by every assigner.

    Args:
        targets: one dict per image with ``"boxes"`` (N, 4) xyxy, ``"labels"`` (N,) and
            optionally ``"ignore_boxes"`` (K, 4) (crowd regions; absent means none).

    Returns:
        ``(gt_boxes (B, M, 4) float32, gt_labels (B, M) long, gt_valid (B, M) bool,
        ignore_boxes (B, K, 4) float32, ignore_valid (B, K) bool)`` with M and K the
        per-batch maxima (possibly 0). Padding rows are zero boxes, label -1, invalid.
    """
    if len(targets) == 0:
        raise ValueError("pad_targets needs at least one image")
    device = torch.as_tensor(targets[0]["boxes"]).device
    boxes = [torch.as_tensor(t["boxes"], dtype=torch.float32, device=device).reshape(-1, 4) for t in targets]
    labels = [torch.as_tensor(t["labels"], dtype=torch.long, device=device).reshape(-1) for t in targets]
    ignores = [
        torch.as_tensor(t.get("ignore_boxes", torch.zeros(0, 4)), dtype=torch.float32, device=device).reshape(-1, 4)
        for t in targets
    ]
    for b, l in zip(boxes, labels):
        if b.shape[0] != l.shape[0]:
            raise ValueError(f"boxes ({b.shape[0]}) and labels ({l.shape[0]}) differ in length")
    B = len(targets)
    M = max(b.shape[0] for b in boxes)
    K = max(b.shape[0] for b in ignores)
    gt_boxes = torch.zeros(B, M, 4, device=device)
    gt_labels = torch.full((B, M), -1, dtype=torch.long, device=device)
    gt_valid = torch.zeros(B, M, dtype=torch.bool, device=device)
    ignore_boxes = torch.zeros(B, K, 4, device=device)
    ignore_valid = torch.zeros(B, K, dtype=torch.bool, device=device)
    for i, (b, l, g) in enumerate(zip(boxes, labels, ignores)):
        n, k = b.shape[0], g.shape[0]
        gt_boxes[i, :n] = b
        gt_labels[i, :n] = l
        gt_valid[i, :n] = True
        ignore_boxes[i, :k] = g
        ignore_valid[i, :k] = True
    return gt_boxes, gt_labels, gt_valid, ignore_boxes, ignore_valid


def _nonempty_gt(gt_boxes: Tensor, gt_labels: Tensor, gt_valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Append one invalid padding column when M == 0 so reductions over M are defined."""
    if gt_boxes.shape[1] > 0:
        return gt_boxes, gt_labels, gt_valid
    B = gt_boxes.shape[0]
    return (
        gt_boxes.new_zeros(B, 1, 4),
        gt_labels.new_full((B, 1), -1),
        gt_valid.new_zeros(B, 1),
    )


def _batched_iou(priors: Tensor, gt_boxes: Tensor) -> Tensor:
    """IoU between priors, shared (A, 4) or per image (B, A, 4), and per-image boxes (B, M, 4) -> (B, A, M)."""
    B, M, _ = gt_boxes.shape
    if priors.dim() == 2:
        iou = box_iou(priors, gt_boxes.reshape(B * M, 4))  # (A, B*M)
        return iou.reshape(priors.shape[0], B, M).permute(1, 0, 2)
    return aligned_box_iou(priors[:, :, None, :], gt_boxes[:, None, :, :])


def _crowd_iof(priors: Tensor, ignore_boxes: Tensor, ignore_valid: Tensor) -> Tensor:
    """Max over valid crowd boxes of intersection / prior area -> (B, A); 0 without crowds. Priors are
    shared (A, 4) or per image (B, A, 4)."""
    B, K, _ = ignore_boxes.shape
    if K == 0:
        return priors.new_zeros(B, priors.shape[-2])
    p = priors[..., :, None, :] if priors.dim() == 3 else priors[None, :, None, :]  # (B or 1, A, 1, 4)
    g = ignore_boxes[:, None, :, :]  # (B, 1, K, 4)
    lt = torch.maximum(p[..., :2], g[..., :2])
    rb = torch.minimum(p[..., 2:], g[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]  # (B, A, K)
    area = ((p[..., 2] - p[..., 0]) * (p[..., 3] - p[..., 1])).clamp(min=1e-12)  # (B or 1, A, 1)
    iof = inter / area
    iof = iof.masked_fill(~ignore_valid[:, None, :], 0.0)
    return iof.max(dim=2).values


def _points_in_crowd(points: Tensor, ignore_boxes: Tensor, ignore_valid: Tensor) -> Tensor:
    """(B, A) bool: point strictly inside any valid crowd box."""
    B, K, _ = ignore_boxes.shape
    if K == 0:
        return torch.zeros(B, points.shape[0], dtype=torch.bool, device=points.device)
    x = points[None, :, None, 0]
    y = points[None, :, None, 1]
    g = ignore_boxes[:, None, :, :]
    inside = (x > g[..., 0]) & (y > g[..., 1]) & (x < g[..., 2]) & (y < g[..., 3])
    return (inside & ignore_valid[:, None, :]).any(dim=2)


def _with_labels(gt_index: Tensor, gt_labels: Tensor, max_iou: Tensor) -> Assignment:
    """Gather labels of the matched ground truth; -1 for negatives and ignored priors."""
    pos = gt_index >= 0
    labels = torch.gather(gt_labels, 1, gt_index.clamp(min=0))
    labels = torch.where(pos, labels, torch.full_like(labels, -1))
    return Assignment(gt_index=gt_index, labels=labels, max_iou=max_iou)


def _ignore_crowds(anchors: Tensor, gt_index: Tensor, positive: Tensor, ignore_boxes: Tensor | None,
                   ignore_valid: Tensor | None, ignore_iof: float) -> Tensor:
    """Mark as ignored every non-positive anchor covering a crowd box by at least ``ignore_iof``
    (intersection over the anchor's own area)."""
    if ignore_boxes is None or ignore_boxes.shape[1] == 0:
        return gt_index
    if ignore_valid is None:
        ignore_valid = torch.ones(ignore_boxes.shape[:2], dtype=torch.bool, device=ignore_boxes.device)
    crowd = _crowd_iof(anchors, ignore_boxes, ignore_valid) >= ignore_iof
    return torch.where(crowd & ~positive, torch.full_like(gt_index, IGNORED), gt_index)


# ------------------------------------------------------------------------------ max IoU


def max_iou_assign(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_valid: Tensor,
    *,
    pos_iou: float = 0.5,
    neg_iou: float = 0.4,
    min_pos_iou: float = 0.0,
    low_quality: bool = True,
    ignore_boxes: Tensor | None = None,
    ignore_valid: Tensor | None = None,
    ignore_iof: float = 0.5,
) -> Assignment:
    """Max-IoU assignment of Faster R-CNN (Ren et al. 2015) / RetinaNet (Lin et al. 2017).

    For each image and anchor, the best valid ground truth by IoU is found. Then:

    1. ``max IoU < neg_iou`` -> negative (RetinaNet: 0.4); anchors in an image without
       ground truth are all negative.
    2. ``neg_iou <= max IoU < pos_iou`` -> ignored.
    3. ``max IoU >= pos_iou`` -> positive for that ground truth (RetinaNet: 0.5).
    4. Low-quality matches (``low_quality=True``; Faster R-CNN's "anchor with the highest
       IoU with a ground-truth box" rule): for every valid ground truth, *all* anchors
       whose IoU equals that ground truth's highest IoU (ties included, the
       ``gt_max_assign_all`` behaviour of the reference implementation) become positive
       for it, provided that IoU is ``>= min_pos_iou`` and strictly positive (a box
       overlapping no anchor rescues nothing; requiring ``> 0`` avoids the degenerate
       case where ``min_pos_iou = 0`` would turn every non-overlapping anchor positive).
       This overrides steps 1-3. When one anchor is the best anchor of several ground
       truths, the one with the largest index wins, matching the reference
       implementation's in-order loop in which later ground truths overwrite earlier ones.
    5. Crowd regions: anchors that are not positive and whose intersection over *anchor*
       area with a valid crowd box is ``>= ignore_iof`` become ignored.

    Args:
        anchors: (A, 4) xyxy, shared by the batch, or (B, A, 4), one set per image (a cascade's refined
            anchors: AlignDet's aligned detection module).
        gt_boxes, gt_labels, gt_valid: padded ground truth, (B, M, 4), (B, M), (B, M).
        ignore_boxes, ignore_valid: optional crowd regions (B, K, 4), (B, K).

    Returns:
        :class:`Assignment`; ``max_iou`` is the IoU with the matched ground truth for
        positives and with the best valid ground truth otherwise (0 without any).
    """
    if not neg_iou <= pos_iou:
        raise ValueError(f"neg_iou ({neg_iou}) must not exceed pos_iou ({pos_iou})")
    gt_boxes, gt_labels, gt_valid = _nonempty_gt(gt_boxes, gt_labels, gt_valid)
    B, M, _ = gt_boxes.shape
    iou = _batched_iou(anchors, gt_boxes)  # (B, A, M)
    iou = iou.masked_fill(~gt_valid[:, None, :], -1.0)  # padding never wins

    best_iou, best_gt = iou.max(dim=2)  # (B, A)
    has_gt = gt_valid.any(dim=1, keepdim=True)  # (B, 1)
    best_iou = torch.where(has_gt, best_iou, torch.zeros_like(best_iou))

    gt_index = torch.full_like(best_gt, IGNORED)
    gt_index = torch.where(best_iou < neg_iou, torch.full_like(gt_index, NEGATIVE), gt_index)
    pos = (best_iou >= pos_iou) & has_gt
    gt_index = torch.where(pos, best_gt, gt_index)

    if low_quality:
        gt_max = iou.max(dim=1).values  # (B, M), -1 for padding
        rescuable = gt_valid & (gt_max >= min_pos_iou) & (gt_max > 0)
        is_best = (iou == gt_max[:, None, :]) & rescuable[:, None, :]  # (B, A, M)
        m_idx = torch.arange(M, device=iou.device).expand_as(is_best)
        lq_gt = torch.where(is_best, m_idx, torch.full_like(m_idx, -1)).max(dim=2).values
        gt_index = torch.where(lq_gt >= 0, lq_gt, gt_index)

    matched = gt_index >= 0
    matched_iou = torch.gather(iou, 2, gt_index.clamp(min=0)[..., None])[..., 0]
    max_iou = torch.where(matched, matched_iou, best_iou)

    gt_index = _ignore_crowds(anchors, gt_index, matched, ignore_boxes, ignore_valid, ignore_iof)

    return _with_labels(gt_index, gt_labels, max_iou)


# --------------------------------------------------------------------------------- FCOS


def fcos_point_masks(points: Tensor, strides: Tensor, level: Tensor, gt_boxes: Tensor,
                     scale_ranges: Sequence[tuple[float, float]] = DEFAULT_FCOS_RANGES,
                     center_radius: float = 1.5) -> tuple[Tensor, Tensor, Tensor]:
    """FCOS's three point tests against every box, each (B, A, M) bool (see :func:`fcos_assign`):
    strictly inside the box; strictly inside its centre region (half-side ``center_radius * stride``,
    clipped to the box); ``max(l, t, r, b)`` within the level's range."""
    dtype = gt_boxes.dtype
    points = points.to(dtype)
    strides = strides.to(dtype)
    ranges = torch.as_tensor([[float(lo), float(hi)] for lo, hi in scale_ranges], dtype=dtype, device=points.device)
    lo = ranges[level, 0][None, :, None]  # (1, A, 1)
    hi = ranges[level, 1][None, :, None]
    x = points[None, :, None, 0]  # (1, A, 1)
    y = points[None, :, None, 1]
    g = gt_boxes[:, None, :, :]  # (B, 1, M, 4)
    x0, y0, x1, y1 = g[..., 0], g[..., 1], g[..., 2], g[..., 3]
    ltrb = torch.stack((x - x0, y - y0, x1 - x, y1 - y), dim=-1)  # (B, A, M, 4)
    inside = ltrb.min(dim=-1).values > 0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    r = strides[None, :, None] * center_radius
    region = torch.stack((x - torch.maximum(cx - r, x0), y - torch.maximum(cy - r, y0),
                          torch.minimum(cx + r, x1) - x, torch.minimum(cy + r, y1) - y), dim=-1)
    center = region.min(dim=-1).values > 0
    max_dist = ltrb.max(dim=-1).values
    return inside, center, (max_dist >= lo) & (max_dist <= hi)


def fcos_assign(
    points: Tensor,
    strides: Tensor,
    level: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_valid: Tensor,
    *,
    scale_ranges: Sequence[tuple[float, float]] = DEFAULT_FCOS_RANGES,
    center_sampling: bool = True,
    center_radius: float = 1.5,
    ignore_boxes: Tensor | None = None,
    ignore_valid: Tensor | None = None,
) -> Assignment:
    """FCOS point assignment (Tian et al. 2019, Sec. 3.1-3.2; centre sampling from FCOS v2).

    A point (x, y) with regression distances l = x - x0, t = y - y0, r = x1 - x, b = y1 - y
    to a valid ground truth is a *candidate* for it when:

    * it lies strictly inside the box (``min(l, t, r, b) > 0``), or, with
      ``center_sampling``, strictly inside the centre region: the square of half-side
      ``center_radius * stride`` around the box centre, clipped to the box; and
    * ``lo <= max(l, t, r, b) <= hi`` for its level's range ``scale_ranges[level]``
      (the paper sets a location negative when ``max > m_i`` or ``max < m_{i-1}``;
      distances are always measured to the full box, not the centre region).

    Among candidates the ground truth of smallest area wins (paper: "the minimal area
    as its regression target"); exact area ties go to the lowest GT index. Points with
    no candidate are negative; with crowd regions, negative points strictly inside a
    valid crowd box become ignored. ``max_iou`` is all zeros (points have no extent).

    Args:
        points: (A, 2) xy locations, shared by the batch.
        strides: (A,) stride of each point's level.
        level: (A,) long level index into ``scale_ranges``.
        gt_boxes, gt_labels, gt_valid: padded ground truth.
        ignore_boxes, ignore_valid: optional crowd regions.
    """
    gt_boxes, gt_labels, gt_valid = _nonempty_gt(gt_boxes, gt_labels, gt_valid)
    dtype = gt_boxes.dtype
    points = points.to(dtype)
    inside, center, in_range = fcos_point_masks(points, strides, level, gt_boxes, scale_ranges, center_radius)
    cand = (center if center_sampling else inside) & in_range & gt_valid[:, None, :]  # (B, A, M)

    area = (gt_boxes[..., 2] - gt_boxes[..., 0]) * (gt_boxes[..., 3] - gt_boxes[..., 1])  # (B, M)
    cand_area = torch.where(cand, area[:, None, :].expand_as(cand), torch.full(cand.shape, math.inf, dtype=dtype,
                                                                                device=cand.device))
    best_gt = cand_area.argmin(dim=2)  # first index on ties
    gt_index = torch.where(cand.any(dim=2), best_gt, torch.full_like(best_gt, NEGATIVE))
    gt_index = ignore_points_in_crowds(points, gt_index, ignore_boxes, ignore_valid)
    return _with_labels(gt_index, gt_labels, torch.zeros(gt_index.shape, dtype=dtype, device=gt_index.device))


def ignore_points_in_crowds(points: Tensor, gt_index: Tensor, ignore_boxes: Tensor | None,
                            ignore_valid: Tensor | None) -> Tensor:
    """``gt_index`` (B, A) with negative points strictly inside a valid crowd box marked ignored."""
    if ignore_boxes is None or ignore_boxes.shape[1] == 0:
        return gt_index
    if ignore_valid is None:
        ignore_valid = torch.ones(ignore_boxes.shape[:2], dtype=torch.bool, device=ignore_boxes.device)
    crowd = _points_in_crowd(points, ignore_boxes.to(points.dtype), ignore_valid)
    return torch.where(crowd & (gt_index == NEGATIVE), torch.full_like(gt_index, IGNORED), gt_index)


# --------------------------------------------------------------------------------- ATSS


def atss_assign(
    anchors: Tensor,
    num_per_level: Sequence[int],
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_valid: Tensor,
    *,
    topk: int = 9,
    ignore_boxes: Tensor | None = None,
    ignore_valid: Tensor | None = None,
    ignore_iof: float = 0.5,
) -> Assignment:
    """Adaptive Training Sample Selection (Zhang et al. 2020, Algorithm 1).

    For every valid ground truth g:

    1. on each pyramid level, select the ``min(topk, anchors on the level)`` anchors
       whose centres are closest (L2) to the centre of g; the union over levels is the
       candidate set C_g;
    2. compute the IoUs D_g between C_g and g, their mean m_g and standard deviation
       v_g, and the threshold t_g = m_g + v_g;
    3. a candidate is positive for g when its IoU is ``>= t_g`` *and* its centre lies
       strictly inside g.

    An anchor positive for several ground truths goes to the one with highest IoU
    (exact ties: lowest GT index). All other anchors are negative; with crowd regions,
    non-positive anchors whose intersection over anchor area with a valid crowd box is
    ``>= ignore_iof`` become ignored (same rule as :func:`max_iou_assign`).

    Standard deviation: the *unbiased* estimator (``torch.std`` default, Bessel's
    correction), as the reference implementation does; the paper does not specify. A
    candidate set of a single anchor gives std 0 instead of NaN.

    Args:
        anchors: (A, 4) xyxy, levels concatenated in order.
        num_per_level: anchors per level, summing to A.
        gt_boxes, gt_labels, gt_valid: padded ground truth.
        topk: candidates per level per ground truth (paper: 9).
        ignore_boxes, ignore_valid: optional crowd regions.

    Returns:
        :class:`Assignment`; ``max_iou`` is the IoU with the matched ground truth for
        positives and with the best valid ground truth otherwise (0 without any).
    """
    if sum(num_per_level) != anchors.shape[0]:
        raise ValueError(f"num_per_level sums to {sum(num_per_level)}, anchors has {anchors.shape[0]}")
    gt_boxes, gt_labels, gt_valid = _nonempty_gt(gt_boxes, gt_labels, gt_valid)
    B, M, _ = gt_boxes.shape
    A = anchors.shape[0]
    iou = _batched_iou(anchors, gt_boxes)  # (B, A, M)

    a_ctr = (anchors[:, :2] + anchors[:, 2:]) / 2  # (A, 2)
    g_ctr = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # (B, M, 2)
    dist = torch.linalg.vector_norm(a_ctr[None, :, None, :] - g_ctr[:, None, :, :], dim=-1)  # (B, A, M)

    cand_idx = []
    start = 0
    for n in num_per_level:  # loop over pyramid levels (a handful), not images or boxes
        if n > 0:
            k = min(topk, n)
            idx = dist[:, start : start + n, :].topk(k, dim=1, largest=False).indices  # (B, k, M)
            cand_idx.append(idx + start)
        start += n
    cand = torch.cat(cand_idx, dim=1)  # (B, C, M)
    cand_iou = torch.gather(iou, 1, cand)  # (B, C, M)
    mean = cand_iou.mean(dim=1, keepdim=True)
    std = cand_iou.std(dim=1, keepdim=True) if cand.shape[1] > 1 else torch.zeros_like(mean)
    thr = mean + std  # (B, 1, M)

    c_xy = a_ctr[cand]  # (B, C, M, 2)
    g = gt_boxes[:, None, :, :]  # (B, 1, M, 4)
    centre_inside = torch.stack(
        (c_xy[..., 0] - g[..., 0], c_xy[..., 1] - g[..., 1], g[..., 2] - c_xy[..., 0], g[..., 3] - c_xy[..., 1]),
        dim=-1,
    ).min(dim=-1).values > 0
    cand_pos = (cand_iou >= thr) & centre_inside & gt_valid[:, None, :]

    pos_full = torch.zeros(B, A, M, dtype=torch.bool, device=anchors.device)
    pos_full.scatter_(1, cand, cand_pos)  # candidates are distinct per (image, GT)

    pos_iou = iou.masked_fill(~pos_full, -math.inf)
    best_pos_iou, best_pos_gt = pos_iou.max(dim=2)  # first index on ties
    is_pos = pos_full.any(dim=2)
    gt_index = torch.where(is_pos, best_pos_gt, torch.full_like(best_pos_gt, NEGATIVE))

    valid_iou = iou.masked_fill(~gt_valid[:, None, :], 0.0)
    max_iou = torch.where(is_pos, best_pos_iou, valid_iou.max(dim=2).values)

    gt_index = _ignore_crowds(anchors, gt_index, is_pos, ignore_boxes, ignore_valid, ignore_iof)

    return _with_labels(gt_index, gt_labels, max_iou)


# ------------------------------------------------------------------------------------ PAA

PAA_POOL_IOU = 0.1  # the released code's pre-assignment: MaxIoUAssigner(pos_iou_thr=0.1, neg_iou_thr=0.1)
PAA_BOX_WEIGHT = 1.3  # its anchor score: focal loss + 1.3 x GIoU loss (the training losses' weights)
PAA_VAR_INIT = 1.0  # its GMM: precisions_init 1


def paa_assign(
    anchors: Tensor,
    num_per_level: Sequence[int],
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_valid: Tensor,
    pair_cost,
    *,
    topk: int = 9,
    pool_iou: float = PAA_POOL_IOU,
    ignore_boxes: Tensor | None = None,
    ignore_valid: Tensor | None = None,
    ignore_iof: float = 0.5,
) -> Assignment:
    """Probabilistic Anchor Assignment (Kim & Lee 2020, Sec. 3.1), as its released code runs it.

    1. Pre-assignment: every anchor whose best IoU with a valid ground truth is at least ``pool_iou`` belongs
       to that ground truth, and each ground truth also takes the anchors of its own highest IoU (a later
       ground truth wins such an anchor). Only these (anchor, ground truth) pairs are scored.
    2. Each pair's score is a loss, ``pair_cost(img, anchor, gt)`` for K triples -> (K,), the detector's own
       losses as if the anchor were that ground truth's positive (the code: focal + 1.3 x GIoU loss).
    3. Per ground truth and pyramid level, the ``topk`` anchors of lowest score are its candidates.
    4. A two-component GMM on each ground truth's candidate scores (:func:`replicate.models.gmm.gmm2_positives`,
       precision 1): the candidates of the low component, up to its most likely member, are positive. A ground
       truth with fewer than two candidates gets none. Everything else is negative.

    Batched over images and ground truths (one loop over the levels). ``max_iou`` and crowd regions as in
    :func:`atss_assign` (the released code ignores no crowd region: pass none).
    """
    if sum(num_per_level) != anchors.shape[0]:
        raise ValueError(f"num_per_level sums to {sum(num_per_level)}, anchors has {anchors.shape[0]}")
    gt_boxes, gt_labels, gt_valid = _nonempty_gt(gt_boxes, gt_labels, gt_valid)
    B, M, _ = gt_boxes.shape
    A = anchors.shape[0]
    iou = _batched_iou(anchors, gt_boxes).masked_fill(~gt_valid[:, None, :], -1.0)  # (B, A, M)
    best_iou, owner = iou.max(dim=2)  # (B, A)
    in_pool = best_iou >= pool_iou
    gt_best = iou.max(dim=1, keepdim=True).values  # (B, 1, M)
    own_best = (iou == gt_best) & (gt_best > 0) & gt_valid[:, None, :]  # (B, A, M)
    later = torch.arange(1, M + 1, device=anchors.device)
    takes_best = own_best.any(dim=2)
    owner = torch.where(takes_best, (own_best * later).argmax(dim=2), owner)
    in_pool = in_pool | takes_best

    img, anchor = in_pool.nonzero(as_tuple=True)
    cost = torch.full((B, A), math.inf, device=anchors.device)
    if img.numel():
        cost[img, anchor] = pair_cost(img, anchor, owner[img, anchor]).detach().float()
    owned = torch.where(owner[..., None] == torch.arange(M, device=anchors.device), cost[..., None],
                        torch.full_like(cost[..., None], math.inf))  # (B, A, M)

    cand_idx, cand_cost, start = [], [], 0
    for n in num_per_level:  # loop over pyramid levels (a handful), not images or boxes
        if n > 0:
            values, idx = owned[:, start:start + n].topk(min(topk, n), dim=1, largest=False)  # (B, k, M)
            cand_idx.append(idx + start)
            cand_cost.append(values)
        start += n
    cand = torch.cat(cand_idx, dim=1).permute(0, 2, 1).reshape(B * M, -1)  # (B*M, C)
    score = torch.cat(cand_cost, dim=1).permute(0, 2, 1).reshape(B * M, -1)
    valid = torch.isfinite(score)
    chosen = gmm2_positives(torch.where(valid, score, torch.zeros_like(score)), valid, iters=100, tol=1e-3,
                            var_init=PAA_VAR_INIT, single=False)  # (B*M, C)

    gt_index = torch.full((B, A), NEGATIVE, dtype=torch.long, device=anchors.device)
    rows = chosen.nonzero(as_tuple=True)
    gt_index[rows[0] // M, cand[rows]] = rows[0] % M  # an anchor has one owner: no conflicts
    is_pos = gt_index >= 0
    matched = iou.gather(2, gt_index.clamp(min=0)[..., None])[..., 0]
    max_iou = torch.where(is_pos, matched, best_iou.clamp(min=0.0))
    gt_index = _ignore_crowds(anchors, gt_index, is_pos, ignore_boxes, ignore_valid, ignore_iof)
    return _with_labels(gt_index, gt_labels, max_iou)


# ------------------------------------------------------------------------------- RepPoints


def point_assign(
    points: Tensor,
    strides: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_valid: Tensor,
    *,
    scale: float = 4.0,
    pos_num: int = 1,
) -> Assignment:
    """RepPoints' assignment of its initial stage (Yang et al. 2019, Sec. 4.1: a ground truth is assigned to
    the location nearest its centre, on the pyramid level its size maps to; the released code's
    ``PointAssigner``).

    For every valid ground truth of width w and height h:

    1. its level: stride ``2^l`` with ``l = floor((log2(w / scale) + log2(h / scale)) / 2)``, clamped to the
       levels of ``points``;
    2. on that level, its ``pos_num`` points nearest its centre, the distance measured in units of its own
       width and height (``||(p - c) / (w, h)||``), become its positives.

    A point chosen by several ground truths goes to the nearest (exact ties: the lowest index). Every other
    point is negative: the stage trains box regression only, and its negatives carry no loss.

    Args:
        points: (A, 2) x, y, levels concatenated; strides: (A,) the stride of each point's level.
        gt_boxes, gt_labels, gt_valid: padded ground truth.

    Returns:
        :class:`Assignment`; ``max_iou`` is 0 throughout (the rule reads no IoU).
    """
    gt_boxes, gt_labels, gt_valid = _nonempty_gt(gt_boxes, gt_labels, gt_valid)
    B, M, _ = gt_boxes.shape
    A = points.shape[0]
    levels = torch.log2(strides)  # (A,)
    wh = (gt_boxes[..., 2:] - gt_boxes[..., :2]).clamp(min=1e-6)  # (B, M, 2)
    gt_level = torch.floor(torch.log2(wh / scale).sum(-1) / 2).clamp(levels.min(), levels.max())  # (B, M)
    centre = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2
    dist = torch.linalg.vector_norm((points[None, None] - centre[:, :, None]) / wh[:, :, None], dim=-1)  # (B, M, A)
    allowed = (levels[None, None] == gt_level[..., None]) & gt_valid[..., None]
    dist = dist.masked_fill(~allowed, math.inf)
    k = min(pos_num, A)
    near, idx = dist.topk(k, dim=2, largest=False)  # (B, M, k)
    claims = torch.full((B, M, A), math.inf, device=points.device, dtype=dist.dtype)
    claims.scatter_(2, idx, near)  # each ground truth's distance at the points it chose, inf elsewhere
    best, gt = claims.min(dim=1)  # (B, A): the nearest claimant (first index on ties)
    gt_index = torch.where(torch.isfinite(best), gt, torch.full_like(gt, NEGATIVE))
    return _with_labels(gt_index, gt_labels, torch.zeros(B, A, device=points.device, dtype=dist.dtype))
