"""timm-style image transforms for training and evaluation."""

from __future__ import annotations

from collections.abc import Callable

from kdforge.config import DataConfig


def image_transform(cfg: DataConfig, train: bool) -> Callable:
    """RandomResizedCrop + flip (+ color jitter / auto-augment) for training; resize + center crop for eval."""
    from timm.data import create_transform

    aug = cfg.augment
    common = dict(
        input_size=(cfg.in_chans, cfg.image_size, cfg.image_size),
        interpolation=aug.interpolation,
        mean=cfg.mean,
        std=cfg.std,
    )
    if not train:
        return create_transform(**common, is_training=False, crop_pct=aug.crop_pct)
    return create_transform(
        **common,
        is_training=True,
        scale=aug.scale,
        hflip=aug.hflip,
        color_jitter=aug.color_jitter or 0.0,
        auto_augment=aug.auto_augment,
    )
