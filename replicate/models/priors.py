"""Priors on the feature-map grid: anchor boxes (RetinaNet, Lin et al. 2017b) and points (FCOS).

Order is location-major (all priors of pixel (0,0), then (0,1), ...), level after level, as in
torchvision and mmdetection. Anchors: for base size ``s`` (= ``octave_base_scale * stride``), scales
``2^(i/n)`` and ratios ``r = h/w``, widths ``s * scale / sqrt(r)`` and heights ``s * scale * sqrt(r)``,
centred at ``(x + offset) * stride``. mmdetection uses offset 0 and unrounded sizes; torchvision rounds
the base anchors (``round_base=True``). FCOS maps location (x, y) to ``(x + 0.5) * stride`` (its Sec. 3.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AnchorConfig:
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    octave_base_scale: float = 4.0  # RetinaNet: anchor base size 4 * stride (32 at P3)
    scales_per_octave: int = 3
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    offset: float = 0.0
    round_base: bool = False
    octaves: int = 1  # octaves of scales on each level: AlignDet's single-level P4 anchors span five (32-512 px)

    @property
    def num_anchors(self) -> int:
        return self.scales_per_octave * self.octaves * len(self.ratios)


def base_anchors(size: float, scales: torch.Tensor, ratios: torch.Tensor, round_base: bool = False) -> torch.Tensor:
    """(len(ratios) * len(scales), 4) anchors centred at 0, ratio-major as torchvision orders them."""
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1.0 / h_ratios
    ws = (size * w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (size * h_ratios[:, None] * scales[None, :]).reshape(-1)
    base = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
    return base.round() if round_base else base


def grid_centres(h: int, w: int, stride: int, offset: float, device=None) -> torch.Tensor:
    """(h * w, 2) centres ``((x + offset) * stride, (y + offset) * stride)``, row-major."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + offset) * stride
    xs = (torch.arange(w, device=device, dtype=torch.float32) + offset) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def anchors_for(cfg: AnchorConfig, sizes: list[tuple[int, int]], device=None) -> list[torch.Tensor]:
    """Per level (h_l * w_l * A, 4) xyxy anchors for feature maps of the given (h, w) sizes."""
    spo = cfg.scales_per_octave
    scales = torch.tensor([2.0 ** (i / spo) for i in range(spo * cfg.octaves)])
    ratios = torch.tensor(cfg.ratios, dtype=torch.float32)
    out = []
    for (h, w), stride in zip(sizes, cfg.strides):
        base = base_anchors(cfg.octave_base_scale * stride, scales, ratios, cfg.round_base).to(device)
        centres = grid_centres(h, w, stride, cfg.offset, device).repeat(1, 2)
        out.append((centres[:, None, :] + base[None]).reshape(-1, 4))
    return out


def points_for(strides: tuple[int, ...], sizes: list[tuple[int, int]], offset: float = 0.5, device=None) -> list[torch.Tensor]:
    """Per level (h_l * w_l, 2) points, FCOS's ``(x + 0.5) * stride`` by default."""
    return [grid_centres(h, w, s, offset, device) for (h, w), s in zip(sizes, strides)]
