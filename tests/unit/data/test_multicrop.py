"""Multi-crop views: shapes per crop group, replay from the parameter vector, DINO's op probabilities, and the
wiring through image_transform, ReplayableImages and BatchDict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.datasets import ImageFolder

from kdforge.core.config import AugmentConfig, DataConfig, MultiCropConfig
from kdforge.core.errors import ConfigError, DataError
from kdforge.data.datasets import BatchDict, build_dataset
from kdforge.data.multicrop import CROP_PARAMS, JITTER_IDENTITY, JITTER_ORDERS, MultiCropTransform
from kdforge.data.transforms import image_transform
from kdforge.data.views import ReplayableImages, ViewTransform

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
N = len(CROP_PARAMS)
COLOUR = slice(CROP_PARAMS.index("brightness"), CROP_PARAMS.index("order") + 1)


@pytest.fixture(autouse=True)
def _own_global_rng():
    """Views drawn with no generator use torch's global stream; give it back as found, for the tests after."""
    with torch.random.fork_rng(devices=[]):
        yield


def _cfg(augment: AugmentConfig | None = None, **multicrop) -> DataConfig:
    multicrop = {"global_crops": 2, "local_crops": 3, "global_size": 12, "local_size": 5, **multicrop}
    augment = augment or AugmentConfig(interpolation="random")
    return DataConfig(image_size=8, mean=MEAN, std=STD, augment=augment, multicrop=MultiCropConfig(**multicrop))


def _image(width: int = 24, height: int = 20, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _blocks(transform: MultiCropTransform, seed: int, draws: int = 50) -> torch.Tensor:
    """(draws, crops, CROP_PARAMS) parameters from one seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([transform.sample(generator, 24, 20).view(-1, N) for _ in range(draws)])


def _column(name: str) -> int:
    return CROP_PARAMS.index(name)


# --- shapes and layout ----------------------------------------------------------------------------


def test_crop_groups_have_their_configured_sizes() -> None:
    views = MultiCropTransform(_cfg())(_image())
    assert set(views) == {"global", "local"}
    assert views["global"].shape == (2, 3, 12, 12) and views["local"].shape == (3, 3, 5, 5)
    assert views["global"].dtype == views["local"].dtype == torch.float32


def test_sizes_default_to_image_size_and_three_sevenths_of_it() -> None:
    transform = MultiCropTransform(_cfg(global_size=None, local_size=None))
    assert (transform.global_size, transform.local_size) == (8, 3)
    assert MultiCropTransform(DataConfig(multicrop=MultiCropConfig())).local_size == 96  # DINO's 224 -> 96


def test_without_local_crops_there_is_no_local_key() -> None:
    transform = MultiCropTransform(_cfg(use_local_crops=False))
    views = transform(_image())
    assert set(views) == {"global"} and views["global"].shape == (2, 3, 12, 12)
    assert len(transform.param_names) == 2 * N


def test_param_names_match_the_vector() -> None:
    transform = MultiCropTransform(_cfg())
    params = transform.sample(torch.Generator().manual_seed(0), 24, 20)
    assert params.dtype == torch.float64 and params.shape == (len(transform.param_names),) == (5 * N,)
    assert transform.param_names[:2] == ("g0.top", "g0.left") and transform.param_names[-1] == "l2.solarize"
    assert transform.param_names[N] == "g1.top" and transform.param_names[2 * N] == "l0.top"


def test_one_channel_configs_give_one_channel_crops_and_grayscale_is_a_no_op() -> None:
    transform = MultiCropTransform(_cfg().model_copy(update={"in_chans": 1, "mean": (0.5,), "std": (0.25,)}))
    params = transform.sample(torch.Generator().manual_seed(0), 24, 20).view(-1, N)
    params[:, _column("gray")] = 1.0
    grey = transform.apply(_image(), params.flatten())["global"]
    params[:, _column("gray")] = 0.0
    assert grey.shape == (2, 1, 12, 12) and torch.equal(grey, transform.apply(_image(), params.flatten())["global"])


# --- replay ---------------------------------------------------------------------------------------


def test_same_seed_same_params_and_crops_different_seeds_differ() -> None:
    transform, image = MultiCropTransform(_cfg()), _image()
    first = transform.sample(torch.Generator().manual_seed(3), *image.size)
    again = transform.sample(torch.Generator().manual_seed(3), *image.size)
    other = transform.sample(torch.Generator().manual_seed(4), *image.size)
    assert torch.equal(first, again) and not torch.equal(first, other)
    views, replayed, others = (transform.apply(image, p) for p in (first, again, other))
    assert all(torch.equal(views[k], replayed[k]) for k in ("global", "local"))
    assert not torch.equal(views["global"], others["global"])


def test_apply_is_deterministic_in_the_params() -> None:
    transform, image = MultiCropTransform(_cfg()), _image()
    for seed in range(5):
        params = transform.sample(torch.Generator().manual_seed(seed), *image.size)
        first, second = transform.apply(image, params), transform.apply(image, params.clone())
        assert torch.equal(first["global"], second["global"]) and torch.equal(first["local"], second["local"])


def test_sample_without_a_generator_draws_from_the_global_rng() -> None:
    transform = MultiCropTransform(_cfg())
    with torch.random.fork_rng(devices=[]):  # leave the global stream as other tests expect it
        torch.manual_seed(7)
        first = transform.sample(None, 24, 20)
        torch.manual_seed(7)
        assert torch.equal(first, transform.sample(None, 24, 20))


def test_crop_boxes_use_torchvisions_sampler() -> None:
    """Global crop 0 is drawn first, so with the same stream it is RandomResizedCrop.get_params' box."""
    from torchvision.transforms import RandomResizedCrop

    transform = MultiCropTransform(_cfg(augment=AugmentConfig()))
    for seed in range(10):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            expected = RandomResizedCrop.get_params(torch.zeros(3, 20, 24), [0.32, 1.0], [3 / 4, 4 / 3])
        assert transform.sample(torch.Generator().manual_seed(seed), 24, 20)[:4].tolist() == list(expected)


def test_params_of_another_length_are_refused() -> None:
    with pytest.raises(DataError, match=r"expected \(70,\) for \('g0.top'.*'l2.solarize'\).*rebuild the cache"):
        MultiCropTransform(_cfg()).apply(_image(), torch.zeros(14, dtype=torch.float64))


# --- the DINO ops ---------------------------------------------------------------------------------


def test_simple_draws_no_colour_ops_and_a_full_crop_is_the_plain_resize() -> None:
    transform, image = MultiCropTransform(_cfg(simple=True, local_crops=0)), _image()
    blocks = _blocks(transform, seed=0)
    identity = torch.tensor([*JITTER_IDENTITY, 0.0], dtype=torch.float64)  # factors, then order 0
    assert torch.equal(blocks[..., COLOUR], identity.expand_as(blocks[..., COLOUR]))
    assert not blocks[..., _column("gray") :].any()  # gray, blur, solarize never drawn
    params = blocks[0].clone()
    params[:, :6] = torch.tensor([0, 0, 20, 24, 0, 2], dtype=torch.float64)  # the whole image, no flip, bicubic
    expected = F.normalize(F.to_tensor(F.resize(image, [12, 12], F.InterpolationMode.BICUBIC)), MEAN, STD)
    assert torch.equal(transform.apply(image, params.flatten())["global"], expected.expand(2, -1, -1, -1))


def test_blur_and_solarize_follow_dinos_probabilities() -> None:
    blocks = _blocks(MultiCropTransform(_cfg(global_crops=3, local_crops=2)), seed=1, draws=200)
    blurred, solarized = blocks[..., _column("blur")] > 0, blocks[..., _column("solarize")] == 1  # (draws, crops)
    assert blurred[:, 0].all() and blocks[:, 0, _column("blur")].min() >= 0.1
    assert 0 < blurred[:, 1].sum() < 50 and 0 < blurred[:, 2].sum() < 50  # p=0.1 on the other global crops
    assert 60 < blurred[:, 3:].sum() / 2 < 140  # p=0.5 on local crops
    assert not solarized[:, [0, 2, 3, 4]].any() and 10 < solarized[:, 1].sum() < 80  # p=0.2 on global crop 1


def test_jitter_and_grayscale_are_drawn_with_their_probabilities() -> None:
    blocks = _blocks(MultiCropTransform(_cfg()), seed=2, draws=200).flatten(0, 1)  # (draws * crops, N)
    jittered = blocks[:, _column("brightness")] != 1.0
    assert 0.7 < jittered.double().mean() < 0.9 and (blocks[:, _column("hue")].abs() <= 0.1).all()
    assert 0.12 < blocks[:, _column("gray")].mean() < 0.28


def test_jitter_is_torchvisions_adjustments_in_the_stored_order() -> None:
    transform, image = MultiCropTransform(_cfg(global_crops=1, local_crops=0)), _image()
    factors = (1.3, 0.8, 1.1, 0.05)
    adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    results = []
    for order in (0, 23):
        params = torch.tensor([0, 0, 20, 24, 0, 1, *factors, order, 0, 0, 0], dtype=torch.float64)
        expected = F.resize(image, [12, 12], F.InterpolationMode.BILINEAR)
        for i in JITTER_ORDERS[order]:
            expected = adjust[i](expected, factors[i])
        results.append(transform.apply(image, params)["global"][0])
        assert torch.equal(results[-1], F.normalize(F.to_tensor(expected), MEAN, STD))
    assert not torch.equal(*results)


def test_blur_and_solarize_change_the_crop() -> None:
    transform, image = MultiCropTransform(_cfg(local_crops=0)), _image()
    params = transform.sample(torch.Generator().manual_seed(0), *image.size).view(-1, N)
    params[:, _column("blur") :] = 0.0
    plain = transform.apply(image, params.flatten())["global"]
    for column, value in (("blur", 1.5), ("solarize", 1.0)):
        changed = params.clone()
        changed[:, _column(column)] = value
        assert not torch.equal(transform.apply(image, changed.flatten())["global"], plain)


def test_grayscale_gives_equal_channels() -> None:
    cfg = _cfg().model_copy(update={"mean": (0.5,) * 3, "std": (0.25,) * 3})
    transform, image = MultiCropTransform(cfg), _image()
    params = transform.sample(torch.Generator().manual_seed(0), *image.size).view(-1, N)
    params[:, _column("gray")] = 1.0
    for crops in transform.apply(image, params.flatten()).values():
        assert torch.equal(crops[:, 0], crops[:, 1]) and torch.equal(crops[:, 1], crops[:, 2])
    params[:, _column("gray")] = 0.0
    colour = transform.apply(image, params.flatten())["global"]
    assert not torch.equal(colour[:, 0], colour[:, 1])


# --- repr: what the cache fingerprints ------------------------------------------------------------


def test_repr_is_stable_and_changes_with_every_setting() -> None:
    base = repr(MultiCropTransform(_cfg()))
    assert base == repr(MultiCropTransform(_cfg())) and " at 0x" not in base
    changes = [
        {"global_crops": 3}, {"global_size": 10}, {"global_scale": (0.4, 1.0)}, {"local_crops": 2},
        {"local_size": 6}, {"local_scale": (0.1, 0.3)}, {"use_local_crops": False}, {"simple": True},
    ]  # fmt: skip
    reprs = {repr(MultiCropTransform(_cfg(**change))) for change in changes}
    reprs |= {repr(MultiCropTransform(_cfg(AugmentConfig(ratio=(0.5, 2.0), interpolation="random"))))}
    reprs |= {repr(MultiCropTransform(_cfg(AugmentConfig(interpolation="bicubic"))))}
    reprs |= {repr(MultiCropTransform(_cfg().model_copy(update={"mean": (0.4, 0.4, 0.4)})))}
    assert base not in reprs and len(reprs) == len(changes) + 3


# --- wiring ---------------------------------------------------------------------------------------


def _folder(root: Path) -> ImageFolder:
    for i, size in enumerate([(24, 20), (17, 30), (16, 16)]):
        (root / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        _image(*size, seed=i).save(root / f"class{i % 2}" / f"{i}.png")
    return ImageFolder(str(root))


def test_image_transform_builds_multicrop_for_training_only() -> None:
    assert isinstance(image_transform(_cfg(), train=True), MultiCropTransform)
    evaluation = image_transform(_cfg(), train=False)
    assert not isinstance(evaluation, (MultiCropTransform, ViewTransform))
    assert evaluation(_image()).shape == (3, 8, 8)


def test_auto_augment_with_multicrop_is_refused() -> None:
    with pytest.raises(ConfigError, match="auto_augment.*multicrop.*replay"):
        image_transform(_cfg(AugmentConfig(auto_augment="rand-m9-mstd0.5")), train=True)


def test_imagefolder_wraps_multicrop_in_replayable_images(tmp_path: Path) -> None:
    _folder(tmp_path / "train")
    wrapped, raw = build_dataset(_cfg().model_copy(update={"root": str(tmp_path)}), "train")
    assert isinstance(raw, ReplayableImages) and isinstance(raw.transform, MultiCropTransform)
    assert wrapped.replayable and wrapped[0]["input"]["global"].shape == (2, 3, 12, 12)


def test_replayable_images_and_batch_dict_replay_multicrop_views(tmp_path: Path) -> None:
    images = _folder(tmp_path)
    raw = ReplayableImages(images, MultiCropTransform(_cfg()))
    assert raw.random is True and raw[1][0]["local"].shape == (3, 3, 5, 5)
    views, target, params = raw.sample_view(1, torch.Generator().manual_seed(0))
    assert target == images.targets[1] and torch.equal(raw.view(1, params)[0]["global"], views["global"])
    wrapped = BatchDict(raw, hidden={1})
    assert wrapped.replayable and wrapped.random is True
    item, params = wrapped.sample_view(0, torch.Generator().manual_seed(0))
    replayed = wrapped.view(0, params)
    assert set(item["input"]) == {"global", "local"} and (replayed["target"], replayed["index"]) == (0, 0)
    assert all(torch.equal(item["input"][k], replayed["input"][k]) for k in ("global", "local"))
    assert wrapped.view(1, params)["target"] == -1
