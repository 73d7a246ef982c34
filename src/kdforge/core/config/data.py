"""Config sections for the models and the data: how each model is built and what it reads, and where the data
comes from, how it is augmented (one view, or multi-crop) and batched."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from kdforge.core.config.base import Strict

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


class InputSpec(Strict):
    """What a model expects as input, when it differs from the data pipeline (e.g. a teacher at 224)."""

    size: int | tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


class ModelSpec(Strict):
    """How to build one model: ``source`` is ``timm``, ``torchvision``, ``smp`` (segmentation-models-pytorch) or
    ``import`` (``pkg.mod:factory``)."""

    source: str = "timm"
    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    num_classes: int | None = None
    checkpoint: str | None = None
    checkpoint_key: str | None = None
    trust_checkpoint: bool = False
    input: InputSpec | None = None
    taps: dict[str, str] = Field(default_factory=dict)  # {tap_name: module.path}, merged with distill.taps
    forward: str | None = None  # "pkg.mod:fn" called as fn(model, inputs); default: a dict input by keyword


class AugmentConfig(Strict):
    """timm-style training augmentation for image folders."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = Field(0.5, ge=0.0, le=1.0)
    color_jitter: float | None = Field(0.4, ge=0.0)
    auto_augment: str | None = None
    interpolation: Literal["bilinear", "bicubic", "nearest", "random"] = "bilinear"
    crop_pct: float = Field(0.875, gt=0.0, le=1.0)

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        return _check_scale(value, "scale")

    @field_validator("ratio")
    @classmethod
    def _ratio_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < value[0] <= value[1]:
            raise ValueError("ratio must be (min, max) aspect ratios with 0 < min <= max")
        return value


def _check_scale(value: tuple[float, float], name: str) -> tuple[float, float]:
    if not 0.0 < value[0] <= value[1] <= 1.0:
        raise ValueError(f"{name} must be (min, max) with 0 < min <= max <= 1")
    return value


class MultiCropConfig(Strict):
    """DINO-style multi-crop for feature distillation: ``global_crops`` large crops (the teacher sees these) and
    ``local_crops`` small ones (the student only), each a random resized crop of the image at its own scale.
    ``simple`` keeps crop and flip only (fast); otherwise colour jitter, grayscale, blur and solarize as DINO."""

    global_crops: int = Field(2, ge=1)
    global_size: int | None = Field(None, gt=0)  # None: data.image_size
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_crops: int = Field(6, ge=0)
    local_size: int | None = Field(None, gt=0)  # None: 3/7 of the global size (96 at 224)
    local_scale: tuple[float, float] = (0.05, 0.32)
    use_local_crops: bool = True
    simple: bool = False

    @field_validator("global_scale", "local_scale")
    @classmethod
    def _scale_range(cls, value: tuple[float, float], info: Any) -> tuple[float, float]:
        return _check_scale(value, info.field_name)

    @property
    def locals(self) -> int:
        """How many local crops each sample gets (0 with ``use_local_crops: false``)."""
        return self.local_crops if self.use_local_crops else 0


class DataConfig(Strict):
    """Where the data comes from and how it is batched."""

    dataset: str = "imagefolder"
    root: str | None = None
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    num_classes: int | None = None
    class_names: list[str] | None = None  # segmentation: the classes' names, index = the mask value
    ignore_index: int = 255  # segmentation: mask value of pixels without a label
    image_size: int = Field(224, gt=0)
    in_chans: int = Field(3, gt=0)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    multicrop: MultiCropConfig | None = None  # training views as several crops (task: features)
    batch_size: int = Field(64, gt=0)
    val_batch_size: int | None = Field(None, gt=0)
    num_workers: int = Field(2, ge=0)
    pin_memory: bool = True
    persistent_workers: bool = True  # keep workers alive between epochs (with num_workers > 0)
    prefetch_factor: int | None = Field(None, ge=1)  # batches each worker loads ahead (torch default: 2)
    labelled_fraction: float = Field(1.0, gt=0.0, le=1.0)
    labelled_per_class: int | None = Field(None, gt=0)
    split_seed: int = 0

    @model_validator(mode="after")
    def _normalization_fits_channels(self) -> DataConfig:
        if len(self.mean) != len(self.std) or len(self.mean) not in (1, self.in_chans):
            raise ValueError(
                f"mean ({len(self.mean)} values) and std ({len(self.std)} values) need one value per input "
                f"channel (in_chans={self.in_chans}) or a single value"
            )
        return self
