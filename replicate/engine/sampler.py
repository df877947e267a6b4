"""Deterministic, resumable training order for one or many processes.

* ``iters_per_epoch = len(dataset) // global_batch`` (the incomplete last batch is dropped, as
  with ``drop_last``); iteration ``i`` belongs to epoch ``i // iters_per_epoch``.
* Epoch ``e``'s order is a permutation drawn from ``numpy``'s generator seeded by
  ``SeedSequence([seed, e])``; iteration ``i``'s global batch is the slice
  ``[(i % ipe) * B, (i % ipe + 1) * B)`` of it, and rank ``r`` of ``W`` takes the contiguous
  ``r``-th ``B / W`` of that slice.
* The sampler yields ``(epoch, index)`` pairs and :class:`EpochDataset` reads
  ``dataset.get(index, epoch)``, so a sample's augmentation randomness is that of the epoch of its
  iteration, whatever process or DataLoader worker reads it.

Everything is a function of ``(seed, iteration)``: a sampler started at iteration ``k`` yields exactly
the batches an uninterrupted run yields from ``k`` on.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np
from torch.utils.data import Dataset, Sampler

from ..errors import ReplicateError

SampleKey = tuple[int, int]  # (epoch, dataset index)


class EpochDataset(Dataset):
    """``wrapped[(epoch, index)] = dataset.get(index, epoch)``."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey):
        epoch, index = key
        return self.dataset.get(index, epoch)


class IterationBatchSampler(Sampler[list[SampleKey]]):
    """Batch sampler yielding this rank's ``(epoch, index)`` batch for iterations ``start .. end - 1``."""

    def __init__(self, dataset_len: int, global_batch: int, *, seed: int = 0, start: int = 0, end: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if global_batch % world_size:
            raise ReplicateError(
                f"the global batch size {global_batch} is not divisible by the number of processes {world_size}"
            )
        if dataset_len < global_batch:
            raise ReplicateError(f"the dataset has {dataset_len} images, fewer than one global batch of {global_batch}")
        if not 0 <= rank < world_size:
            raise ReplicateError(f"rank {rank} outside 0..{world_size - 1}")
        self.dataset_len, self.global_batch, self.seed = dataset_len, global_batch, seed
        self.start, self.end, self.rank, self.world_size = start, end, rank, world_size
        self.iters_per_epoch = dataset_len // global_batch
        self._permutation = lru_cache(maxsize=2)(self._draw_permutation)

    def _draw_permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(np.random.SeedSequence([self.seed, epoch])).permutation(self.dataset_len)

    def epoch_of(self, iteration: int) -> int:
        return iteration // self.iters_per_epoch

    def global_batch_at(self, iteration: int) -> list[SampleKey]:
        """Every process's samples of ``iteration``, rank 0's share first."""
        epoch, pos = divmod(iteration, self.iters_per_epoch)
        indices = self._permutation(epoch)[pos * self.global_batch:(pos + 1) * self.global_batch]
        return [(epoch, int(i)) for i in indices]

    def batch_at(self, iteration: int) -> list[SampleKey]:
        """This rank's contiguous share of ``global_batch_at(iteration)``."""
        share = self.global_batch // self.world_size
        return self.global_batch_at(iteration)[self.rank * share:(self.rank + 1) * share]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for iteration in range(self.start, self.end):
            yield self.batch_at(iteration)

    def __len__(self) -> int:
        return max(0, self.end - self.start)
