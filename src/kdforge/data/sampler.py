"""A shuffling sampler that can start mid-epoch, so a resumed run sees exactly the remaining samples."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int | tuple[int, int]]):
    """Permutation seeded by ``(seed, epoch)``; ``start`` skips samples already seen in this epoch.

    Like `DistributedSampler`, call ``set_epoch`` before each epoch. ``start`` applies to the next
    iteration only, then resets, so one resume does not shorten later epochs. With ``views > 1`` it yields
    ``(index, view)``: the cached augmented view each sample is shown this epoch, drawn from the same
    seeded generator, so a resumed epoch replays the same views.
    """

    def __init__(self, length: int, shuffle: bool = True, seed: int = 0, views: int = 1) -> None:
        self.length, self.shuffle, self.seed, self.views = length, shuffle, seed, views
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self) -> list[int] | list[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        indices = torch.randperm(self.length, generator=generator) if self.shuffle else torch.arange(self.length)
        if self.views == 1:
            return indices.tolist()
        views = torch.randint(self.views, (self.length,), generator=generator)
        return list(zip(indices.tolist(), views[indices].tolist(), strict=True))

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        start, self.start = self.start, 0
        return iter(self.order()[start:])

    def __len__(self) -> int:
        return self.length - self.start
