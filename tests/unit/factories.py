"""Dataset and model factories that tests reference by import path, as users would."""

from __future__ import annotations

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
