"""timm-style image transforms for training and evaluation."""

from __future__ import annotations

from collections.abc import Callable

from kdforge.core.config import DataConfig
from kdforge.core.errors import ConfigError


def image_transform(cfg: DataConfig, train: bool) -> Callable:
    """Training: a replayable `ViewTransform` (or `MultiCropTransform` with data.multicrop), or timm's with
    auto-augment (whose ops cannot be replayed).

    Evaluation: resize + center crop (single views, also with data.multicrop).
    """
    from timm.data import create_transform

    from kdforge.data.views import ViewTransform

    aug = cfg.augment
    if train and cfg.multicrop is not None:
        return _multicrop(cfg)
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


def _multicrop(cfg: DataConfig) -> Callable:
    """The multi-crop training transform; refuses auto-augment, whose ops it could not store for replay."""
    from kdforge.data.multicrop import MultiCropTransform

    if cfg.augment.auto_augment is not None:
        raise ConfigError(
            f"data.augment.auto_augment ({cfg.augment.auto_augment!r}) cannot be combined with data.multicrop: "
            "auto-augment's random ops are not parameters, so the teacher cache could not replay the crops. "
            "Remove auto_augment (multicrop brings DINO's colour augmentation) or remove data.multicrop."
        )
    return MultiCropTransform(cfg)
