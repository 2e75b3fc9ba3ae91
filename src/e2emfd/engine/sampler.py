"""The training sampler: an endless, seeded stream of (index, seed) pairs.

Epoch ``e`` is a permutation drawn from ``seed + e``; rank ``r`` of ``W`` takes every W-th
element, so the global batch of a step is the same whatever the number of processes.
Each element carries its own augmentation seed, and the stream can start at any step, so a
resumed run sees exactly the samples (and augmentations) the uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class TrainSampler(Sampler):
    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
    ) -> None:
        if size <= 0:
            raise ValueError("the training set is empty")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size, self.start_step = rank, world_size, start_step

    def _global_position(self, position: int) -> tuple[int, int]:
        """Global stream position -> (dataset index, per-sample seed)."""
        epoch, offset = divmod(position, self.size)
        perm = self._perm(epoch)
        return int(perm[offset]), (self.seed * 1_000_003 + position) % (2**31)

    def _perm(self, epoch: int) -> torch.Tensor:
        if getattr(self, "_cached_epoch", None) != epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._cached_perm = torch.randperm(self.size, generator=g)
            self._cached_epoch = epoch
        return self._cached_perm

    def __iter__(self) -> Iterator[tuple[int, int]]:
        global_batch = self.batch_size * self.world_size
        step = self.start_step
        while True:
            base = step * global_batch
            for i in range(self.batch_size):
                # Rank r takes elements r, r + W, ... of the global batch.
                yield self._global_position(base + i * self.world_size + self.rank)
            step += 1

    def __len__(self) -> int:  # an endless stream; DataLoader only needs this for len()
        return 2**62
