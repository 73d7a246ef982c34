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

    With several processes (``world > 1``) every process draws the same order and takes every
    ``world``-th entry from position ``rank``: each global batch of ``world * batch_size`` samples is then
    split across the processes, so they train on exactly the batches one process would. ``even`` drops the
    tail that does not divide (training: every process takes the same number of steps); without it the
    processes together cover every sample once (evaluation).
    """

    def __init__(
        self,
        length: int,
        shuffle: bool = True,
        seed: int = 0,
        views: int = 1,
        rank: int = 0,
        world: int = 1,
        even: bool = True,
    ) -> None:
        self.length, self.shuffle, self.seed, self.views = length, shuffle, seed, views
        self.rank, self.world, self.even = rank, world, even
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self) -> list[int] | list[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        indices = torch.randperm(self.length, generator=generator) if self.shuffle else torch.arange(self.length)
        views = torch.randint(self.views, (self.length,), generator=generator)[indices] if self.views > 1 else None
        stop = self.length - self.length % self.world if self.even else self.length
        mine = slice(self.rank, stop, self.world)
        if views is None:
            return indices[mine].tolist()
        return list(zip(indices[mine].tolist(), views[mine].tolist(), strict=True))

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        start, self.start = self.start, 0
        return iter(self.order()[start:])

    def __len__(self) -> int:
        stop = self.length - self.length % self.world if self.even else self.length
        return len(range(self.rank, stop, self.world)) - self.start
