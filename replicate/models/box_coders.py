"""Box coders: map between boxes and the regression targets a detector head predicts.

Three parameterisations are provided, all operating on ``xyxy`` tensors with any number
of leading (broadcastable) dimensions:

* :class:`DeltaXYWHCoder` -- the R-CNN centre/size deltas (Girshick et al. 2014,
  Appendix C, Eqs. 1-4; Ren et al. 2015, Eq. 2), used by RetinaNet and Faster R-CNN.
* :class:`DistanceCoder` -- the per-point "ltrb" distances of FCOS (Tian et al. 2019,
  Eq. 1), also used by ATSS and GFL.
* :class:`DistributionCoder` -- GFL's "general distribution" of each distance over
  integer bins (Li et al. 2020, Sec. 3.3, integral ``y_hat = sum_i P(y_i) y_i``) and
  the two-bin targets of Distribution Focal Loss (Eq. 6).

Everything is vectorised: no Python loops over boxes.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["DeltaXYWHCoder", "DistanceCoder", "DistributionCoder", "clip_boxes"]


def clip_boxes(boxes: Tensor, max_shape: Sequence[float], offset: float = 0.0) -> Tensor:
    """Clip ``xyxy`` boxes (..., 4) to an image of ``max_shape = (h, w)``.

    x coordinates are clamped to ``[0, w - offset]`` and y to ``[0, h - offset]``
    (``offset=1`` is the legacy "+1" pixel convention of Fast/Faster R-CNN).
    """
    h, w = float(max_shape[0]), float(max_shape[1])
    x1, y1, x2, y2 = boxes.unbind(-1)
    x1 = x1.clamp(0.0, w - offset)
    x2 = x2.clamp(0.0, w - offset)
    y1 = y1.clamp(0.0, h - offset)
    y2 = y2.clamp(0.0, h - offset)
    return torch.stack((x1, y1, x2, y2), dim=-1)


class DeltaXYWHCoder:
    """R-CNN box-delta coder (Girshick et al. 2014, Appendix C; Ren et al. 2015, Eq. 2).

    For a proposal/anchor ``P`` (centre ``px, py``, size ``pw, ph``) and ground truth ``G``:

    ``dx = (gx - px) / pw``, ``dy = (gy - py) / ph``,
    ``dw = log(gw / pw)``,   ``dh = log(gh / ph)``,

    and then each delta is normalised ``(d - mean) / std``.

    Conventions: mmdetection's RetinaNet uses ``means=(0,0,0,0), stds=(1,1,1,1)``; the
    Faster R-CNN RoI (second-stage) head uses ``stds=(0.1, 0.1, 0.2, 0.2)`` (the
    "BBOX_REG_WEIGHTS (10, 10, 5, 5)" of Detectron, expressed as 1/std).

    Args:
        means, stds: per-coordinate normalisation of ``(dx, dy, dw, dh)``.
        clamp_log: decode clamps ``dw, dh`` to ``[-clamp_log, clamp_log]`` so that
            ``exp`` cannot blow up (Detectron's ``log(1000/16)``).
        add_one: legacy pixel convention, ``w = x2 - x1 + 1``.
    """

    def __init__(
        self,
        means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        clamp_log: float = math.log(1000.0 / 16),
        add_one: bool = False,
    ) -> None:
        if len(means) != 4 or len(stds) != 4:
            raise ValueError("means and stds must have four entries (dx, dy, dw, dh)")
        if any(s <= 0 for s in stds):
            raise ValueError(f"stds must be positive, got {tuple(stds)}")
        self.means = tuple(float(m) for m in means)
        self.stds = tuple(float(s) for s in stds)
        self.clamp_log = float(clamp_log)
        self.add_one = bool(add_one)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(means={self.means}, stds={self.stds}, "
            f"clamp_log={self.clamp_log:.4f}, add_one={self.add_one})"
        )

    def _centre_size(self, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        off = 1.0 if self.add_one else 0.0
        x1, y1, x2, y2 = boxes.unbind(-1)
        w = x2 - x1 + off
        h = y2 - y1 + off
        return x1 + 0.5 * (w - off), y1 + 0.5 * (h - off), w, h

    def encode(self, anchors: Tensor, gt: Tensor) -> Tensor:
        """Deltas ``(dx, dy, dw, dh)`` of ``gt`` w.r.t. ``anchors`` (R-CNN, Appendix C Eqs. 6-9).

        ``anchors`` and ``gt`` are ``xyxy`` tensors (..., 4) that broadcast against
        each other; the result has the broadcast shape.
        """
        anchors, gt = torch.broadcast_tensors(anchors, gt)
        px, py, pw, ph = self._centre_size(anchors)
        gx, gy, gw, gh = self._centre_size(gt)
        deltas = torch.stack(
            ((gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)), dim=-1
        )
        means = deltas.new_tensor(self.means)
        stds = deltas.new_tensor(self.stds)
        return (deltas - means) / stds

    def decode(self, anchors: Tensor, deltas: Tensor, max_shape: Sequence[float] | None = None) -> Tensor:
        """Apply ``deltas`` to ``anchors`` (R-CNN, Appendix C Eqs. 1-4): inverse of :meth:`encode`.

        ``gx = px + pw*dx``, ``gw = pw*exp(dw)`` (after undoing mean/std and clamping
        ``dw, dh`` at ``clamp_log``); optionally clip to ``max_shape = (h, w)``.
        """
        anchors, deltas = torch.broadcast_tensors(anchors, deltas)
        means = deltas.new_tensor(self.means)
        stds = deltas.new_tensor(self.stds)
        d = deltas * stds + means
        dx, dy, dw, dh = d.unbind(-1)
        dw = dw.clamp(-self.clamp_log, self.clamp_log)
        dh = dh.clamp(-self.clamp_log, self.clamp_log)
        px, py, pw, ph = self._centre_size(anchors)
        gx = px + pw * dx
        gy = py + ph * dy
        gw = pw * torch.exp(dw)
        gh = ph * torch.exp(dh)
        off = 1.0 if self.add_one else 0.0
        half_w = 0.5 * (gw - off)
        half_h = 0.5 * (gh - off)
        boxes = torch.stack((gx - half_w, gy - half_h, gx + half_w, gy + half_h), dim=-1)
        if max_shape is not None:
            boxes = clip_boxes(boxes, max_shape, offset=off)
        return boxes


class DistanceCoder:
    """Point-to-boundary "ltrb" coder of FCOS (Tian et al. 2019, Eq. 1); also ATSS and GFL.

    For a location ``(x, y)`` inside a box ``(x1, y1, x2, y2)``:
    ``l = x - x1, t = y - y1, r = x2 - x, b = y2 - y``, all divided by ``normalizer``
    (e.g. the FPN stride, as in FCOS's ``norm_on_bbox`` variant and GFL).
    """

    def __init__(self, normalizer: float = 1.0) -> None:
        if normalizer <= 0:
            raise ValueError(f"normalizer must be positive, got {normalizer}")
        self.normalizer = float(normalizer)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(normalizer={self.normalizer})"

    def encode(self, points: Tensor, gt: Tensor) -> Tensor:
        """Distances ``(l, t, r, b) / normalizer`` (FCOS Eq. 1) from ``points`` (..., 2) to ``gt`` (..., 4)."""
        x, y = points.unbind(-1)
        x1, y1, x2, y2 = gt.unbind(-1)
        dist = torch.stack(torch.broadcast_tensors(x - x1, y - y1, x2 - x, y2 - y), dim=-1)
        return dist / self.normalizer

    def decode(self, points: Tensor, dist: Tensor, max_shape: Sequence[float] | None = None) -> Tensor:
        """Boxes ``(x - l, y - t, x + r, y + b)`` (inverse of FCOS Eq. 1), ``dist`` scaled by ``normalizer``.

        ``points`` (..., 2) and ``dist`` (..., 4) broadcast; optionally clip to ``max_shape = (h, w)``.
        """
        x, y = points.unbind(-1)
        l, t, r, b = (dist * self.normalizer).unbind(-1)
        boxes = torch.stack(torch.broadcast_tensors(x - l, y - t, x + r, y + b), dim=-1)
        if max_shape is not None:
            boxes = clip_boxes(boxes, max_shape)
        return boxes


class DistributionCoder:
    """GFL general distribution over ``reg_max + 1`` integer bins (Li et al. 2020, Sec. 3.3).

    Each of the four ltrb distances is represented by a discrete distribution over
    ``y_0 = 0, ..., y_n = reg_max``; the prediction is its expectation
    ``y_hat = sum_i P(y_i) * y_i`` with ``P = softmax(logits)``.
    """

    def __init__(self, reg_max: int = 16) -> None:
        if int(reg_max) < 1:
            raise ValueError(f"reg_max must be >= 1, got {reg_max}")
        self.reg_max = int(reg_max)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reg_max={self.reg_max})"

    @property
    def num_bins(self) -> int:
        return self.reg_max + 1

    def integral(self, logits: Tensor) -> Tensor:
        """Expected distances ``sum_i softmax(logits)_i * i`` (GFL Sec. 3.3): (..., 4*(reg_max+1)) -> (..., 4)."""
        n = self.num_bins
        if logits.shape[-1] != 4 * n:
            raise ValueError(f"expected last dim 4*(reg_max+1)={4 * n}, got {logits.shape[-1]}")
        prob = logits.reshape(*logits.shape[:-1], 4, n).softmax(dim=-1)
        bins = torch.arange(n, dtype=prob.dtype, device=prob.device)
        return (prob * bins).sum(dim=-1)

    def target_bins(self, dist: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """DFL targets (GFL Eq. 6): the two bins ``y_i <= y < y_{i+1}`` around each distance.

        ``dist`` (..., 4) is clamped to ``[0, reg_max - 0.01]``; returns the left bin
        index ``y_i`` (long), and weights ``w_left = y_{i+1} - y`` and ``w_right = y - y_i``
        (they sum to one, and ``w_left*y_i + w_right*y_{i+1} = y``).
        """
        d = dist.clamp(0.0, self.reg_max - 0.01)
        left = d.floor()
        w_left = left + 1.0 - d
        w_right = d - left
        return left.long(), w_left, w_right
