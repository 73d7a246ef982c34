"""timm-style image transforms for training and evaluation."""

from __future__ import annotations

from collections.abc import Callable

from kdforge.config import DataConfig


def image_transform(cfg: DataConfig, train: bool) -> Callable:
    """Training: a replayable `ViewTransform`, or timm's with auto-augment (whose ops cannot be replayed).

    Evaluation: resize + center crop.
    """
    from timm.data import create_transform

    from kdforge.data.views import ViewTransform

    aug = cfg.augment
    if train and aug.auto_augment is None:
        return ViewTransform(cfg)
    common = dict(
        input_size=(cfg.in_chans, cfg.image_size, cfg.image_size),
        # timm's eval transform has no random interpolation (KeyError); evaluate with the default, bilinear
        interpolation="bilinear" if not train and aug.interpolation == "random" else aug.interpolation,
        mean=cfg.mean,
        std=cfg.std,
    )
    if not train:
        return create_transform(**common, is_training=False, crop_pct=aug.crop_pct)
    return create_transform(
        **common,
        is_training=True,
        scale=aug.scale,
        ratio=aug.ratio,
        hflip=aug.hflip,
        color_jitter=aug.color_jitter or 0.0,
        auto_augment=aug.auto_augment,
    )
