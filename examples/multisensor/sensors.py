"""A two-sensor toy problem for custom-model distillation: nothing in it is an image.

Each sample has a 2-channel 1-D signal of 64 steps (a vibration trace) and an 8x8 grid (a coarse range map);
the class is carried by both: the signal's frequency and the position of a blob in the grid, under noise.
Models are two-branch networks taking ``forward(signal, grid)`` by keyword: kdforge passes a batch's
``input`` dict that way. The pooled, fused features sit in the module ``fusion`` (tap it by that name).

Use from a config::

    data: {dataset: import, factory: "sensors:sensor_dataset", kwargs: {samples: 256}}
    teacher: {source: import, name: "sensors:two_branch_net", kwargs: {width: 64}}
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import Dataset

CLASSES = ("idle", "drill", "grind", "impact")
STEPS, GRID = 64, 8


class SensorDataset(Dataset):
    """Samples ``{"input": {"signal": (2, 64), "grid": (1, 8, 8)}, "target": int}``, generated from a seed."""

    classes = list(CLASSES)

    def __init__(self, samples: int, seed: int, noise: float = 0.8) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.targets = torch.randint(0, len(CLASSES), (samples,), generator=generator).tolist()
        t = torch.arange(STEPS) / STEPS
        signals, grids = [], []
        for label in self.targets:
            frequency = 2 + 3 * label + torch.rand(1, generator=generator).item()
            phase = 2 * math.pi * torch.rand(2, 1, generator=generator)
            wave = torch.sin(2 * math.pi * frequency * t + phase)  # (2, 64)
            signals.append(wave + noise * torch.randn(2, STEPS, generator=generator))
            grid = noise * torch.randn(1, GRID, GRID, generator=generator)
            row, col = divmod(label, 2)
            grid[0, row * 4 : row * 4 + 4, col * 4 : col * 4 + 4] += 1.0
            grids.append(grid)
        self.signals, self.grids = torch.stack(signals), torch.stack(grids)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict:
        return {"input": {"signal": self.signals[index], "grid": self.grids[index]}, "target": self.targets[index]}


def sensor_dataset(split: str, samples: int = 256, seed: int = 0) -> SensorDataset:
    """kdforge's ``import`` dataset factory: the val split has its own seed and a quarter of the samples."""
    return SensorDataset(samples if split == "train" else max(samples // 4, 16), seed=seed + (split != "train"))


class TwoBranchNet(nn.Module):
    """A 1-D conv branch for the signal, a 2-D conv branch for the grid, fused into pooled features."""

    def __init__(self, width: int = 32, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.signal_branch = nn.Sequential(
            nn.Conv1d(2, width, 5, padding=2), nn.ReLU(), nn.Conv1d(width, width, 5, padding=2, stride=2), nn.ReLU()
        )
        self.grid_branch = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU())
        self.fusion = nn.Sequential(nn.Linear(2 * width, width), nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, signal: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        s = self.signal_branch(signal).mean(dim=2)  # (B, width)
        g = self.grid_branch(grid).flatten(2).max(dim=2).values  # (B, width)
        return self.head(self.fusion(torch.cat([s, g], dim=1)))


def two_branch_net(width: int = 32, num_classes: int = len(CLASSES)) -> TwoBranchNet:
    """kdforge's ``import`` model factory."""
    return TwoBranchNet(width, num_classes)
