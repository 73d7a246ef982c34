"""DINO-style multi-crop training views whose every random draw is an explicit parameter vector.

Each sample becomes ``global_crops`` large crops (the teacher sees these) and ``locals`` small ones, each a
RandomResizedCrop at its own scale, then DINO's photometric chain (Caron et al. 2021, facebookresearch/dino
``main_dino.py`` DataAugmentationDINO): flip p=0.5; colour jitter (0.4, 0.4, 0.2, 0.1) p=0.8 in a random order;
grayscale p=0.2; Gaussian blur, sigma U(0.1, 2), p=1.0 on global crop 0, 0.1 on the other global crops and 0.5
on local crops; solarize (threshold 128) p=0.2 on global crop 1 only. ``simple`` keeps crop and flip only.

As with `kdforge.data.views.ViewTransform`, `sample` draws one vector (``param_names``: the crops' blocks of
``CROP_PARAMS`` concatenated) and `apply` is deterministic in it, so a teacher-output cache can replay a view.
A skipped op is stored as its identity (factors 1, hue 0, sigma 0, flags 0).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
import torchvision.transforms.functional as F
from PIL import Image, ImageFilter
from torchvision.transforms import InterpolationMode

from kdforge.core.config import DataConfig
from kdforge.core.errors import ConfigError
from kdforge.data.views import IMAGE_MODES, INTERPOLATIONS, check_params, crop_box, interpolation_index

JITTER_NAMES = ("brightness", "contrast", "saturation", "hue")
JITTER_STRENGTH = (0.4, 0.4, 0.2, 0.1)  # DINO's ColorJitter(0.4, 0.4, 0.2, 0.1)
JITTER_IDENTITY = (1.0, 1.0, 1.0, 0.0)  # the factors of a skipped jitter
JITTER_ORDERS = tuple(itertools.permutations(range(len(JITTER_NAMES))))  # the `order` parameter indexes these
# One crop's block; the box (top, left, height, width) is in the original image's pixels, `blur` is sigma (0: none).
CROP_PARAMS = (
    "top", "left", "height", "width", "flip", "interpolation", *JITTER_NAMES, "order", "gray", "blur", "solarize"
)  # fmt: skip
FLIP_P, JITTER_P, GRAY_P, SOLARIZE_P = 0.5, 0.8, 0.2, 0.2
BLUR_P = (1.0, 0.1, 0.5)  # global crop 0, any other global crop, local crops
BLUR_SIGMA = (0.1, 2.0)
SOLARIZE_THRESHOLD = 128
_ADJUSTMENTS = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)


class _Crop(NamedTuple):
    """One crop's settings: its prefix in ``param_names``, output size, area scale and op probabilities."""

    name: str
    size: int
    scale: tuple[float, float]
    blur: float
    solarize: float


class MultiCropTransform:
    """Multi-crop training augmentation with the interface of `ViewTransform` (``sample``, ``apply``).

    ``apply`` returns ``{"global": (G, C, S, S), "local": (L, C, s, s)}``, normalized; no "local" key without
    local crops.
    """

    random = True

    def __init__(self, cfg: DataConfig) -> None:
        multicrop = cfg.multicrop
        if multicrop is None:
            raise ConfigError("MultiCropTransform needs a data.multicrop section; single views use ViewTransform.")
        self.global_size = multicrop.global_size or cfg.image_size
        self.local_size = multicrop.local_size or round(3 / 7 * self.global_size)
        self.global_scale, self.local_scale = tuple(multicrop.global_scale), tuple(multicrop.local_scale)
        self.simple = multicrop.simple
        self.ratio = tuple(cfg.augment.ratio)
        self.interpolation = cfg.augment.interpolation
        self.image_mode = IMAGE_MODES.get(cfg.in_chans)
        self.mean, self.std = list(cfg.mean), list(cfg.std)
        self.n_global, self.n_local = multicrop.global_crops, multicrop.locals
        self.crops = self._crops()
        self.param_names = tuple(f"{crop.name}.{name}" for crop in self.crops for name in CROP_PARAMS)

    def _crops(self) -> tuple[_Crop, ...]:
        """Per-crop settings in parameter order: the global crops, then the local ones."""
        on = 0.0 if self.simple else 1.0
        globals_ = [
            _Crop(f"g{i}", self.global_size, self.global_scale, on * BLUR_P[min(i, 1)], on * SOLARIZE_P * (i == 1))
            for i in range(self.n_global)
        ]
        locals_ = [_Crop(f"l{i}", self.local_size, self.local_scale, on * BLUR_P[2], 0.0) for i in range(self.n_local)]
        return tuple(globals_ + locals_)

    def sample(self, generator: torch.Generator | None, width: int, height: int) -> torch.Tensor:
        """All crops' parameters (``param_names``) for an image of this size; None draws from torch's global RNG."""
        values = [v for crop in self.crops for v in self._sample_crop(crop, generator, width, height)]
        return torch.tensor(values, dtype=torch.float64)

    def apply(self, image: Image.Image, params: torch.Tensor) -> dict[str, torch.Tensor]:
        """The crops these parameters describe, normalized and stacked per group."""
        check_params(params, self.param_names)
        if self.image_mode and image.mode != self.image_mode:
            image = image.convert(self.image_mode)
        blocks = params.view(len(self.crops), len(CROP_PARAMS)).tolist()
        crops = [self._apply_crop(image, crop, values) for crop, values in zip(self.crops, blocks, strict=True)]
        views = {"global": torch.stack(crops[: self.n_global])}  # (G, C, S, S)
        if self.n_local:
            views["local"] = torch.stack(crops[self.n_global :])  # (L, C, s, s)
        return views

    def __call__(self, image: Image.Image) -> dict[str, torch.Tensor]:
        return self.apply(image, self.sample(None, *image.size))

    def __repr__(self) -> str:
        """Every setting, in a fixed order: the cache fingerprints this text to notice a changed pipeline."""
        settings = {
            "global_crops": self.n_global,
            "global_size": self.global_size,
            "global_scale": self.global_scale,
            "local_crops": self.n_local,
            "local_size": self.local_size,
            "local_scale": self.local_scale,
            "simple": self.simple,
            "ratio": self.ratio,
            "interpolation": self.interpolation,
            "image_mode": self.image_mode,
            "mean": self.mean,
            "std": self.std,
            "dino": (FLIP_P, JITTER_P, JITTER_STRENGTH, GRAY_P, BLUR_P, BLUR_SIGMA, SOLARIZE_P, SOLARIZE_THRESHOLD),
        }
        return f"{type(self).__name__}({', '.join(f'{key}={value!r}' for key, value in settings.items())})"

    def _sample_crop(self, crop: _Crop, generator: torch.Generator | None, width: int, height: int) -> list[float]:
        """One crop's block of ``CROP_PARAMS``, drawn in DINO's order of ops."""
        box = crop_box(generator, width, height, crop.scale, self.ratio)
        interpolation = interpolation_index(self.interpolation, generator)
        flip = _coin(generator, FLIP_P)
        order, factors = self._jitter(generator)
        gray = _coin(generator, 0.0 if self.simple else GRAY_P)
        sigma = _uniform(generator, *BLUR_SIGMA) if _coin(generator, crop.blur) else 0.0
        solarize = _coin(generator, crop.solarize)
        return [*box, flip, interpolation, *factors, order, gray, sigma, solarize]

    def _jitter(self, generator: torch.Generator | None) -> tuple[int, list[float]]:
        """torchvision ColorJitter's draws under RandomApply(p=0.8): an order, then one factor per adjustment."""
        if self.simple or not _coin(generator, JITTER_P):
            return 0, list(JITTER_IDENTITY)
        order = JITTER_ORDERS.index(tuple(torch.randperm(len(JITTER_NAMES), generator=generator).tolist()))
        factors = [_uniform(generator, max(0.0, 1.0 - s), 1.0 + s) for s in JITTER_STRENGTH[:3]]
        return order, [*factors, _uniform(generator, -JITTER_STRENGTH[3], JITTER_STRENGTH[3])]

    def _apply_crop(self, image: Image.Image, crop: _Crop, values: list[float]) -> torch.Tensor:
        """One crop as a normalized (C, size, size) tensor; deterministic in `values`."""
        top, left, height, width, flip, interpolation, *factors, order, gray, sigma, solarize = values
        mode = InterpolationMode(INTERPOLATIONS[int(interpolation)])
        image = F.resized_crop(image, int(top), int(left), int(height), int(width), [crop.size, crop.size], mode)
        if flip:
            image = F.hflip(image)
        for i in JITTER_ORDERS[int(order)]:
            if factors[i] != JITTER_IDENTITY[i]:
                image = _ADJUSTMENTS[i](image, factors[i])
        if gray and image.mode == "RGB":  # a one-channel image is grey already
            image = F.rgb_to_grayscale(image, num_output_channels=3)
        if sigma > 0:
            image = image.filter(ImageFilter.GaussianBlur(radius=sigma))
        if solarize:
            image = F.solarize(image, SOLARIZE_THRESHOLD)
        return F.normalize(F.to_tensor(image), self.mean, self.std)


def _coin(generator: torch.Generator | None, p: float) -> float:
    """1.0 with probability `p`; p of 0 or 1 draws nothing, so a fixed op leaves the stream alone."""
    if p <= 0.0 or p >= 1.0:
        return float(p >= 1.0)
    return float(torch.rand(1, generator=generator).item() < p)


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return torch.empty(1).uniform_(low, high, generator=generator).item()
