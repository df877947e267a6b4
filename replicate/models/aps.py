"""MOD's Aligned Points Sampler (APS): loss-driven positive selection for FCOS-style point detectors.

Reference: "Rethinking the task-driven feature misaligned problem in one-stage object detection" (MOD),
Sec. 3.2 "Aligned Points Sampler", Eqs. 3-8 and Fig. 3. For each ground truth (GT):

1. Candidates ``P_l`` are the points inside the GT box on every FPN level (built by the caller as the
   ``candidate`` mask). ``L_cls`` and ``L_reg`` are per-(GT, point) losses as if every candidate were
   positive (Sec. 3.2.1).
2. Eqs. 3-4: on each level keep the ``N_l = min(K, |P_l|)`` candidates with the smallest
   ``L_cls + L_reg`` (K = 9). Eq. 3 prints ``max``; the text bounds N_l by K and by the available
   points, so we read it as ``min`` (see ``notes/paper-readings.md``).
3. Eq. 5: keep the 2 levels with the smallest mean top-K cost ``sum(L_cls + L_reg) / N_l``; levels
   without candidates are never kept. Their candidates are concatenated into ``C_{l*}``.
4. Eqs. 6-8, our reading (softmaxes run over the candidates ``k`` of ``C_{l*}`` of one GT)::

       S_u = ( softmax_k(L_cls^C) + softmax_k(L_reg^C) ) / 2          (Eq. 6)
       S_m = sigmoid( |L_cls^C - L_reg^C| ) = 1 / (1 + exp(-|dL|))      (Eq. 7)
       S   = sqrt( S_u * S_m )                                          (Eq. 8)

   Lower S is better. The paper says nothing special for a GT with a single candidate level, so the
   paper score is applied to whatever ``C_{l*}`` holds (one or two levels).
5. A two-component 1-D GMM is fitted on S per GT (Sec. 4.1: the means start at the minimum and the
   maximum score); the candidates predicted in the component started at the minimum are positives.
   The paper gives no further rule; we apply the released code's PAA-style truncation (below) too, and
   the released code's GMM settings (weights 0.5/0.5, precision 0.1, scikit-learn's tol 1e-3, 100 iters).

Released code (``HaoGood/MOD``, ``fcos_core/modeling/rpn/fcos/loss.py``), available as
``score="code"``; the differences from the paper default are:

* the score is ``S = sqrt( sigmoid(|L_cls - L_reg|) * (L_cls + L_reg) )``: the softmaxes of Eq. 6 are
  computed and discarded, and the raw summed loss replaces S_u;
* a GT whose candidates lie on a single level uses the raw ``L_cls + L_reg`` as its score;
* the GMM is fitted on ``10 * S`` (the paper variant fits on S; ``gmm_scale`` overrides both).

Common to both variants (from the released code):

* truncation: among the component-0 points, take the one with the highest mixture log-likelihood
  (scikit-learn ``score_samples``); positives are the component-0 points whose S is <= its S;
* a GT with exactly one kept candidate takes it;
* conflicts between GTs (:func:`resolve_conflicts`): GTs of an image are processed in ascending area;
  a GT any of whose selected points is already positive for an earlier GT gets no positives at all.

Not reproduced here: the code's two-slot bookkeeping (``labels_mark``) that shrinks the candidate set of
larger GTs to points not already covered by smaller ones belongs to the caller's ``candidate`` mask;
the code also skips a level whose candidates sum to exactly zero loss (we keep it).

Everything is batched over all GTs of a batch (no loop over GTs); costs are used detached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from replicate.errors import ReplicateError
from replicate.models.gmm import gmm2_positives

SCORES = ("paper", "code")
CRITERIA = ("comb", "cls", "reg")  # the cost Eqs. 4-5 rank by (Table 1: comb = L_cls + L_reg, the paper's)
CODE_GMM_SCALE = 10.0
GMM_TOL = 1e-3
GMM_ITERS = 100


def _check_select_inputs(cost_cls: Tensor, cost_reg: Tensor, candidate: Tensor, level_of_point: Tensor,
                         num_levels: int, topk: int, num_levels_kept: int, score: str, criterion: str) -> None:
    """Raise :class:`ReplicateError` for arguments :func:`aps_select` cannot use."""
    if score not in SCORES:
        raise ReplicateError(f"aps_select: unknown score {score!r}; expected one of {SCORES}")
    if criterion not in CRITERIA:
        raise ReplicateError(f"aps_select: unknown criterion {criterion!r}; expected one of {CRITERIA}")
    if cost_cls.dim() != 2:
        raise ReplicateError(f"aps_select: cost_cls must be (M, P), got shape {tuple(cost_cls.shape)}")
    for name, tensor in (("cost_reg", cost_reg), ("candidate", candidate)):
        if tensor.shape != cost_cls.shape:
            raise ReplicateError(f"aps_select: {name} has shape {tuple(tensor.shape)}, "
                                 f"cost_cls has {tuple(cost_cls.shape)}")
    if candidate.dtype != torch.bool:
        raise ReplicateError(f"aps_select: candidate must be a bool tensor, got {candidate.dtype}")
    if level_of_point.shape != (cost_cls.shape[1],):
        raise ReplicateError(f"aps_select: level_of_point must be ({cost_cls.shape[1]},), "
                             f"got {tuple(level_of_point.shape)}")
    if num_levels < 1 or topk < 1 or num_levels_kept < 1:
        raise ReplicateError(f"aps_select: num_levels, topk and num_levels_kept must be >= 1, "
                             f"got {num_levels}, {topk}, {num_levels_kept}")


def _level_topk(cost: Tensor, candidate: Tensor, level_of_point: Tensor, num_levels: int,
                topk: int) -> tuple[Tensor, Tensor, Tensor]:
    """Eqs. 3-4: the ``min(topk, |P_l|)`` lowest-cost candidates of every level.

    Returns (M, L, k) costs, point indices and a validity mask; slots beyond ``|P_l|`` are invalid.
    The costs are masked once and each level's columns searched on their own (points are laid out
    level after level by the heads; other layouts are sorted by level first): a loop over the few
    levels, not over GTs.
    """
    masked = torch.where(candidate & cost.isfinite(), cost, torch.full_like(cost, math.inf))
    order = None
    if level_of_point.numel() > 1 and bool((level_of_point[1:] < level_of_point[:-1]).any()):
        order = torch.argsort(level_of_point, stable=True)
        masked, level_of_point = masked[:, order], level_of_point[order]
    counts = torch.bincount(level_of_point, minlength=num_levels).tolist()
    k = min(topk, cost.shape[1])
    values = torch.full((cost.shape[0], num_levels, k), math.inf, dtype=cost.dtype, device=cost.device)
    index = torch.zeros((cost.shape[0], num_levels, k), dtype=torch.long, device=cost.device)
    start = 0
    for level, n in enumerate(counts[:num_levels]):
        if n:
            v, i = masked[:, start:start + n].topk(min(k, n), dim=1, largest=False)
            values[:, level, :v.shape[1]] = v
            index[:, level, :v.shape[1]] = i + start
        start += n
    if order is not None:
        index = order[index]
    return values, index, values.isfinite()


def _keep_levels(values: Tensor, valid: Tensor, num_levels_kept: int) -> tuple[Tensor, Tensor]:
    """Eq. 5: the ``num_levels_kept`` levels with the smallest mean top-k cost.

    Returns (M, kept) level ids and whether each kept slot is a level that has candidates.
    """
    count = valid.sum(dim=2)
    total = torch.where(valid, values, torch.zeros_like(values)).sum(dim=2)
    mean = torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.inf))
    kept_mean, kept = mean.topk(min(num_levels_kept, mean.shape[1]), dim=1, largest=False)
    return kept, kept_mean.isfinite()


def _criterion_cost(cost_cls: Tensor, cost_reg: Tensor, criterion: str) -> Tensor:
    return {"comb": lambda: cost_cls + cost_reg, "cls": lambda: cost_cls, "reg": lambda: cost_reg}[criterion]()


def kept_levels(cost_cls: Tensor, cost_reg: Tensor, candidate: Tensor, level_of_point: Tensor, num_levels: int,
                topk: int = 9, num_levels_kept: int = 2, criterion: str = "comb") -> tuple[Tensor, Tensor]:
    """Eqs. 3-5: the levels each GT keeps, best (smallest mean top-K cost) first: ``(levels, ok)``, both
    (M, num_levels_kept); ``ok`` is false where a GT has fewer levels with candidates. The ranking
    :func:`aps_select` and :func:`aps_levels` use, for analyses that draw it (MOD's Fig. 4)."""
    cost = _criterion_cost(cost_cls.detach(), cost_reg.detach(), criterion)
    values, _, level_valid = _level_topk(cost, candidate, level_of_point, num_levels, topk)
    return _keep_levels(values, level_valid, num_levels_kept)


def aps_levels(cost_cls: Tensor, cost_reg: Tensor, candidate: Tensor, level_of_point: Tensor, num_levels: int,
               topk: int = 9, num_levels_kept: int = 2, criterion: str = "comb") -> Tensor:
    """Eqs. 3-5 alone: the (M, num_levels) bool mask of the levels each GT keeps (at most
    ``num_levels_kept``, only levels with candidates). Used without the spatial step for Table 1 and
    Table 5's "scale-level only" row."""
    _check_select_inputs(cost_cls, cost_reg, candidate, level_of_point, num_levels, topk, num_levels_kept, "paper",
                         criterion)
    num_gt = cost_cls.shape[0]
    mask = torch.zeros(num_gt, num_levels + 1, dtype=torch.bool, device=cost_cls.device)
    if num_gt == 0 or cost_cls.shape[1] == 0:
        return mask[:, :num_levels]
    kept, kept_ok = kept_levels(cost_cls, cost_reg, candidate, level_of_point, num_levels, topk, num_levels_kept,
                                criterion)
    mask.scatter_(1, torch.where(kept_ok, kept, torch.full_like(kept, num_levels)), True)
    return mask[:, :num_levels]


def _masked_softmax(x: Tensor, valid: Tensor) -> Tensor:
    """Softmax over the valid entries of each row; 0 on invalid entries and on empty rows."""
    logits = torch.where(valid, x, torch.full_like(x, -math.inf))
    return torch.where(valid, torch.softmax(logits, dim=1), torch.zeros_like(x))


def paper_score(cls: Tensor, reg: Tensor, valid: Tensor) -> Tensor:
    """MOD Eqs. 6-8: ``S = sqrt(S_u * S_m)`` per GT row (M, C), softmaxes over the valid candidates."""
    unfitness = (_masked_softmax(cls, valid) + _masked_softmax(reg, valid)) / 2
    misalignment = torch.sigmoid((cls - reg).abs())
    return torch.where(valid, torch.sqrt(unfitness * misalignment), torch.zeros_like(cls))


def code_score(cls: Tensor, reg: Tensor, valid: Tensor, single_level: Tensor) -> Tensor:
    """Released code's score: ``sqrt(sigmoid(|dL|) * (L_cls + L_reg))``, raw ``L_cls + L_reg`` for
    GTs (rows of ``single_level`` (M,)) whose candidates lie on one level."""
    total = cls + reg
    score = torch.sqrt(torch.sigmoid((cls - reg).abs()) * total.clamp(min=0))
    score = torch.where(single_level.unsqueeze(1), total, score)
    return torch.where(valid, score, torch.zeros_like(cls))


def aps_select(
    cost_cls: Tensor,
    cost_reg: Tensor,
    candidate: Tensor,
    level_of_point: Tensor,
    num_levels: int,
    topk: int = 9,
    num_levels_kept: int = 2,
    score: str = "paper",
    gmm_scale: float | None = None,
    criterion: str = "comb",
) -> Tensor:
    """Select the APS positives of every GT of a batch at once (before conflicts between GTs).

    Args:
        cost_cls: (M, P) classification loss of each (GT, point) pair; M counts the GTs of the whole
            batch, P the points of one image with all levels concatenated.
        cost_reg: (M, P) regression loss of each pair.
        candidate: (M, P) bool, the point is a candidate of the GT (inside its box). Candidates with a
            non-finite cost are ignored.
        level_of_point: (P,) long FPN level index of each point, in ``[0, num_levels)``.
        num_levels: number of FPN levels.
        topk: K of Eq. 3 (9 in the paper).
        num_levels_kept: number of levels kept by Eq. 5 (2 in the paper).
        score: ``"paper"`` (Eqs. 6-8) or ``"code"`` (the released code's score, see the module docstring).
        gmm_scale: factor applied to S before the GMM fit; default 1 for ``"paper"``, 10 for ``"code"``.
        criterion: the cost Eqs. 4-5 rank points and levels by: ``"comb"`` (``L_cls + L_reg``, the
            paper), ``"cls"`` or ``"reg"`` (Table 1's single-task criteria).

    Returns:
        (M, P) bool, the points each GT selects as positives.
    """
    _check_select_inputs(cost_cls, cost_reg, candidate, level_of_point, num_levels, topk, num_levels_kept, score,
                         criterion)
    cost_cls, cost_reg = cost_cls.detach(), cost_reg.detach()
    num_gt, num_points = cost_cls.shape
    positive = torch.zeros(num_gt, num_points + 1, dtype=torch.bool, device=cost_cls.device)
    if num_gt == 0 or num_points == 0:
        return positive[:, :num_points]
    cost = _criterion_cost(cost_cls, cost_reg, criterion)
    values, index, level_valid = _level_topk(cost, candidate, level_of_point, num_levels, topk)
    kept, kept_ok = _keep_levels(values, level_valid, num_levels_kept)
    slots = kept.unsqueeze(2).expand(-1, -1, index.shape[2])
    index = index.gather(1, slots).flatten(1)
    valid = (level_valid.gather(1, slots) & kept_ok.unsqueeze(2)).flatten(1)
    cls, reg = cost_cls.gather(1, index), cost_reg.gather(1, index)
    if score == "paper":
        s = paper_score(cls, reg, valid)
    else:
        single_level = level_valid.any(dim=2).sum(dim=1) == 1
        s = code_score(cls, reg, valid, single_level)
    scale = gmm_scale if gmm_scale is not None else (1.0 if score == "paper" else CODE_GMM_SCALE)
    selected = gmm2_positives(s * scale, valid, iters=GMM_ITERS, tol=GMM_TOL)
    index = torch.where(valid, index, torch.full_like(index, num_points))
    positive.scatter_(1, index, selected)
    return positive[:, :num_points]


def _check_conflict_inputs(positive: Tensor, gt_area: Tensor, image_of_gt: Tensor) -> None:
    """Raise :class:`ReplicateError` for arguments :func:`resolve_conflicts` cannot use."""
    if positive.dim() != 2 or positive.dtype != torch.bool:
        raise ReplicateError(f"resolve_conflicts: positive must be an (M, P) bool tensor, "
                             f"got {tuple(positive.shape)} {positive.dtype}")
    for name, tensor in (("gt_area", gt_area), ("image_of_gt", image_of_gt)):
        if tensor.shape != (positive.shape[0],):
            raise ReplicateError(f"resolve_conflicts: {name} must be ({positive.shape[0]},), got {tuple(tensor.shape)}")


def resolve_conflicts(positive: Tensor, gt_area: Tensor, image_of_gt: Tensor) -> Tensor:
    """Drop every GT whose selection collides with an earlier GT of its image (released-code rule).

    Within an image GTs are processed by ascending area (ties by index). A GT is accepted when none of
    its selected points is positive for an earlier *accepted* GT; otherwise it gets no positives.

    This greedy rule is computed without a loop over GTs: with ``blocks[i, j]`` = "i precedes j in the
    same image and their selections overlap", iterate ``keep_j = not any_i(blocks[i, j] and keep_i)``
    from ``keep = all True`` until it stops changing. After t rounds the first t GTs of every image
    hold their final decision, so it ends after at most (GTs per image + 1) rounds, each vectorised
    over all GTs; in practice two or three.

    Args:
        positive: (M, P) bool selections from :func:`aps_select`.
        gt_area: (M,) box areas.
        image_of_gt: (M,) image index of each GT.

    Returns:
        (M, P) bool, ``positive`` with the rows of rejected GTs cleared.
    """
    _check_conflict_inputs(positive, gt_area, image_of_gt)
    num_gt = positive.shape[0]
    order = torch.arange(num_gt, device=positive.device)
    area_i, area_j = gt_area.unsqueeze(1), gt_area.unsqueeze(0)
    precedes = (area_i < area_j) | ((area_i == area_j) & (order.unsqueeze(1) < order.unsqueeze(0)))
    same_image = image_of_gt.unsqueeze(1) == image_of_gt.unsqueeze(0)
    selection = positive.float()
    overlap = (selection @ selection.T) > 0
    blocks = precedes & same_image & overlap
    keep = torch.ones(num_gt, dtype=torch.bool, device=positive.device)
    for _ in range(num_gt + 1):
        new_keep = ~(blocks & keep.unsqueeze(1)).any(dim=0)
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return positive & keep.unsqueeze(1)


# ------------------------------------------------------------------------------ batch assignment

SCALE_RULES = ("loss", "range")
SPATIAL_RULES = ("gmm", "center")
CONFLICT_RULES = ("min_area", "drop_gt")


@dataclass(frozen=True)
class APSConfig:
    """How a MOD head assigns labels. The defaults are the paper's APS (Sec. 3.2).

    * ``scale``: ``"loss"`` keeps the ``num_levels_kept`` levels of smallest mean top-K cost (Eq. 5);
      ``"range"`` keeps every level the base detector's own scale rule allows (FCOS's regression
      ranges): Table 5's "spatial-location only" row.
    * ``spatial``: ``"gmm"`` picks points by S (Eqs. 6-8) and the GMM; ``"center"`` takes every point
      of the kept levels inside the GT's centre region (FCOS* centre sampling, radius 1.5): Table 5's
      "scale-level only" row and Table 1 (there with ``num_levels_kept=1``).
    * ``criterion``: the cost that ranks points and levels in Eqs. 4-5 (Table 1: ``cls``, ``reg`` or
      ``comb``).
    * ``conflict``: a point selected by several GTs of an image. The paper is silent; ``"min_area"``
      gives it to the smallest GT (FCOS's rule), ``"drop_gt"`` is the released code's rule
      (:func:`resolve_conflicts`).
    """

    topk: int = 9
    num_levels_kept: int = 2
    score: str = "paper"
    gmm_scale: float | None = None
    criterion: str = "comb"
    scale: str = "loss"
    spatial: str = "gmm"
    conflict: str = "min_area"

    def check(self) -> None:
        for name, value, allowed in (("score", self.score, SCORES), ("criterion", self.criterion, CRITERIA),
                                     ("scale", self.scale, SCALE_RULES), ("spatial", self.spatial, SPATIAL_RULES),
                                     ("conflict", self.conflict, CONFLICT_RULES)):
            if value not in allowed:
                raise ReplicateError(f"APS {name} must be one of {allowed}, got {value!r}")
        if self.topk < 1 or self.num_levels_kept < 1:
            raise ReplicateError(f"APS topk and num_levels_kept must be >= 1, got {self.topk}, {self.num_levels_kept}")


def aps_assign(cost_cls: Tensor, cost_reg: Tensor, candidate: Tensor, level_of_point: Tensor, num_levels: int,
               gt_boxes: Tensor, gt_valid: Tensor, cfg: APSConfig, *, center: Tensor | None = None,
               in_range: Tensor | None = None) -> Tensor:
    """APS over a padded batch: the matched GT of every point, (B, P) long, ``-1`` for negatives.

    Args:
        cost_cls, cost_reg: (B, G, P) per-(GT, point) losses (``inf`` or anything where not a
            candidate); used detached.
        candidate: (B, G, P) bool, point inside the GT (Sec. 3.2.1's ``P_l`` over all levels).
        level_of_point: (P,) level index of each point.
        gt_boxes: (B, G, 4) xyxy; gt_valid: (B, G) bool (padding is never assigned).
        cfg: the variant (see :class:`APSConfig`).
        center: (B, G, P) bool, inside the GT's centre region (needed by ``spatial="center"``).
        in_range: (B, G, P) bool, allowed by the base detector's scale ranges (needed by ``scale="range"``).
    """
    cfg.check()
    batch, num_gt, num_points = cost_cls.shape
    candidate = candidate & gt_valid.unsqueeze(2)
    if cfg.scale == "range":
        if in_range is None:
            raise ReplicateError("aps_assign: scale='range' needs the in_range mask")
        candidate = candidate & in_range
    kept = num_levels if cfg.scale == "range" else cfg.num_levels_kept
    img, gt = gt_valid.nonzero(as_tuple=True)
    cls, reg, cand = cost_cls[img, gt].detach(), cost_reg[img, gt].detach(), candidate[img, gt]
    if cfg.spatial == "gmm":
        rows = aps_select(cls, reg, cand, level_of_point, num_levels, cfg.topk, kept, cfg.score, cfg.gmm_scale,
                          cfg.criterion)
    else:
        if center is None:
            raise ReplicateError("aps_assign: spatial='center' needs the center mask")
        levels = aps_levels(cls, reg, cand, level_of_point, num_levels, cfg.topk, kept, cfg.criterion)
        rows = center[img, gt] & cand & levels[:, level_of_point]
    area = (gt_boxes[..., 2] - gt_boxes[..., 0]) * (gt_boxes[..., 3] - gt_boxes[..., 1])
    if cfg.conflict == "drop_gt":
        rows = resolve_conflicts(rows, area[img, gt], img)
    positive = torch.zeros(batch, num_gt, num_points, dtype=torch.bool, device=cost_cls.device)
    positive[img, gt] = rows
    owner_area = torch.where(positive, area.unsqueeze(2), torch.full_like(cost_cls, math.inf, dtype=area.dtype))
    best = owner_area.argmin(dim=1)  # smallest area, first index on ties
    return torch.where(positive.any(dim=1), best, torch.full_like(best, -1))
