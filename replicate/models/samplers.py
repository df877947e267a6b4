"""Random positive/negative sampling of a two-stage detector's training examples.

Faster R-CNN (Ren et al. 2015, Sec. 3.1.3) trains its RPN on 256 anchors per image, up to half of them
positive, and its RoI head on 512 RoIs per image (Fast R-CNN's mini-batch, 25 % positive, as every
reference configuration since FPN): if an image has fewer positives the negatives fill the rest.
:func:`sample` draws such a subset for a whole batch at once (no loop over images) from the global
random stream, so a seeded run draws the same subsets.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sample(pos: Tensor, neg: Tensor, num: int, pos_fraction: float) -> tuple[Tensor, Tensor]:
    """``(sampled_pos, sampled_neg)`` (B, A) bool: per image at most ``int(num * pos_fraction)`` of the
    candidates ``pos`` (B, A) bool, chosen uniformly at random, and ``num`` minus that many of ``neg``."""
    pos_quota = torch.minimum(pos.sum(1), torch.tensor(int(num * pos_fraction), device=pos.device))
    chosen_pos = _random_subset(pos, pos_quota)
    chosen_neg = _random_subset(neg, torch.minimum(neg.sum(1), num - pos_quota))
    return chosen_pos, chosen_neg


def _random_subset(candidates: Tensor, count: Tensor) -> Tensor:
    """(B, A) bool: ``count[b]`` of the ``candidates[b]``, uniformly at random."""
    keys = torch.rand(candidates.shape, device=candidates.device).masked_fill(~candidates, 2.0)
    rank = torch.empty_like(keys, dtype=torch.long)
    order = keys.argsort(dim=1)
    rank.scatter_(1, order, torch.arange(keys.shape[1], device=keys.device).expand_as(order))
    return candidates & (rank < count[:, None])
