"""Classification and box-regression losses used by the replicated detectors.

Every loss returns the elementwise loss by default (``reduction="none"``); ``"sum"``
and ``"mean"`` reduce it.  An optional ``weight`` is broadcast-multiplied onto the
elementwise loss before reduction, and ``avg_factor`` (if given) replaces the element
count as the divisor of ``"mean"`` (e.g. "normalised by the number of positives",
Lin et al. 2017, Sec. 4).

All functions are vectorised over arbitrary leading dimensions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "reduce_loss",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_labels",
    "quality_focal_loss",
    "quality_focal_loss_prob",
    "distribution_focal_loss",
    "aligned_box_iou",
    "iou_loss",
    "giou_loss",
    "l1_loss",
    "smooth_l1_loss",
    "binary_cross_entropy_with_logits",
]

_REDUCTIONS = ("none", "sum", "mean")


def reduce_loss(
    loss: Tensor,
    weight: Tensor | None = None,
    reduction: str = "none",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Apply an optional broadcast ``weight`` then reduce (``"none"`` | ``"sum"`` | ``"mean"``).

    ``"mean"`` divides the sum by ``avg_factor`` when given, else by ``loss.numel()``
    (an empty loss gives ``0`` with a gradient path, not ``nan``).
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if weight is not None:
        loss = loss * weight
    if reduction == "none":
        if avg_factor is not None:
            raise ValueError("avg_factor requires reduction='mean'")
        return loss
    if reduction == "sum":
        if avg_factor is not None:
            raise ValueError("avg_factor requires reduction='mean'")
        return loss.sum()
    if avg_factor is not None:
        return loss.sum() / avg_factor
    if loss.numel() == 0:
        return loss.sum() * 0.0
    return loss.mean()


# --------------------------------------------------------------------------- classification


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Focal loss, Lin et al. 2017 (RetinaNet), Eq. 5: ``FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t)``.

    ``p = sigmoid(logits)``, ``p_t = p`` for ``targets == 1`` else ``1 - p`` (Eq. 2);
    ``alpha_t = alpha`` for positives else ``1 - alpha`` (Eq. 3); ``alpha < 0`` disables
    the alpha balancing.  ``targets`` is a float (one-hot) tensor of ``logits``' shape.
    Numerically identical to ``torchvision.ops.sigmoid_focal_loss``.
    """
    targets = targets.to(logits.dtype)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1.0 - p) * (1.0 - targets)
    loss = ce * (1.0 - p_t) ** gamma
    if alpha >= 0:
        alpha_t = alpha * targets + (1.0 - alpha) * (1.0 - targets)
        loss = alpha_t * loss
    return reduce_loss(loss, weight, reduction, avg_factor)


def sigmoid_focal_loss_labels(
    logits: Tensor,
    labels: Tensor,
    valid: Tensor | None = None,
    alpha: float = 0.25,
    gamma: float = 2.0,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """:func:`sigmoid_focal_loss` against the one-hot targets of ``labels``, summed over the ``valid`` rows
    (divided by ``avg_factor`` when given): the detectors' classification loss, without building the
    one-hot targets or masked copies of the logits.

    ``logits`` (..., C); ``labels`` (...) long, the class in ``[0, C)`` or negative for background;
    ``valid`` (...) bool, rows that count (``None``: all). With a one-hot target every entry of a row
    contributes the negative term ``(1 - alpha) p^gamma softplus(x)`` (= ``-(1-alpha) p^gamma log(1-p)``)
    except the labelled one, whose positive term ``alpha (1-p)^gamma softplus(-x)`` replaces it. So the
    sum is the all-negative loss of every entry plus, at each positive's labelled class, positive minus
    negative: a third of the full-size elementwise passes of the generic form. Half-precision logits
    are computed in float32.
    """
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    a_pos, a_neg = (alpha, 1.0 - alpha) if alpha >= 0 else (1.0, 1.0)
    per_row = (x.sigmoid().pow(gamma) * F.softplus(x)).sum(-1)
    pos = labels >= 0
    if valid is not None:
        per_row = torch.where(valid, per_row, per_row.new_zeros(()))
        pos = pos & valid
    xl = x.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # the labelled class's logit
    pl = xl.sigmoid()
    swap = a_pos * (1.0 - pl).pow(gamma) * F.softplus(-xl) - a_neg * pl.pow(gamma) * F.softplus(xl)
    total = a_neg * per_row.sum() + torch.where(pos, swap, swap.new_zeros(())).sum()
    return total / avg_factor if avg_factor is not None else total


def focal_pair_cost(cls: Tensor, img: Tensor, prior: Tensor, label: Tensor, alpha: float = 0.25,
                    gamma: float = 2.0) -> Tensor:
    """:func:`sigmoid_focal_loss` summed over the classes of prior ``prior`` of image ``img`` taken as a
    positive of class ``label`` (its one-hot target), for K (image, prior, label) triples at once: (K,).
    ``cls`` is (B, N, C) logits. An assignment cost (MOD's APS, Eq. 4), computed without building the
    one-hot targets: the all-negative loss of the row, minus the labelled class's negative term, plus its
    positive term (as :func:`sigmoid_focal_loss_labels`, per triple instead of summed)."""
    x = cls.float()
    a_pos, a_neg = (alpha, 1.0 - alpha) if alpha >= 0 else (1.0, 1.0)
    neg_rows = (x.sigmoid().pow(gamma) * F.softplus(x)).sum(-1)  # (B, N): sum_c -log(1 - p_c) p_c^gamma
    xl = x[img, prior, label]
    pl = xl.sigmoid()
    swap = a_pos * (1.0 - pl).pow(gamma) * F.softplus(-xl) - a_neg * pl.pow(gamma) * F.softplus(xl)
    return a_neg * neg_rows[img, prior] + swap


def quality_focal_loss(
    logits: Tensor,
    labels: Tensor,
    scores: Tensor,
    beta: float = 2.0,
    reduction: str = "none",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Quality Focal Loss, GFL (Li et al. 2020), Eq. 5: ``-|y - s|^beta ((1-y) log(1-s) + y log s)``.

    ``logits`` (..., C); ``labels`` (...) long in ``[0, C]`` with ``C`` = background;
    ``scores`` (...) the IoU quality target ``y in [0, 1]`` of the labelled class.  The
    soft target is ``y`` at the labelled class and ``0`` elsewhere (so negatives reduce
    to ``s^beta * BCE(s, 0)``).  The per-sample loss is summed over classes -> (...).
    ``weight`` (...) weights samples.
    """
    soft = _quality_soft_target(logits, labels, scores)
    sigma = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, soft, reduction="none")
    loss = (bce * (soft - sigma).abs().pow(beta)).sum(dim=-1)
    return reduce_loss(loss, weight, reduction, avg_factor)


def quality_focal_loss_prob(
    prob: Tensor,
    labels: Tensor,
    scores: Tensor,
    beta: float = 2.0,
    reduction: str = "none",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
    eps: float = 1e-12,
) -> Tensor:
    """:func:`quality_focal_loss` on probabilities ``sigma`` (..., C) instead of logits (GFLv2, whose
    joint score ``cls x DGQP`` is a product of probabilities). The logs are taken of ``sigma``
    clamped to ``[eps, 1 - eps]``, computed in float32."""
    p = prob.float()
    soft = _quality_soft_target(p, labels, scores)
    bce = -(soft * p.clamp(min=eps).log() + (1.0 - soft) * (1.0 - p).clamp(min=eps).log())
    loss = (bce * (soft - p).abs().pow(beta)).sum(dim=-1)
    return reduce_loss(loss, weight, reduction, avg_factor)


def _quality_soft_target(pred: Tensor, labels: Tensor, scores: Tensor) -> Tensor:
    """QFL's soft target (..., C): ``scores`` at the labelled class, 0 elsewhere (label C = background)."""
    num_classes = pred.shape[-1]
    if labels.shape != pred.shape[:-1] or scores.shape != pred.shape[:-1]:
        raise ValueError(
            f"labels {tuple(labels.shape)} and scores {tuple(scores.shape)} must match "
            f"the predictions' leading shape {tuple(pred.shape[:-1])}"
        )
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() > num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}] ({num_classes} = background)")
    onehot = F.one_hot(labels, num_classes + 1)[..., :num_classes].to(pred.dtype)
    return onehot * scores.to(pred.dtype).unsqueeze(-1)


def distribution_focal_loss(
    logits: Tensor,
    target: Tensor,
    reduction: str = "none",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Distribution Focal Loss, GFL (Li et al. 2020), Eq. 6.

    ``DFL(S_i, S_{i+1}) = -((y_{i+1} - y) log S_i + (y - y_i) log S_{i+1})`` where
    ``S = softmax(logits)`` over ``n = reg_max + 1`` bins and ``y_i <= y < y_{i+1}``
    are the integer bins around the continuous ``target``.  ``logits`` (..., n),
    ``target`` (...) in ``[0, n - 1]`` -> loss (...).  A target exactly on the last bin
    puts all its weight on that bin.
    """
    n = logits.shape[-1]
    if target.shape != logits.shape[:-1]:
        raise ValueError(f"target {tuple(target.shape)} must match logits' leading shape {tuple(logits.shape[:-1])}")
    target = target.to(logits.dtype)
    left = target.floor().clamp(0, n - 1)
    w_left = left + 1.0 - target
    w_right = target - left
    left_idx = left.long()
    right_idx = (left_idx + 1).clamp(max=n - 1)
    log_p = F.log_softmax(logits, dim=-1)
    lp_left = log_p.gather(-1, left_idx.unsqueeze(-1)).squeeze(-1)
    lp_right = log_p.gather(-1, right_idx.unsqueeze(-1)).squeeze(-1)
    loss = -(w_left * lp_left + w_right * lp_right)
    return reduce_loss(loss, weight, reduction, avg_factor)


def binary_cross_entropy_with_logits(
    logits: Tensor,
    targets: Tensor,
    weight: Tensor | None = None,
    reduction: str = "none",
    pos_weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Binary cross-entropy on logits, ``-(y log sigmoid(x) + (1 - y) log(1 - sigmoid(x)))``.

    Used for IoU/centerness/objectness branches (e.g. FCOS centerness, Tian et al. 2019,
    Sec. 3.3; IoU-aware RetinaNet, Wu et al. 2020).  Thin wrapper over
    ``torch.nn.functional.binary_cross_entropy_with_logits`` with broadcast ``weight``.
    """
    loss = F.binary_cross_entropy_with_logits(
        logits, targets.to(logits.dtype), reduction="none", pos_weight=pos_weight
    )
    return reduce_loss(loss, weight, reduction, avg_factor)


# --------------------------------------------------------------------------- box regression


def _inter_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    iw = (torch.min(ax2, bx2) - torch.max(ax1, bx1)).clamp(min=0)
    ih = (torch.min(ay2, by2) - torch.max(ay1, by1)).clamp(min=0)
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter, union


def aligned_box_iou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """IoU of paired ``xyxy`` boxes, ``|A n B| / |A u B|`` (Everingham et al. 2010, VOC Eq. 1).

    Elementwise (not pairwise like ``torchvision.ops.box_iou``): ``a`` and ``b`` (..., 4)
    broadcast -> (...).  The union is clamped at ``eps`` so degenerate pairs give 0.
    """
    a, b = torch.broadcast_tensors(a, b)
    inter, union = _inter_union(a, b)
    return inter / union.clamp(min=eps)


def iou_loss(
    pred: Tensor,
    target: Tensor,
    mode: str = "linear",
    eps: float = 1e-6,
    reduction: str = "none",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """IoU loss on paired ``xyxy`` boxes (..., 4) -> (...).

    ``mode="log"``: ``-ln(IoU)`` (UnitBox, Yu et al. 2016, Algorithm 1);
    ``mode="linear"``: ``1 - IoU`` (as used by FCOS/IoU-Net implementations);
    ``mode="square"``: ``1 - IoU^2``.  IoU is clamped at ``eps`` from below.
    """
    iou = aligned_box_iou(pred, target).clamp(min=eps)
    if mode == "linear":
        loss = 1.0 - iou
    elif mode == "square":
        loss = 1.0 - iou * iou
    elif mode == "log":
        loss = -torch.log(iou)
    else:
        raise ValueError(f"mode must be 'linear', 'square' or 'log', got {mode!r}")
    return reduce_loss(loss, weight, reduction, avg_factor)


def giou_loss(
    pred: Tensor,
    target: Tensor,
    eps: float = 1e-7,
    reduction: str = "none",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Generalized IoU loss, Rezatofighi et al. 2019, Algorithm 1/2: ``1 - GIoU``.

    ``GIoU = IoU - |C \\ (A u B)| / |C|`` with ``C`` the smallest enclosing box.
    Paired ``xyxy`` boxes (..., 4) -> (...).  The ``eps`` is added to the union and the
    enclosing area as in ``torchvision.ops.generalized_box_iou_loss`` (equal elementwise).
    """
    pred, target = torch.broadcast_tensors(pred, target)
    inter, union = _inter_union(pred, target)
    iou = inter / (union + eps)
    px1, py1, px2, py2 = pred.unbind(-1)
    tx1, ty1, tx2, ty2 = target.unbind(-1)
    enclose = (torch.max(px2, tx2) - torch.min(px1, tx1)) * (torch.max(py2, ty2) - torch.min(py1, ty1))
    giou = iou - (enclose - union) / (enclose + eps)
    return reduce_loss(1.0 - giou, weight, reduction, avg_factor)


def l1_loss(
    pred: Tensor,
    target: Tensor,
    reduction: str = "none",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """L1 loss ``|pred - target|`` elementwise (used for box deltas, e.g. Libra R-CNN / RetinaNet variants)."""
    return reduce_loss((pred - target).abs(), weight, reduction, avg_factor)


def smooth_l1_loss(
    pred: Tensor,
    target: Tensor,
    beta: float = 1.0,
    reduction: str = "none",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Smooth L1, Fast R-CNN (Girshick 2015), Eq. 3, with transition point ``beta``.

    ``0.5 x^2 / beta`` if ``|x| < beta`` else ``|x| - 0.5 beta`` (``beta=1`` is Eq. 3;
    ``beta=0`` is plain L1).  Equal to ``torch.nn.functional.smooth_l1_loss``.
    """
    if beta < 0:
        raise ValueError(f"beta must be non-negative, got {beta}")
    diff = (pred - target).abs()
    if beta == 0:
        loss = diff
    else:
        loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    return reduce_loss(loss, weight, reduction, avg_factor)
