"""RoIConv and the feature-alignment variants it is compared with (AlignDet: Chen, Han, Wang, Zhang,
"Revisiting Feature Alignment for One-stage Object Detection", 2019, Sec. 4.1-4.2, Table 4).

Coordinates follow the paper: a feature location ``X`` of a map of stride ``S`` covers ``[X, X + 1)`` in
feature units, so its centre lies at ``(X + 0.5) S`` in the image.

* Eq. 1: an ``h x w`` convolution at output ``(X, Y)`` samples ``X - floor(h/2) + i + 0.5``.
* Eq. 2: RoIAlign (one sample per bin) of a box ``(x1, y1, x2, y2)`` samples bin centres
  ``x1 / S + (x2 - x1) (i + 0.5) / (h S)``.
* Eq. 3: so a convolution is a RoIAlign of the implicit box ``((X - floor(h/2)) S, (X - floor(h/2) + h) S)``
  followed by a fully connected layer: :func:`conv_implicit_rois`.
* Eq. 4: RoIConv samples the bins of a given box instead: its offsets, the difference between the two sample
  grids, are :func:`roiconv_offsets`; the convolution is a deformable convolution with these offsets
  (:func:`replicate.models.dcn.deform_conv`). With a box equal to the implicit RoI the offsets are zero.

Departures of the released code (``shared/notes/official-code.md``), as options:

* ``bin_plus_one``: the code's bins are ``(x2 - x1 + 1) / k`` wide in feature units (the legacy "+1"); the
  paper's (Eq. 2, 4) are ``(x2 - x1) / k``. Default: the paper.
* ``detach_boxes``: the code passes no gradient from the aligned features back into the boxes (its offset
  op returns zero gradients); the paper says nothing. Default: the code's stop (the offsets are a fixed
  function of the boxes, as the paper's "calculated ... instead of learned").

:class:`AlignConv` holds the four variants of Table 4, all ``k x k`` convolutions with the same weights
shape, differing only in where they sample: ``conv`` (RefineDet: the regular grid), ``deform`` (offsets
learned from the features by a 1x1 convolution), ``anchor_deform`` (Guided Anchoring: offsets from the
batch-normalised anchor width and height by a 1x1 convolution) and ``roiconv`` (Eq. 4). The offset
convolutions start from N(0, 0.01) "to ensure a roughly zero offset from the beginning" (Sec. 5.4).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ReplicateError
from .dcn import deform_conv

ALIGNMENTS = ("conv", "deform", "anchor_deform", "roiconv")


def conv_implicit_rois(height: int, width: int, stride: float, kernel: int, device=None) -> Tensor:
    """Eq. 3: the implicit RoI of a ``kernel x kernel`` convolution at every output location, (H, W, 4) xyxy
    in image pixels."""
    half = kernel // 2
    ys = torch.arange(height, dtype=torch.float32, device=device)
    xs = torch.arange(width, dtype=torch.float32, device=device)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    x1, y1 = (x - half) * stride, (y - half) * stride
    return torch.stack((x1, y1, x1 + kernel * stride, y1 + kernel * stride), dim=-1)


def roiconv_offsets(boxes: Tensor, stride: float, kernel: int, bin_plus_one: bool = False) -> Tensor:
    """Eq. 4: the offsets that make a ``kernel x kernel`` convolution sample the bin centres of ``boxes``.

    Args:
        boxes: (B, H, W, 4) xyxy image boxes, one per output location of a stride-``stride`` map.
        bin_plus_one: the released code's bins, ``(x2 - x1 + 1) / k`` in feature units.

    Returns:
        (B, 2 k^2, H, W) offsets in the layout of ``torchvision.ops.deform_conv2d``: channels ``(2n, 2n + 1)``
        are ``(dy, dx)`` of kernel tap ``n`` (row-major), in feature-map units.
    """
    if boxes.dim() != 4 or boxes.shape[-1] != 4:
        raise ReplicateError(f"roiconv_offsets takes (B, H, W, 4) boxes, got shape {tuple(boxes.shape)}")
    B, H, W, _ = boxes.shape
    f = boxes.to(torch.promote_types(boxes.dtype, torch.float32)) / stride
    extra = 1.0 if bin_plus_one else 0.0
    taps = torch.arange(kernel, dtype=f.dtype, device=f.device) + 0.5  # i + 0.5
    half = kernel // 2
    xs = torch.arange(W, dtype=f.dtype, device=f.device).view(1, 1, W, 1)
    ys = torch.arange(H, dtype=f.dtype, device=f.device).view(1, H, 1, 1)
    # Eq. 4: O(i) = x1/S - X + floor(k/2) + ((x2 - x1)/(k S) - 1)(i + 0.5), here with the bin width explicit
    bin_w = (f[..., 2:3] - f[..., 0:1] + extra) / kernel
    bin_h = (f[..., 3:4] - f[..., 1:2] + extra) / kernel
    ox = f[..., 0:1] - xs + half + (bin_w - 1) * taps  # (B, H, W, k) per kernel column
    oy = f[..., 1:2] - ys + half + (bin_h - 1) * taps  # (B, H, W, k) per kernel row
    dy = oy[..., :, None].expand(B, H, W, kernel, kernel)
    dx = ox[..., None, :].expand(B, H, W, kernel, kernel)
    return torch.stack((dy, dx), dim=-1).reshape(B, H, W, 2 * kernel * kernel).permute(0, 3, 1, 2).contiguous()


def sample_points(offsets: Tensor, kernel: int, stride: float) -> Tensor:
    """Where a ``kernel x kernel`` convolution with these offsets samples: (B, H, W, k^2, 2) xy image pixels."""
    B, _, H, W = offsets.shape
    half = kernel // 2
    taps = torch.arange(kernel, dtype=offsets.dtype, device=offsets.device)
    ty, tx = torch.meshgrid(taps, taps, indexing="ij")
    ys = torch.arange(H, dtype=offsets.dtype, device=offsets.device).view(1, H, 1, 1)
    xs = torch.arange(W, dtype=offsets.dtype, device=offsets.device).view(1, 1, W, 1)
    off = offsets.permute(0, 2, 3, 1).reshape(B, H, W, kernel * kernel, 2)
    y = ys - half + ty.reshape(1, 1, 1, -1) + off[..., 0] + 0.5
    x = xs - half + tx.reshape(1, 1, 1, -1) + off[..., 1] + 0.5
    return torch.stack((x, y), dim=-1) * stride


def circumscribed_rois(offsets: Tensor, kernel: int, stride: float) -> Tensor:
    """Fig. 4: the implicit RoI of a deformable convolution, the rectangle circumscribing its sample points,
    (B, H, W, 4) xyxy image pixels."""
    points = sample_points(offsets, kernel, stride)
    return torch.cat((points.amin(dim=3), points.amax(dim=3)), dim=-1)


class AlignConv(nn.Module):
    """A ``kernel x kernel`` convolution whose sampling grid follows one of Table 4's alignment variants.

    ``forward(x, boxes, stride)`` takes the feature map (B, C, H, W) and one box per location (B, H, W, 4)
    xyxy in image pixels (read by ``anchor_deform`` and ``roiconv`` only).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, alignment: str = "roiconv",
                 bin_plus_one: bool = False, detach_boxes: bool = True, std: float = 0.01) -> None:
        super().__init__()
        if alignment not in ALIGNMENTS:
            raise ReplicateError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
        if kernel < 1 or kernel % 2 == 0:
            raise ReplicateError(f"an alignment convolution needs an odd kernel size, got {kernel}")
        self.alignment, self.kernel = alignment, kernel
        self.bin_plus_one, self.detach_boxes = bin_plus_one, detach_boxes
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.normal_(self.weight, std=std)
        taps = 2 * kernel * kernel
        if alignment == "deform":
            self.offset_conv = nn.Conv2d(in_channels, taps, 1)
        elif alignment == "anchor_deform":
            self.shape_norm = nn.BatchNorm2d(2)
            self.offset_conv = nn.Conv2d(2, taps, 1)
        if hasattr(self, "offset_conv"):
            nn.init.normal_(self.offset_conv.weight, std=0.01)
            nn.init.zeros_(self.offset_conv.bias)

    def offsets(self, x: Tensor, boxes: Tensor, stride: float) -> Tensor | None:
        """The (B, 2 k^2, H, W) sampling offsets of this variant (``None``: the regular grid)."""
        if self.alignment == "conv":
            return None
        if self.alignment == "deform":
            return self.offset_conv(x)
        if self.detach_boxes:
            boxes = boxes.detach()
        if self.alignment == "roiconv":
            return roiconv_offsets(boxes, stride, self.kernel, self.bin_plus_one)  # float32: exact fractions
        wh = (boxes[..., 2:] - boxes[..., :2]).permute(0, 3, 1, 2).float()  # (B, 2, H, W)
        return self.offset_conv(self.shape_norm(wh).to(x.dtype))

    def forward(self, x: Tensor, boxes: Tensor, stride: float) -> Tensor:
        offset = self.offsets(x, boxes, stride)
        pad = self.kernel // 2
        if offset is None:
            return F.conv2d(x, self.weight, self.bias, padding=pad)
        return deform_conv(x, offset, self.weight, self.bias, 1, pad, 1)
