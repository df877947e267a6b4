"""Deformable convolution on ``torchvision.ops.deform_conv2d``: modulated (DCNv2, Zhu et al. 2019, Eq. 3)
or plain (DCNv1, Dai et al. 2017, Eq. 2).

``y(p) = sum_k w_k * x(p + p_k + dp_k) * m_k``: offsets ``dp_k`` and masks ``m_k = sigmoid(.)`` are
predicted from the input by a plain convolution with the same geometry, initialised to zero (so at
initialisation offsets are 0 and every mask is 0.5, as in the reference DCNv2 implementations).
With ``modulated=False`` the offset convolution predicts offsets only and ``m_k = 1`` (DCNv1).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import deform_conv2d


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
        return deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride, padding=self.padding,
                             dilation=self.dilation, mask=mask)
