"""Pooling a region of interest from a feature pyramid: RoIAlign and its deformable form.

* :func:`roi_levels` maps each RoI to a pyramid level by its size (Lin et al. 2017, FPN, Eq. 1:
  ``k = floor(k0 + log2(sqrt(wh) / 224))`` with ``k0 = 4``, clamped to P2-P5), as torchvision's
  ``LevelMapper`` (mmdetection's ``finest_scale = 56`` rule is the same map).
* :func:`multilevel_roi_align` pools every RoI from its level with torchvision's compiled ``roi_align``
  (``aligned=False``, the Faster R-CNN convention), so it equals torchvision's ``MultiScaleRoIAlign``.
* :func:`deform_roi_pool` is RoIAlign whose bins move: bin ``(i, j)`` of a ``k x k`` grid is shifted by
  ``offset[i, j] * (w, h)`` (DCN's deformable RoI pooling, Dai et al. 2017, Eq. 6, as TSD's Eq. for
  ``F_c`` uses it). It samples with the same bilinear rule as ``roi_align`` (zero outside ``[-1, size]``,
  the border value inside it), and it is differentiable in the offsets: ``grid_sample`` carries the
  gradient to the sampling positions, which torchvision's op does not. With zero offsets it equals
  ``roi_align`` (a test checks it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align


def roi_levels(rois: Tensor, num_levels: int = 4, canonical_scale: float = 224.0, canonical_level: int = 4,
               first_level: int = 2) -> Tensor:
    """(R,) level index (0 = the finest pooled level, P2) of each ``(R, 5)`` RoI ``(b, x1, y1, x2, y2)``."""
    wh = (rois[:, 3:5] - rois[:, 1:3]).clamp(min=0)
    scale = (wh[:, 0] * wh[:, 1]).sqrt()
    level = torch.floor(canonical_level + torch.log2(scale / canonical_scale) + 1e-6)
    return (level.clamp(first_level, first_level + num_levels - 1) - first_level).long()


def multilevel_roi_align(feats: list[Tensor], rois: Tensor, strides: tuple[int, ...], output_size: int = 7,
                         sampling_ratio: int = 2) -> Tensor:
    """(R, C, k, k) RoIAlign features of ``rois`` (R, 5), each from the level :func:`roi_levels` gives it."""
    level = roi_levels(rois, len(feats))
    out = rois.new_zeros(len(rois), feats[0].shape[1], output_size, output_size, dtype=feats[0].dtype)
    for lvl, (feat, stride) in enumerate(zip(feats, strides)):
        idx = torch.nonzero(level == lvl).squeeze(1)
        if len(idx):
            out[idx] = roi_align(feat, rois[idx].to(feat.dtype), output_size, 1.0 / stride, sampling_ratio,
                                 aligned=False)
    return out


def deform_roi_pool(feats: list[Tensor], rois: Tensor, offsets: Tensor, strides: tuple[int, ...],
                    output_size: int = 7, samples: int = 2) -> Tensor:
    """(R, C, k, k) features of ``rois`` (R, 5) whose ``k x k`` bins are shifted by ``offsets`` (R, k, k, 2)
    in units of the RoI's width and height (``(dx, dy) * (w, h)``); ``samples x samples`` bilinear samples
    are averaged per bin. Each RoI is read from its :func:`roi_levels` level."""
    R, k, s = len(rois), output_size, samples
    level = roi_levels(rois, len(feats))
    out = feats[0].new_zeros(R, feats[0].shape[1], k, k)
    grid = torch.arange(k, dtype=rois.dtype, device=rois.device)
    sub = (torch.arange(s, dtype=rois.dtype, device=rois.device) + 0.5) / s
    frac = (grid[:, None] + sub[None, :]).reshape(-1) / k  # (k*s,) sample positions in RoI units
    for lvl, (feat, stride) in enumerate(zip(feats, strides)):
        idx = torch.nonzero(level == lvl).squeeze(1)
        if not len(idx):
            continue
        box = rois[idx, 1:] / stride
        x1, y1 = box[:, 0], box[:, 1]
        w = (box[:, 2] - x1).clamp(min=1.0)  # roi_align's minimum RoI size of one feature cell
        h = (box[:, 3] - y1).clamp(min=1.0)
        shift = offsets[idx].repeat_interleave(s, 1).repeat_interleave(s, 2)  # (n, k*s, k*s, 2), per sample
        x = x1[:, None, None] + frac[None, None, :] * w[:, None, None] + shift[..., 0] * w[:, None, None]
        y = y1[:, None, None] + frac[None, :, None] * h[:, None, None] + shift[..., 1] * h[:, None, None]
        sampled = _bilinear(feat, rois[idx, 0].long(), x, y)  # (n, C, k*s, k*s)
        out[idx] = F.avg_pool2d(sampled, s) if s > 1 else sampled
    return out


def _bilinear(feat: Tensor, image: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """(n, C, P, Q) values of ``feat`` (B, C, H, W) at pixel coordinates ``x``, ``y`` (n, P, Q) of image
    ``image[n]``, with ``roi_align``'s rule: 0 beyond one pixel outside the map, the clamped border value
    within it. The n point sets are batched per image by padding to the largest count."""
    B, C, H, W = feat.shape
    n, P, Q = x.shape
    inside = ((x >= -1) & (x <= W) & (y >= -1) & (y <= H)).to(feat.dtype)
    gx = x.clamp(0, W - 1) * (2.0 / max(W - 1, 1)) - 1.0
    gy = y.clamp(0, H - 1) * (2.0 / max(H - 1, 1)) - 1.0
    counts = torch.bincount(image, minlength=B)
    most = int(counts.max())
    order = torch.argsort(image, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=image.device) - (torch.cumsum(counts, 0) - counts)[image[order]]
    grid = feat.new_zeros(B, most, P, Q, 2)
    grid[image, rank] = torch.stack([gx, gy], -1).to(feat.dtype)
    values = F.grid_sample(feat, grid.reshape(B, most * P, Q, 2), mode="bilinear", padding_mode="border",
                           align_corners=True)  # (B, C, most * P, Q)
    values = values.reshape(B, C, most, P, Q)[image, :, rank]  # (n, C, P, Q)
    return values * inside[:, None]
