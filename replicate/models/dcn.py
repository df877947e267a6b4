"""Deformable convolution on ``torchvision.ops.deform_conv2d``: modulated (DCNv2, Zhu et al. 2019, Eq. 3)
or plain (DCNv1, Dai et al. 2017, Eq. 2).

``y(p) = sum_k w_k * x(p + p_k + dp_k) * m_k``: offsets ``dp_k`` and masks ``m_k = sigmoid(.)`` are
predicted from the input by a plain convolution with the same geometry, initialised to zero (so at
initialisation offsets are 0 and every mask is 0.5, as in the reference DCNv2 implementations).
With ``modulated=False`` the offset convolution predicts offsets only and ``m_k = 1`` (DCNv1).

Two implementations of the same operator: on CUDA (and for grouped convolutions) the compiled
``torchvision.ops.deform_conv2d``; on CPU :func:`sampled_deform_conv2d`, which bilinearly samples the
K shifted copies of the input with ``grid_sample`` and contracts them with the weights. The two agree
to float precision (tests compare values and gradients); the sampled form is about 10x faster for
forward + backward on CPU, where torchvision's kernel is not optimised, and uses K times the input's
memory, which is why CUDA keeps the compiled op.

The contraction is a batched product per image (``bmm``) since 2026-12-06; before, an ``einsum`` folded the
batch into one product over transposed copies of the samples. On AlignDet's 7x7 RoIConv at the proxy's P3 size
(8 x 64 x 32 x 32 in, 256 out) forward + backward took 1235-1304 ms with the einsum and 782-807 ms with bmm
(one thread, bf16 autocast, a busy machine, interleaved), and three AlignDet training steps on proxy batches
4.93 s -> 3.75 s of CPU (torch.profiler; a 1x1 convolution in place of bmm was slower: 896-925 ms). Outputs
and input gradients are bit-identical; the weight gradient sums the images in another order, so a run that
uses this operator re-trains to other last bits than before: the two proxy records made with the einsum
(MOD Table 7's X101-64x4d-DCN, seeds 0 and 1, commit 5a42ab7) reproduce exactly at their own commit.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import deform_conv2d


def sampled_deform_conv2d(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          stride: int = 1, padding: int = 1, dilation: int = 1,
                          mask: torch.Tensor | None = None) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d`` (one group, one deformable group) as ``grid_sample`` + a contraction.

    Offsets use torchvision's layout: channels ``(2k, 2k + 1)`` are ``(dy, dx)`` of kernel position k
    (row-major over the kernel); samples outside the input read zeros, corner by corner, as there. The
    sampling coordinates are computed in the wider of the offsets' and the input's dtype.
    """
    batch, channels, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    k = kh * kw
    out_h, out_w = offset.shape[-2:]
    dt = torch.promote_types(offset.dtype, x.dtype)  # float32 offsets keep their fractions under bf16 features
    ky, kx = torch.meshgrid(torch.arange(kh, dtype=dt, device=x.device),
                            torch.arange(kw, dtype=dt, device=x.device), indexing="ij")
    rows = torch.arange(out_h, dtype=dt, device=x.device).view(1, 1, out_h, 1) * stride - padding
    cols = torch.arange(out_w, dtype=dt, device=x.device).view(1, 1, 1, out_w) * stride - padding
    ys = rows + (ky * dilation).reshape(1, k, 1, 1) + offset[:, 0::2]
    xs = cols + (kx * dilation).reshape(1, k, 1, 1) + offset[:, 1::2]
    grid = torch.stack((2 * (xs + 0.5) / width - 1, 2 * (ys + 0.5) / height - 1), dim=-1)
    samples = F.grid_sample(x.to(dt), grid.reshape(batch, k * out_h, out_w, 2), mode="bilinear", padding_mode="zeros",
                            align_corners=False).view(batch, channels, k, out_h, out_w)
    if mask is not None:
        samples = samples * mask.unsqueeze(1)
    # one (O, C k) @ (C k, H W) product per image, on the samples in their own layout: no transposed copy of
    # them, forward or backward (see the module doc)
    weights = weight.reshape(1, out_channels, channels * k).expand(batch, -1, -1)
    out = torch.bmm(weights, samples.view(batch, channels * k, out_h * out_w)).view(batch, out_channels, out_h, out_w)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def deform_conv(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stride: int = 1, padding: int = 1, dilation: int = 1,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """A deformable convolution with given offsets (and optional modulation): the sampled form on CPU for one
    group and one deformable group, the compiled ``torchvision.ops.deform_conv2d`` otherwise."""
    if x.device.type == "cpu" and weight.shape[1] == x.shape[1] and offset.shape[1] == 2 * weight[0, 0].numel():
        return sampled_deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)
    return deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask)


class ModulatedDeformConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, dilation: int = 1, groups: int = 1, deform_groups: int = 1,
                 bias: bool = True, modulated: bool = True) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=1)
        k2 = kernel_size * kernel_size
        self.modulated = modulated
        outputs = deform_groups * (3 if modulated else 2) * k2
        self.conv_offset = nn.Conv2d(in_channels, outputs, kernel_size, stride, padding, dilation)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)
        self._split = deform_groups * 2 * k2

    def offsets_and_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.conv_offset(x)
        if not self.modulated:
            return out, None
        return out[:, : self._split], out[:, self._split:].sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset, mask = self.offsets_and_mask(x)
        return deform_conv(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask)
