"""Adapters between student and teacher: feature adapters (trained with the student, never exported) and
the teacher's input adapter (fixed resize / renormalization)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.core.errors import ConfigError
from kdforge.data.inputs import Inputs, map_inputs

TokenLayout = tuple[int, int, int]  # (prefix tokens, grid height, grid width)
_LAYOUTS: dict[int, TokenLayout] = {}  # by token count; filled from the models when the Distiller is set up


def register_token_layout(layout: TokenLayout) -> None:
    """Record how a model's N = prefix + h*w tokens are laid out (timm ViTs report it; see TappedModel)."""
    prefix, height, width = layout
    _LAYOUTS[prefix + height * width] = layout


def token_layout(count: int) -> TokenLayout:
    """The layout of `count` tokens: a registered one, else a square grid after at most 8 prefix tokens
    (class + registers); anything else is ambiguous (a 4x6 grid + 1 looks like 5x5) and refused."""
    if count in _LAYOUTS:
        return _LAYOUTS[count]
    grid = math.isqrt(count)
    if count - grid * grid > 8:
        raise ConfigError(
            f"cannot tell the patch grid of {count} tokens; tap a timm ViT (its grid is read from the model) "
            "or call kdforge.distill.adapters.register_token_layout((prefix, height, width))."
        )
    return (count - grid * grid, grid, grid)


def tokens_to_map(tokens: torch.Tensor, layout: TokenLayout | None = None) -> torch.Tensor:
    """ViT tokens (B, N, D) -> a map (B, D, h, w): the prefix tokens (class, registers) before the patch
    grid are dropped."""
    batch, count, dim = tokens.shape
    prefix, height, width = layout or token_layout(count)
    return tokens[:, prefix:].transpose(1, 2).reshape(batch, dim, height, width)


def _map_shape(shape: torch.Size) -> tuple[int, ...]:
    if len(shape) == 3:
        _, height, width = token_layout(shape[1])
        return (shape[0], shape[2], height, width)
    return tuple(shape)


class FeatureAdapter(nn.Module):
    """Maps a student feature onto the teacher's shape: channel projection (1x1 conv for maps, linear for
    vectors and tokens) plus spatial resize; identity where the shapes already match.

    ViT tokens meet CNN maps (either way round), or tokens of different grids, as maps: tokens become
    (B, D, g, g) after their prefix tokens are dropped, on both sides, so a ConvNeXt teacher can teach a
    ViT student. Terms compare ``adapter(student)`` with ``adapter.teacher_view(teacher)``.
    """

    def __init__(self, student_shape: torch.Size, teacher_shape: torch.Size) -> None:
        super().__init__()
        ranks = {len(student_shape), len(teacher_shape)}
        if 2 in ranks and len(ranks) > 1:
            raise ValueError(
                f"cannot adapt a student feature of shape {tuple(student_shape)} to a teacher feature of shape "
                f"{tuple(teacher_shape)}: a vector cannot be compared with a map or tokens. Tap layers of the "
                "same kind (pooled embeddings with pooled embeddings, maps or tokens with maps or tokens)."
            )
        self.as_maps = len(ranks) > 1 or (ranks == {3} and student_shape[1] != teacher_shape[1])
        self.student_layout = token_layout(student_shape[1]) if self.as_maps and len(student_shape) == 3 else None
        self.teacher_layout = token_layout(teacher_shape[1]) if self.as_maps and len(teacher_shape) == 3 else None
        if self.as_maps:
            student_shape, teacher_shape = _map_shape(student_shape), _map_shape(teacher_shape)
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
        if self.as_maps and x.dim() == 3:
            x = tokens_to_map(x, self.student_layout)
        x = self.proj(x)  # (B, C_t, H_s, W_s) or (B, [N,] C_t)
        if self.is_map and tuple(x.shape[2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x

    def teacher_view(self, teacher: torch.Tensor) -> torch.Tensor:
        """The teacher feature in the space the adapted student lives in (tokens as a map when needed)."""
        return tokens_to_map(teacher, self.teacher_layout) if self.as_maps and teacher.dim() == 3 else teacher


def _channels(shape: tuple[int, ...]) -> int:
    return shape[1] if len(shape) == 4 else shape[-1]


class InputAdapter(nn.Module):
    """Turns the student's input into the teacher's: undo/redo normalization and resize.

    Used when a teacher was trained at another resolution or with other mean/std than the student.
    """

    def __init__(
        self,
        data_mean: Sequence[float],
        data_std: Sequence[float],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        size: int | tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        mean, std = mean or data_mean, std or data_std
        # x_t = (x * s_d + m_d - m_t) / s_t = x * scale + shift, per channel
        scale = torch.tensor(data_std) / torch.tensor(std)
        shift = (torch.tensor(data_mean) - torch.tensor(mean)) / torch.tensor(std)
        self.register_buffer("scale", scale.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, -1, 1, 1), persistent=False)
        self.size = (size, size) if isinstance(size, int) else (tuple(size) if size else None)
        self.renormalize = not (
            torch.allclose(scale, torch.ones_like(scale)) and torch.allclose(shift, torch.zeros_like(shift))
        )

    def forward(self, inputs: Inputs) -> Inputs:
        return map_inputs(self._adapt, inputs)

    def _adapt(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:  # a multi-crop group (B, N, C, H, W)
            return self._adapt(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        if self.renormalize:
            x = x * self.scale + self.shift
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return x
