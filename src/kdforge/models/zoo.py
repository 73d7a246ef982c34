"""Small CNNs for the bundled demo and tests, usable as ``source: import, name: kdforge.models.zoo:cnn``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _stage(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SimpleCNN(nn.Module):
    """conv-BN-ReLU stages (max-pooled between), global average pool, dropout, linear head.

    Tap points for distillation: ``stages.0`` ... ``stages.N-1`` (feature maps) and ``pool`` (B, C).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: Sequence[int] = (32, 64, 128),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        chans = [in_chans, *widths]
        self.stages = nn.Sequential(
            *(_stage(chans[i], chans[i + 1], pool=i < len(widths) - 1) for i in range(len(widths)))
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(widths[-1], num_classes)
        self.num_features = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.pool(self.stages(x))))  # (B, num_classes)


def cnn(
    num_classes: int = 10, in_chans: int = 3, widths: Sequence[int] = (32, 64, 128), dropout: float = 0.0
) -> SimpleCNN:
    """Factory for configs: ``{source: import, name: "kdforge.models.zoo:cnn", kwargs: {widths: [16, 32]}}``."""
    return SimpleCNN(num_classes=num_classes, in_chans=in_chans, widths=widths, dropout=dropout)
