"""Bundled real data: scikit-learn's handwritten digits (1,797 8x8 scans, shipped with scikit-learn).

A fixed, seeded, class-stratified train/val split, so every run and every test sees the same images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

DIGITS_MEAN, DIGITS_STD = 0.3, 0.38  # of the pixel values scaled to [0, 1]


def digits_split(split: str, seed: int = 0, val_fraction: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 8, 8) in [0, 1] and labels (N,) of one split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0
    train_idx, val_idx = train_test_split(
        np.arange(len(images)), test_size=val_fraction, random_state=seed, stratify=bunch.target
    )
    idx = {"train": train_idx, "val": val_idx}[split]
    return torch.from_numpy(images[idx]).unsqueeze(1), torch.from_numpy(bunch.target[idx]).long()


class DigitsDataset(Dataset):
    """The digits as normalized tensors, optionally upsampled and repeated to `in_chans` channels.

    Images are held in memory (a few hundred KB), so loading costs nothing and workers are unnecessary.
    """

    classes = [str(i) for i in range(10)]

    def __init__(
        self,
        split: str = "train",
        image_size: int = 8,
        in_chans: int = 1,
        seed: int = 0,
        val_fraction: float = 0.25,
    ) -> None:
        images, self.targets = digits_split(split, seed, val_fraction)
        if image_size != 8:
            images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
        images = (images - DIGITS_MEAN) / DIGITS_STD
        self.images = images.expand(-1, in_chans, -1, -1).contiguous()  # (N, C, H, W)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])


def write_image_folders(out: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    """Write the digits as PNGs in the ImageFolder layout (``out/{train,val}/<digit>/<n>.png``).

    Gives users a real folder dataset to try ``kdforge train --data`` on, with no download.
    """
    from PIL import Image

    out = Path(out)
    for split in ("train", "val"):
        images, targets = digits_split(split, seed)
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
        pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8)[:, 0].numpy()  # (N, H, W)
        for i, (img, label) in enumerate(zip(pixels, targets.tolist(), strict=True)):
            folder = out / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, mode="L").convert("RGB").save(folder / f"{i:04d}.png")
    return out
