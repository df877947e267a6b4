"""Batching: pad images to a common size that is a multiple of the network stride; deterministic loaders."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class ImageBatch:
    """A padded batch. ``images`` is (B, 3, H, W); ``image_sizes[i]`` is image i's (h, w) before padding."""

    images: torch.Tensor
    image_sizes: list[tuple[int, int]]
    targets: list[dict]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "ImageBatch":
        move = lambda v: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v  # noqa: E731
        return ImageBatch(
            self.images.to(device, non_blocking=non_blocking),
            self.image_sizes,
            [{k: move(v) for k, v in t.items()} for t in self.targets],
        )


def pad_batch(images: list[torch.Tensor], size_divisor: int = 32, pad_value: float = 0.0) -> torch.Tensor:
    """Pad (bottom/right) every image to the batch's largest h and w rounded up to ``size_divisor``."""
    h = max(im.shape[-2] for im in images)
    w = max(im.shape[-1] for im in images)
    if size_divisor > 1:
        h = int(math.ceil(h / size_divisor) * size_divisor)
        w = int(math.ceil(w / size_divisor) * size_divisor)
    out = images[0].new_full((len(images), images[0].shape[0], h, w), pad_value)
    for i, im in enumerate(images):
        out[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
    return out


@dataclass
class Collate:
    size_divisor: int = 32
    pad_value: float = 0.0

    def __call__(self, samples: list[tuple[torch.Tensor, dict]]) -> ImageBatch:
        images = [s[0] for s in samples]
        return ImageBatch(
            pad_batch(images, self.size_divisor, self.pad_value),
            [tuple(im.shape[-2:]) for im in images],
            [s[1] for s in samples],
        )
