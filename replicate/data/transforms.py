"""Detection transforms: keep-ratio resize (fixed or multi-scale), horizontal flip, normalisation.

A transform is called as ``t(image, target, gen)``: ``image`` is a float32 (3, H, W) RGB tensor in
[0, 255], ``target`` a dict with ``boxes`` (N, 4) xyxy, ``labels`` (N,), ``ignore_boxes`` (M, 4),
optionally ``masks`` (N, H, W) uint8 (resized by nearest neighbour, flipped with the image), and
bookkeeping keys; ``gen`` is the sample's own ``torch.Generator`` (see :class:`CocoDetection`), so
random choices do not depend on worker count or on earlier samples.

Scales follow the mmdetection convention the papers use: ``(long, short)`` = (1333, 800) means "short
side 800, long side at most 1333"; RetinaNet-Conf uses (1000, 600).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .scales import Scale

Target = dict

# ImageNet statistics in [0, 255] (torchvision and mmdetection's pytorch-style backbones).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def keep_ratio_size(h: int, w: int, scale: Scale) -> tuple[int, int]:
    """Output (h, w) with the short side at ``scale[1]`` unless the long side would exceed ``scale[0]``."""
    long_lim, short = max(scale), min(scale)
    factor = min(short / min(h, w), long_lim / max(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


@dataclass
class Resize:
    """Keep-ratio resize. ``mode="choice"`` picks one of ``scales``; ``mode="range"`` draws the short
    side uniformly between the two scales' short sides (mmdetection's multi-scale "range" mode)."""

    scales: Sequence[Scale]
    mode: str = "choice"

    def __post_init__(self) -> None:
        self.scales = [tuple(int(v) for v in s) for s in self.scales]
        if not self.scales:
            raise ValueError("Resize needs at least one scale")
        if self.mode not in ("choice", "range"):
            raise ValueError(f"Resize mode must be 'choice' or 'range', got {self.mode!r}")
        if self.mode == "range" and len(self.scales) != 2:
            raise ValueError("Resize mode 'range' takes exactly two scales")

    def pick(self, gen: torch.Generator | None) -> Scale:
        if len(self.scales) == 1:
            return self.scales[0]
        if self.mode == "choice":
            return self.scales[int(torch.randint(len(self.scales), (1,), generator=gen))]
        shorts = sorted(min(s) for s in self.scales)
        short = int(torch.randint(shorts[0], shorts[1] + 1, (1,), generator=gen))
        return (max(max(s) for s in self.scales), short)

    def __call__(self, image: torch.Tensor, target: Target, gen: torch.Generator | None = None):
        h, w = image.shape[-2:]
        nh, nw = keep_ratio_size(h, w, self.pick(gen))
        if (nh, nw) != (h, w):
            image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        factor = torch.tensor([nw / w, nh / h, nw / w, nh / h])
        target = dict(target, boxes=target["boxes"] * factor, ignore_boxes=target["ignore_boxes"] * factor)
        if "masks" in target and (nh, nw) != (h, w):
            masks = target["masks"]
            target["masks"] = F.interpolate(masks[None].float(), size=(nh, nw), mode="nearest")[0].to(masks.dtype) \
                if len(masks) else masks.new_zeros((0, nh, nw))
        target["scale_factor"] = (nh / h, nw / w)
        target["img_size"] = (nh, nw)
        return image, target


@dataclass
class RandomHorizontalFlip:
    prob: float = 0.5

    def __call__(self, image: torch.Tensor, target: Target, gen: torch.Generator | None = None):
        if float(torch.rand((), generator=gen)) >= self.prob:
            return image, target
        w = image.shape[-1]
        flip = lambda b: torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1)  # noqa: E731
        target = dict(target, boxes=flip(target["boxes"]), ignore_boxes=flip(target["ignore_boxes"]), flipped=True)
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
        return image.flip(-1), target


@dataclass
class Normalize:
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __call__(self, image: torch.Tensor, target: Target, gen: torch.Generator | None = None):
        mean = torch.as_tensor(self.mean, dtype=image.dtype)[:, None, None]
        std = torch.as_tensor(self.std, dtype=image.dtype)[:, None, None]
        return (image - mean) / std, target


@dataclass
class Compose:
    transforms: Sequence

    def __call__(self, image: torch.Tensor, target: Target, gen: torch.Generator | None = None):
        for t in self.transforms:
            image, target = t(image, target, gen)
        return image, target


def train_transforms(scales: Sequence[Scale], mode: str = "choice", flip_prob: float = 0.5) -> Compose:
    return Compose([Resize(scales, mode), RandomHorizontalFlip(flip_prob), Normalize()])


def test_transforms(scale: Scale) -> Compose:
    return Compose([Resize([scale]), Normalize()])
