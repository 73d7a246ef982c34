"""A shuffling sampler that can start mid-epoch, so a resumed run sees exactly the remaining samples."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Permutation seeded by ``(seed, epoch)``; ``start`` skips samples already seen in this epoch.

    Like `DistributedSampler`, call ``set_epoch`` before each epoch. ``start`` applies to the next
    iteration only, then resets, so one resume does not shorten later epochs.
    """

    def __init__(self, length: int, shuffle: bool = True, seed: int = 0) -> None:
        self.length, self.shuffle, self.seed = length, shuffle, seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.length))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.length, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return iter(self.order()[start:])

    def __len__(self) -> int:
        return self.length - self.start
