"""Semantic segmentation folders: ``<root>/<split>/images/<stem>.<ext>`` paired with ``masks/<stem>.png``.

A mask is a one-channel PNG whose pixel value is the class index; ``data.ignore_index`` marks unlabelled
pixels. Crop, resize and flip are drawn once and applied to image and mask alike, and the mask is only
ever resized with nearest-neighbour, so its values stay class ids.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as F
from PIL import Image
from torch.utils.data import Dataset

from kdforge.core.config import DataConfig
from kdforge.core.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_IMAGE_MODES = {1: "L", 3: "RGB"}
_SHOWN = 5  # missing files listed by name in an error; the rest are counted


class SegmentationFolder(Dataset):
    """(image (C, S, S) normalized, mask (S, S) int64) pairs from an images/ + masks/ folder.

    Args:
        cfg: the data config: root, image_size (S), in_chans, mean, std, augment.scale / augment.hflip,
            class_names or num_classes, ignore_index.
        split: the subfolder of ``cfg.root``.
        augment: whether samples get the random joint crop and flip (default: for the train split).
    """

    def __init__(self, cfg: DataConfig, split: str, augment: bool | None = None) -> None:
        if cfg.root is None:
            raise DataError(f"data.root is required for dataset 'segfolder': {_LAYOUT}")
        self.root, self.split = Path(cfg.root), split
        self.size, self.train = cfg.image_size, split == "train" if augment is None else augment
        self.scale, self.hflip = cfg.augment.scale, cfg.augment.hflip
        self.mean, self.std = list(cfg.mean), list(cfg.std)
        self.image_mode = _IMAGE_MODES.get(cfg.in_chans)
        self.ignore_index = cfg.ignore_index
        self.classes = _class_names(cfg, self.root)
        self.samples = _pair_files(self.root / split)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self._open(index)
        if self.train:
            image, mask = self._augment(image, mask)
        image = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
        mask = mask.resize((self.size, self.size), Image.Resampling.NEAREST)
        pixels = F.normalize(F.to_tensor(image), self.mean, self.std)  # (C, S, S)
        return pixels, torch.from_numpy(np.array(mask, dtype=np.int64))  # (S, S)

    def _open(self, index: int) -> tuple[Image.Image, Image.Image]:
        """The sample's image and its checked mask, at their stored size."""
        image_path, mask_path = self.samples[index]
        image, mask = Image.open(image_path), Image.open(mask_path)
        if len(mask.getbands()) != 1:
            raise DataError(
                f"mask {mask_path} has mode {mask.mode!r} ({len(mask.getbands())} channels); a mask must be a "
                "single-channel PNG (mode L or P) whose pixel value is the class index."
            )
        if mask.size != image.size:
            raise DataError(
                f"mask {mask_path} is {mask.size[0]}x{mask.size[1]} but its image {image_path} is "
                f"{image.size[0]}x{image.size[1]} (width x height); a mask must match its image pixel for pixel."
            )
        self._check_values(mask, mask_path)
        if self.image_mode and image.mode != self.image_mode:
            image = image.convert(self.image_mode)
        return image, mask

    def _check_values(self, mask: Image.Image, path: str) -> None:
        values = torch.unique(torch.from_numpy(np.array(mask, dtype=np.int64)))
        bad = values[((values < 0) | (values >= len(self.classes))) & (values != self.ignore_index)]
        if len(bad):
            raise DataError(
                f"mask {path} holds class ids {bad.tolist()}, outside the {len(self.classes)} classes "
                f"(0..{len(self.classes) - 1}) and not ignore_index ({self.ignore_index}). Fix the mask, add the "
                "classes (data.class_names or classes.txt), or set data.ignore_index to the unlabelled value."
            )

    def _augment(self, image: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image]:
        """One random crop (area from augment.scale, the image's aspect) and flip, the same for both.

        Draws from torch's global RNG, so DataLoader worker seeding makes every worker's views differ.
        """
        width, height = image.size
        side = math.sqrt(torch.empty(1).uniform_(*self.scale).item())  # of the image's width and height
        w, h = max(1, round(width * side)), max(1, round(height * side))
        top = int(torch.randint(0, height - h + 1, (1,)))
        left = int(torch.randint(0, width - w + 1, (1,)))
        box = (left, top, left + w, top + h)
        image, mask = image.crop(box), mask.crop(box)
        if torch.rand(1).item() < self.hflip:
            flip = Image.Transpose.FLIP_LEFT_RIGHT
            image, mask = image.transpose(flip), mask.transpose(flip)
        return image, mask


_LAYOUT = (
    "the segfolder layout is <root>/<split>/images/<stem>.png|jpg|... and <root>/<split>/masks/<stem>.png "
    "(one-channel PNG, pixel value = class index), with <split> train and val."
)


def _class_names(cfg: DataConfig, root: Path) -> list[str]:
    """data.class_names, else the lines of <root>/classes.txt, else numbered names for data.num_classes."""
    if cfg.class_names:
        return list(cfg.class_names)
    listing = root / "classes.txt"
    if listing.is_file():
        return [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if cfg.num_classes:
        return [str(i) for i in range(cfg.num_classes)]
    raise DataError(
        f"segmentation data in {root} has no class names: set data.class_names (the names, index = mask value), "
        f"write them one per line to {listing}, or set data.num_classes."
    )


def _pair_files(folder: Path) -> list[tuple[str, str]]:
    """(image, mask) paths matched by file stem, sorted; every image needs a mask and every mask an image."""
    images_dir, masks_dir = folder / "images", folder / "masks"
    for needed in (images_dir, masks_dir):
        if not needed.is_dir():
            raise DataError(f"segmentation folder {str(needed)!r} does not exist; {_LAYOUT}")
    images: dict[str, Path] = {}
    for path in sorted(images_dir.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in images:
                raise DataError(f"images {images[path.stem]} and {path} share a stem; keep one image per mask.")
            images[path.stem] = path
    masks = {p.stem: p for p in masks_dir.iterdir() if p.suffix.lower() == ".png"}
    _refuse_unpaired(sorted(images.keys() - masks.keys()), f"images in {images_dir} have no mask", masks_dir)
    _refuse_unpaired(sorted(masks.keys() - images.keys()), f"masks in {masks_dir} have no image", images_dir)
    return [(str(images[stem]), str(masks[stem])) for stem in sorted(images)]


def _refuse_unpaired(stems: list[str], what: str, other: Path) -> None:
    if stems:
        shown = ", ".join(stems[:_SHOWN]) + (", ..." if len(stems) > _SHOWN else "")
        raise DataError(f"{len(stems)} {what} (stems: {shown}); add the missing files to {other} or remove these.")
