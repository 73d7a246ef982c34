"""Dataset and model factories that tests reference by import path, as users would."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from kdforge.data.digits import DigitsDataset


def digits_with_nan(split: str, bad: int = 1) -> DigitsDataset:
    """Digits whose first `bad` training images are NaN (for the NaN-guard tests)."""
    dataset = DigitsDataset(split)
    if split == "train":
        dataset.images[:bad] = torch.nan
    return dataset


def mlp(num_classes: int = 10, in_chans: int = 1, hidden: int = 32) -> nn.Module:
    """A model without batch statistics, so per-sample losses add up exactly across micro-batches."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * 64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def mlp_with_infinite_grads(num_classes: int = 10, in_chans: int = 1, hidden: int = 32, every: int = 1) -> nn.Module:
    """The `mlp` whose first weight gets an infinite gradient on every `every`-th backward pass (the loss
    stays finite): for the gradient-guard tests."""
    model = mlp(num_classes, in_chans, hidden)
    calls = [0]

    def poison(grad: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return grad * float("inf") if calls[0] % every == 0 else grad

    model[1].weight.register_hook(poison)
    return model


def dataset_without_split(size: int = 4) -> list[tuple[torch.Tensor, int]]:
    """A dataset factory that breaks the contract: it takes no ``split`` argument."""
    return [(torch.zeros(1, 8, 8), 0)] * size


class SignallingDigits(DigitsDataset):
    """Training digits that send this process `signum` on their `after`-th read, once: when the file `flag`
    does not exist yet (it is created then), so a resumed run reads on undisturbed."""

    def __init__(self, after: int, flag: str, signum: int) -> None:
        super().__init__("train")
        self.after, self.flag, self.signum, self.reads = after, Path(flag), signum, 0

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.reads += 1
        if self.reads == self.after and not self.flag.exists():
            self.flag.touch()
            os.kill(os.getpid(), self.signum)
        return super().__getitem__(index)


def digits_that_signal(split: str, after: int = 0, flag: str = "", signum: int = 15) -> DigitsDataset:
    """`SignallingDigits` for the training split, plain digits for validation (for the preemption tests)."""
    return SignallingDigits(after, flag, signum) if split == "train" else DigitsDataset(split)
