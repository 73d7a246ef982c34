"""Replayable augmentation: a view drawn once is replayed pixel for pixel, its draws come only from the given
generator, its parameters stay in range, and a fixed parameter vector gives what torchvision gives by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as F
from PIL import Image
from torch.utils.data import TensorDataset
from torchvision.datasets import ImageFolder
from torchvision.transforms import InterpolationMode

from kdforge.core.config import AugmentConfig, DataConfig
from kdforge.core.errors import DataError
from kdforge.data.datasets import UNLABELLED, BatchDict
from kdforge.data.transforms import image_transform
from kdforge.data.views import JITTER_ORDERS, PARAM_NAMES, ReplayableImages, ViewTransform, central_crop

SIZES = [(20, 14), (9, 17), (16, 16), (17, 16), (31, 12)]  # (width, height); 17x16 rounds sqrt(area) to 16
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
RANDOM = AugmentConfig(scale=(0.2, 1.0), hflip=0.5, color_jitter=0.4, interpolation="random")
FIXED = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, color_jitter=None)


def _cfg(augment: AugmentConfig = RANDOM, **kwargs) -> DataConfig:
    return DataConfig(image_size=8, mean=MEAN, std=STD, augment=augment, **kwargs)


def _images(root: Path) -> ImageFolder:
    """Two classes of random RGB PNGs of the sizes in SIZES."""
    rng = np.random.default_rng(0)
    for i, (width, height) in enumerate(SIZES):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return ImageFolder(str(root))


@pytest.fixture
def images(tmp_path: Path) -> ImageFolder:
    return _images(tmp_path / "train")


def _params(box: tuple[int, int, int, int], flip: int, factors=(1.0, 1.0, 1.0), order=0, interp=1) -> torch.Tensor:
    return torch.tensor([*box, flip, *factors, order, interp], dtype=torch.float64)


def _by_hand(image: Image.Image, box: tuple[int, int, int, int], mode: InterpolationMode) -> Image.Image:
    return F.hflip(F.resized_crop(image.convert("RGB"), *box, [8, 8], mode))


def _finish(image: Image.Image) -> torch.Tensor:
    return F.normalize(F.to_tensor(image), list(MEAN), list(STD))


# --- replay and the generator -------------------------------------------------------------------


def test_sample_view_then_view_is_pixel_identical(images: ImageFolder) -> None:
    dataset = ReplayableImages(images, ViewTransform(_cfg()))
    generator = torch.Generator().manual_seed(0)
    for index in range(len(dataset)):
        for _ in range(4):
            tensor, target, params = dataset.sample_view(index, generator)
            replayed, replayed_target = dataset.view(index, params)
            assert torch.equal(tensor, replayed) and target == replayed_target
            assert tensor.shape == (3, 8, 8) and params.dtype == torch.float64 and params.shape == (len(PARAM_NAMES),)


def test_views_differ_between_draws(images: ImageFolder) -> None:
    dataset = ReplayableImages(images, ViewTransform(_cfg()))
    generator = torch.Generator().manual_seed(0)
    views = [dataset.sample_view(0, generator)[0] for _ in range(3)]
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[1], views[2])


def test_same_seed_same_params_and_different_seeds_differ() -> None:
    transform = ViewTransform(_cfg())

    def draws(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.stack([transform.sample(generator, 40, 30) for _ in range(5)])

    assert torch.equal(draws(3), draws(3))
    assert not torch.equal(draws(3), draws(4))


def test_sample_with_a_generator_leaves_the_global_rng_alone() -> None:
    transform = ViewTransform(_cfg())
    state = torch.random.get_rng_state()
    for seed in range(20):
        transform.sample(torch.Generator().manual_seed(seed), 40, 30)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_sample_without_a_generator_draws_from_the_global_rng() -> None:
    transform = ViewTransform(_cfg())
    torch.manual_seed(5)
    first = transform.sample(None, 40, 30)
    torch.manual_seed(5)
    assert torch.equal(transform.sample(None, 40, 30), first)
    assert not torch.equal(transform.sample(None, 40, 30), first)


# --- parameter ranges ---------------------------------------------------------------------------


@pytest.mark.parametrize("width,height", [(60, 40), (40, 60), (33, 33)])
def test_params_stay_in_range(width: int, height: int) -> None:
    aug = AugmentConfig(scale=(0.25, 0.5), ratio=(0.75, 1.5), hflip=0.5, color_jitter=0.3, interpolation="random")
    transform = ViewTransform(_cfg(aug))
    generator = torch.Generator().manual_seed(1)
    params = torch.stack([transform.sample(generator, width, height) for _ in range(300)])
    named = dict(zip(PARAM_NAMES, params.T, strict=True))
    top, left, h, w = (named[k] for k in ("top", "left", "height", "width"))
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    # w and h are sqrt(area * ratio) and sqrt(area / ratio) rounded, so the drawn area lies within half a pixel
    area = width * height
    assert ((w - 0.5) * (h - 0.5) <= 0.5 * area).all() and ((w + 0.5) * (h + 0.5) >= 0.25 * area).all()
    assert ((w + 0.5) / (h - 0.5) >= 0.75).all() and ((w - 0.5) / (h + 0.5) <= 1.5).all()
    assert set(named["flip"].tolist()) == {0.0, 1.0}
    for name in ("brightness", "contrast", "saturation"):
        assert ((named[name] >= 0.7) & (named[name] <= 1.3)).all() and named[name].unique().numel() > 100
    assert set(named["order"].tolist()) == set(range(len(JITTER_ORDERS)))
    assert set(named["interpolation"].tolist()) == {1.0, 2.0}  # bilinear, bicubic


def test_an_impossible_ratio_falls_back_to_the_central_crop() -> None:
    transform = ViewTransform(_cfg(AugmentConfig(scale=(0.9, 1.0), ratio=(3.0, 4.0))))
    params = transform.sample(torch.Generator().manual_seed(0), 30, 30)
    assert params[:4].tolist() == [10, 0, 10, 30]  # a 30x10 band through the middle
    assert central_crop(30, 30, (3.0, 4.0)) == (10, 0, 10, 30)


def test_without_jitter_the_factors_are_one_and_flip_follows_its_probability() -> None:
    transform = ViewTransform(_cfg(AugmentConfig(hflip=1.0, color_jitter=0.0)))
    params = transform.sample(torch.Generator().manual_seed(0), 20, 20)
    named = dict(zip(PARAM_NAMES, params.tolist(), strict=True))
    assert (named["brightness"], named["contrast"], named["saturation"], named["order"]) == (1, 1, 1, 0)
    assert named["flip"] == 1.0 and named["interpolation"] == 1.0  # bilinear, the config's


# --- fixed configs ------------------------------------------------------------------------------


def test_default_config_is_random() -> None:
    assert ViewTransform(DataConfig()).random


@pytest.mark.parametrize("jitter", [None, 0.0])
def test_a_fixed_config_is_not_random_and_repeats_its_view(images: ImageFolder, jitter: float | None) -> None:
    transform = ViewTransform(_cfg(FIXED.model_copy(update={"color_jitter": jitter})))
    dataset = ReplayableImages(images, transform)
    assert not transform.random and not dataset.random
    for index in range(len(dataset)):  # includes 17x16, where torchvision could shift the crop by a pixel
        first = dataset[index][0]
        assert all(torch.equal(dataset[index][0], first) for _ in range(5))


@pytest.mark.parametrize(
    "update",
    [{"scale": (0.9, 1.0)}, {"ratio": (0.9, 1.1)}, {"hflip": 0.1}, {"color_jitter": 0.1}, {"interpolation": "random"}],
)
def test_any_varying_setting_makes_it_random(update: dict) -> None:
    assert ViewTransform(_cfg(FIXED.model_copy(update=update))).random


# --- what a parameter vector produces -----------------------------------------------------------


def test_fixed_params_give_torchvisions_crop_flip_and_normalize(images: ImageFolder) -> None:
    image = images[0][0]
    box = (2, 3, 10, 12)
    out = ViewTransform(_cfg()).apply(image, _params(box, flip=1, interp=2))
    assert torch.equal(out, _finish(_by_hand(image, box, InterpolationMode.BICUBIC)))


def test_jitter_is_applied_in_the_stored_order(images: ImageFolder) -> None:
    image = images[0][0]
    box = (0, 0, 14, 20)
    order = JITTER_ORDERS.index((2, 0, 1))  # saturation, then brightness, then contrast
    out = ViewTransform(_cfg()).apply(image, _params(box, 1, factors=(1.2, 0.8, 1.1), order=order))
    expected = _by_hand(image, box, InterpolationMode.BILINEAR)
    expected = F.adjust_contrast(F.adjust_brightness(F.adjust_saturation(expected, 1.1), 1.2), 0.8)
    assert torch.equal(out, _finish(expected))
    other_order = ViewTransform(_cfg()).apply(image, _params(box, 1, factors=(1.2, 0.8, 1.1), order=0))
    assert not torch.equal(out, other_order)


def test_grey_images_become_rgb_and_one_channel_configs_get_grey(tmp_path: Path) -> None:
    grey = Image.fromarray(np.arange(12 * 10, dtype=np.uint8).reshape(12, 10))
    assert ViewTransform(_cfg())(grey).shape == (3, 8, 8)
    one = ViewTransform(DataConfig(image_size=8, in_chans=1, mean=(0.5,), std=(0.5,), augment=RANDOM))
    assert one(Image.new("RGB", (10, 12), (200, 10, 10))).shape == (1, 8, 8)


def test_params_of_another_length_are_refused(images: ImageFolder) -> None:
    with pytest.raises(DataError, match=r"shape \(3,\), expected \(10,\).*rebuild the cache"):
        ViewTransform(_cfg()).apply(images[0][0], torch.zeros(3, dtype=torch.float64))


def test_crop_boxes_match_torchvisions_sampler() -> None:
    """Same algorithm as RandomResizedCrop.get_params: with the same stream of draws, the same boxes."""
    from torchvision.transforms import RandomResizedCrop

    transform = ViewTransform(_cfg(AugmentConfig(scale=(0.1, 0.9), hflip=0.0, color_jitter=None)))
    blank = torch.zeros(3, 30, 40)
    for seed in range(20):
        torch.manual_seed(seed)
        expected = RandomResizedCrop.get_params(blank, [0.1, 0.9], [3 / 4, 4 / 3])
        assert transform.sample(torch.Generator().manual_seed(seed), 40, 30)[:4].tolist() == list(expected)


# --- wiring: the datasets wrapper and image_transform -------------------------------------------


def test_replayable_images_pass_through_imagefolder_attributes(images: ImageFolder) -> None:
    dataset = ReplayableImages(images, ViewTransform(_cfg()))
    assert dataset.targets == images.targets and dataset.classes == ["class0", "class1"]
    assert dataset.samples == images.samples and len(dataset) == len(SIZES)
    assert dataset[1][0].shape == (3, 8, 8) and dataset[1][1] == images.targets[1]


def test_batch_dict_view_and_sample_view_give_the_training_dict(images: ImageFolder) -> None:
    wrapped = BatchDict(ReplayableImages(images, ViewTransform(_cfg())), hidden={1})
    assert wrapped.replayable and wrapped.random is True
    item, params = wrapped.sample_view(1, torch.Generator().manual_seed(0))
    assert set(item) == {"input", "target", "index"} and (item["target"], item["index"]) == (UNLABELLED, 1)
    replayed = wrapped.view(1, params)
    assert torch.equal(replayed["input"], item["input"]) and (replayed["target"], replayed["index"]) == (-1, 1)
    assert wrapped.view(2, params)["target"] == images.targets[2]


def test_a_dataset_without_views_cannot_replay() -> None:
    wrapped = BatchDict(TensorDataset(torch.zeros(2, 3), torch.zeros(2)))
    assert not wrapped.replayable and wrapped.random is None
    with pytest.raises(DataError, match="TensorDataset cannot replay augmented views.*ReplayableImages"):
        wrapped.view(0, torch.zeros(len(PARAM_NAMES)))
    with pytest.raises(DataError, match="cannot replay"):
        wrapped.sample_view(0, torch.Generator())


def test_image_transform_is_replayable_unless_auto_augment() -> None:
    assert isinstance(image_transform(_cfg(), train=True), ViewTransform)
    auto = _cfg(RANDOM.model_copy(update={"auto_augment": "rand-m9-mstd0.5"}))
    assert not isinstance(image_transform(auto, train=True), ViewTransform)
    assert not isinstance(image_transform(_cfg(), train=False), ViewTransform)
