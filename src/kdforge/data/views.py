"""Replayable training augmentation: every random draw of a view is an explicit parameter vector.

A teacher-output cache stores each view's parameters and replays them at training time, so the student sees
the pixel-identical image the teacher saw (FKD, Shen & Xing 2021). The augmentation is timm's training
transform without auto-augment: RandomResizedCrop, horizontal flip, color jitter, ToTensor, Normalize.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

import torch
import torchvision.transforms.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode

from kdforge.core.config import DataConfig
from kdforge.core.errors import DataError
from kdforge.data.inputs import inputs_equal

if TYPE_CHECKING:
    from kdforge.data.multicrop import MultiCropTransform

JITTER_NAMES = ("brightness", "contrast", "saturation")
# The crop box (top, left, height, width) is in the original image's pixels.
PARAM_NAMES = ("top", "left", "height", "width", "flip", *JITTER_NAMES, "order", "interpolation")
JITTER_ORDERS = tuple(itertools.permutations(range(len(JITTER_NAMES))))  # the `order` parameter indexes these
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")  # the `interpolation` parameter indexes these
_ADJUSTMENTS = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
IMAGE_MODES = {1: "L", 3: "RGB"}  # PIL mode an image is converted to, by in_chans
_FULL = (1.0, 1.0)
View = torch.Tensor | dict[str, torch.Tensor]  # one image, or a multi-crop transform's crop groups


class ViewTransform:
    """Training augmentation whose random draws are explicit parameters, so any view can be replayed."""

    param_names: tuple[str, ...] = PARAM_NAMES

    def __init__(self, cfg: DataConfig) -> None:
        aug = cfg.augment
        self.size = cfg.image_size
        self.scale, self.ratio = aug.scale, aug.ratio
        self.hflip = aug.hflip
        self.jitter = aug.color_jitter or 0.0
        self.interpolation = aug.interpolation
        self.image_mode = IMAGE_MODES.get(cfg.in_chans)
        self.mean, self.std = list(cfg.mean), list(cfg.std)
        self.random = self._crop_varies or self.hflip > 0 or self.jitter > 0 or self.interpolation == "random"

    @property
    def _crop_varies(self) -> bool:
        return (self.scale, self.ratio) != (_FULL, _FULL)

    def sample(self, generator: torch.Generator | None, width: int, height: int) -> torch.Tensor:
        """One view's parameters (``param_names``) for an image of this size; None draws from torch's global RNG."""
        top, left, crop_height, crop_width = crop_box(generator, width, height, self.scale, self.ratio)
        interpolation = interpolation_index(self.interpolation, generator)
        flip = self.hflip > 0 and torch.rand(1, generator=generator).item() < self.hflip
        order, factors = self._jitter(generator)
        values = [top, left, crop_height, crop_width, float(flip), *factors, order, interpolation]
        return torch.tensor(values, dtype=torch.float64)

    def apply(self, image: Image.Image, params: torch.Tensor) -> torch.Tensor:
        """The view these parameters describe, normalized: (C, size, size)."""
        check_params(params, self.param_names)
        top, left, height, width, flip, *factors, order, interpolation = params.tolist()
        if self.image_mode and image.mode != self.image_mode:
            image = image.convert(self.image_mode)
        mode = InterpolationMode(INTERPOLATIONS[int(interpolation)])
        image = F.resized_crop(image, int(top), int(left), int(height), int(width), [self.size, self.size], mode)
        if flip:
            image = F.hflip(image)
        for i in JITTER_ORDERS[int(order)]:
            if factors[i] != 1.0:
                image = _ADJUSTMENTS[i](image, factors[i])
        return F.normalize(F.to_tensor(image), self.mean, self.std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.apply(image, self.sample(None, *image.size))

    def _jitter(self, generator: torch.Generator | None) -> tuple[int, list[float]]:
        """torchvision ColorJitter's draws (hue off, as timm for a float): an order, then a factor per adjustment."""
        if not self.jitter:
            return 0, [1.0, 1.0, 1.0]
        order = JITTER_ORDERS.index(tuple(torch.randperm(3, generator=generator).tolist()))
        low, high = max(0.0, 1.0 - self.jitter), 1.0 + self.jitter
        return order, [torch.empty(1).uniform_(low, high, generator=generator).item() for _ in range(3)]


def check_params(params: torch.Tensor, names: tuple[str, ...]) -> None:
    """Refuse a parameter vector of another layout: it was drawn by another augmentation, so replay would lie."""
    if params.shape != (len(names),):
        raise DataError(
            f"view parameters have shape {tuple(params.shape)}, expected ({len(names)},) for "
            f"{names}; they were drawn by another augmentation (rebuild the cache)."
        )


def crop_box(
    generator: torch.Generator | None, width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` drawing from `generator`: (top, left, height, width)."""
    area = width * height
    low, high = torch.log(torch.tensor(ratio)).tolist()
    # A full-area square crop has one size; skipping the draws keeps it central instead of letting
    # torchvision shift it by the pixel that rounding sqrt(area) may leave, so a fixed config stays fixed.
    for _ in range(10 if (scale, ratio) != (_FULL, _FULL) else 0):
        target_area = area * torch.empty(1).uniform_(*scale, generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(low, high, generator=generator)).item()
        w, h = round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    return central_crop(width, height, ratio)


def interpolation_index(name: str, generator: torch.Generator | None) -> int:
    """Index into INTERPOLATIONS; ``random`` picks bilinear or bicubic per view, as timm does."""
    if name == "random":
        return 1 + int(torch.randint(0, 2, (1,), generator=generator))
    return INTERPOLATIONS.index(name)


def central_crop(width: int, height: int, ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """RandomResizedCrop's fallback: the central crop with the aspect ratio clamped into `ratio`."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class ReplayableImages(Dataset):
    """Wraps a dataset yielding (PIL image, target) (e.g. torchvision ImageFolder with transform=None).

    A multi-crop transform's view is a dict of crop groups (see `kdforge.data.multicrop`) instead of a tensor.
    """

    def __init__(self, images: Dataset, transform: ViewTransform | MultiCropTransform) -> None:
        self.images, self.transform = images, transform
        self.random = transform.random
        for name in ("targets", "classes", "samples"):  # what callers read without decoding images
            if hasattr(images, name):
                setattr(self, name, getattr(images, name))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[View, int]:
        """A fresh random view."""
        image, target = self.images[index]
        return self.transform(image), target

    def view(self, index: int, params: torch.Tensor) -> tuple[View, int]:
        """Replay the view these parameters describe."""
        image, target = self.images[index]
        return self.transform.apply(image, params), target

    def sample_view(self, index: int, generator: torch.Generator) -> tuple[View, int, torch.Tensor]:
        """A new view drawn from `generator` (the image is opened once), with its parameters."""
        image, target = self.images[index]
        params = self.transform.sample(generator, *image.size)
        return self.transform.apply(image, params), target, params


PROBE_SAMPLES, PROBE_READS = 3, 8  # a coin-flip augmentation escapes 3 x 8 reads with probability 2^-21


def reads_differ(dataset: Dataset) -> bool:
    """Whether repeated reads of a few samples differ: how a dataset that does not say it is random is caught."""
    with torch.random.fork_rng(devices=[]):
        for index in torch.linspace(0, len(dataset) - 1, PROBE_SAMPLES).long().unique().tolist():
            first = dataset[index]["input"]
            if any(not inputs_equal(first, dataset[index]["input"]) for _ in range(PROBE_READS - 1)):
                return True
    return False
