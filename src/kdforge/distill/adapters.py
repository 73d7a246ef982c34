"""Adapters that map a student feature onto the teacher's shape; trained with the student, never exported."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeatureAdapter(nn.Module):
    """Channel projection (1x1 conv for maps, linear for vectors/tokens) plus spatial resize.

    Built from one example pair: identity where the shapes already match.
    """

    def __init__(self, student_shape: torch.Size, teacher_shape: torch.Size) -> None:
        super().__init__()
        if len(student_shape) != len(teacher_shape):
            raise ValueError(
                f"cannot adapt a student feature of shape {tuple(student_shape)} to a teacher feature of shape "
                f"{tuple(teacher_shape)}: they differ in rank. Tap layers of the same kind (maps with maps, "
                "vectors with vectors)."
            )
        s_ch, t_ch = _channels(student_shape), _channels(teacher_shape)
        self.is_map = len(student_shape) == 4
        self.size = tuple(teacher_shape[2:]) if self.is_map else None
        if s_ch == t_ch:
            self.proj: nn.Module = nn.Identity()
        elif self.is_map:
            self.proj = nn.Conv2d(s_ch, t_ch, kernel_size=1, bias=False)
        else:
            self.proj = nn.Linear(s_ch, t_ch, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, C_t, H_s, W_s) or (B, [N,] C_t)
        if self.is_map and tuple(x.shape[2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x


def _channels(shape: torch.Size) -> int:
    return shape[1] if len(shape) == 4 else shape[-1]
