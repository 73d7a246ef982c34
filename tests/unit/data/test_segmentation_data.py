"""SegmentationFolder: samples, the joint transform keeping image and mask aligned, and its errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from kdforge.core.config import DataConfig
from kdforge.core.errors import DataError
from kdforge.data.datasets import build_dataset
from kdforge.data.segmentation import SegmentationFolder
from kdforge.data.shapes import write_segmentation_shapes

IGNORE = 255
PALETTE = {0: (255, 0, 0), 1: (0, 255, 0), 2: (0, 0, 255), IGNORE: (255, 255, 255)}  # mask id -> pixel colour


def _cfg(root: Path, **overrides: Any) -> DataConfig:
    """Images as [0, 1] tensors (mean 0, std 1), so pixel colours can be compared with PALETTE."""
    base = {"dataset": "segfolder", "root": str(root), "image_size": 16, "mean": (0.0,), "std": (1.0,)}
    return DataConfig(**(base | overrides))


def _write(split_dir: Path, stem: str, image: np.ndarray, mask: np.ndarray | Image.Image) -> None:
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    (split_dir / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(split_dir / "images" / f"{stem}.png")
    (mask if isinstance(mask, Image.Image) else Image.fromarray(mask)).save(split_dir / "masks" / f"{stem}.png")


def _blocks(width: int = 48, height: int = 36, block: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A mask of random blocks of 0, 1, 2 and IGNORE (H, W) and the image that paints each id its colour (H, W, 3)."""
    grid = np.random.default_rng(seed).choice(list(PALETTE), (height // block, width // block))
    mask = grid.repeat(block, 0).repeat(block, 1).astype(np.uint8)
    lut = np.zeros((256, 3), np.uint8)
    for value, colour in PALETTE.items():
        lut[value] = colour
    return lut[mask], mask


def _three_classes(root: Path) -> Path:
    """Classes red, green, blue (+ IGNORE); train/ and val/ hold the same one blocks image, ``a``."""
    root.mkdir(parents=True)
    (root / "classes.txt").write_text("red\ngreen\nblue\n")
    for split in ("train", "val"):
        image, mask = _blocks()
        _write(root / split, "a", image, mask)
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_segmentation_shapes(tmp_path_factory.mktemp("shapes"), image_size=40, train=8, val=4)


# --- samples -------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "val"])
def test_samples_are_normalized_images_and_int64_masks(shapes: Path, split: str) -> None:
    data = SegmentationFolder(_cfg(shapes, image_size=24, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2)), split)
    assert data.classes == ["background", "circle", "square", "triangle"]
    assert len(data) == {"train": 8, "val": 4}[split]
    assert data.samples == sorted(data.samples)
    assert Path(data.samples[0][0]).name == Path(data.samples[0][1]).name == "0000.png"
    torch.manual_seed(0)  # train crops draw from the global RNG: a fixed draw, whatever ran before
    for i in range(len(data)):
        image, mask = data[i]
        assert image.shape == (3, 24, 24) and image.dtype == torch.float32
        assert mask.shape == (24, 24) and mask.dtype == torch.int64
        assert set(mask.unique().tolist()) <= {0, 1, 2, 3}
        assert image.min() < 0 < image.max(), "not normalized with the config's mean and std"


def test_one_input_channel_reads_images_as_grey(shapes: Path) -> None:
    image, _ = SegmentationFolder(_cfg(shapes, in_chans=1), "val")[0]
    assert image.shape == (1, 16, 16)


def test_val_reads_are_deterministic(shapes: Path) -> None:
    val = SegmentationFolder(_cfg(shapes), "val")
    torch.manual_seed(0)
    first = val[1]
    torch.manual_seed(1)
    again = val[1]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_train_without_augmentation_reads_as_val(tmp_path: Path) -> None:
    root = _three_classes(tmp_path / "blocks")
    fixed = SegmentationFolder(_cfg(root, augment={"scale": (1.0, 1.0), "hflip": 0.0}), "train")[0]
    val = SegmentationFolder(_cfg(root), "val")[0]
    assert torch.equal(fixed[0], val[0]) and torch.equal(fixed[1], val[1])


def test_train_views_follow_torchs_global_seed(shapes: Path) -> None:
    data = SegmentationFolder(_cfg(shapes, augment={"scale": (0.2, 1.0), "hflip": 0.5}), "train")
    views = []
    for seed in (0, 0, 1, 2, 3):
        torch.manual_seed(seed)
        views.append(data[0][1])
    assert torch.equal(views[0], views[1])
    assert any(not torch.equal(views[0], view) for view in views[2:])


def test_registered_as_segfolder_with_the_mask_as_target(shapes: Path) -> None:
    wrapped, raw = build_dataset(_cfg(shapes), "val")
    assert isinstance(raw, SegmentationFolder)
    item = wrapped[3]
    assert item["index"] == 3 and item["target"].shape == (16, 16) and item["input"].shape == (3, 16, 16)


# --- joint transform -----------------------------------------------------------------------------


def _colour_ids(image: torch.Tensor) -> torch.Tensor:
    """The PALETTE id whose colour is nearest each pixel of a (3, S, S) [0, 1] image: (S, S)."""
    ids = torch.tensor(list(PALETTE))
    colours = torch.tensor(list(PALETTE.values()), dtype=torch.float32) / 255  # (K, 3)
    distance = ((image.permute(1, 2, 0)[..., None, :] - colours) ** 2).sum(-1)  # (S, S, K)
    return ids[distance.argmin(-1)]


def _interior(mask: torch.Tensor) -> torch.Tensor:
    """Pixels whose 3x3 neighbourhood has one mask value (bilinear blends only across block edges)."""
    m = mask.float()[None, None]
    return (F.max_pool2d(m, 3, 1, 1) == -F.max_pool2d(-m, 3, 1, 1))[0, 0]


def test_random_crop_flip_and_resize_keep_image_and_mask_aligned(tmp_path: Path) -> None:
    root = _three_classes(tmp_path / "blocks")
    data = SegmentationFolder(_cfg(root, image_size=24, augment={"scale": (0.2, 1.0), "hflip": 0.5}), "train")
    seen = set()
    for seed in range(30):
        torch.manual_seed(seed)
        image, mask = data[0]
        interior = _interior(mask)
        assert interior.float().mean() > 0.3
        assert torch.equal(_colour_ids(image)[interior], mask[interior]), f"misaligned view for seed {seed}"
        values = set(mask.unique().tolist())
        assert values <= set(PALETTE), f"interpolated mask values {values - set(PALETTE)}"
        seen |= values
    assert seen == set(PALETTE)


def test_flip_mirrors_image_and_mask_together(tmp_path: Path) -> None:
    root = _three_classes(tmp_path / "blocks")
    flipped = SegmentationFolder(_cfg(root, augment={"scale": (1.0, 1.0), "hflip": 1.0}), "train")[0]
    plain = SegmentationFolder(_cfg(root), "val")[0]
    assert torch.equal(flipped[1], plain[1].flip(-1))
    assert torch.allclose(flipped[0], plain[0].flip(-1), atol=1e-6)


def test_val_mask_is_resized_with_nearest_neighbour(tmp_path: Path) -> None:
    root = _three_classes(tmp_path / "blocks")
    _, mask = SegmentationFolder(_cfg(root, image_size=8), "val")[0]
    _, stored = _blocks()  # (36, 48): each output pixel takes the stored pixel under its centre
    rows, cols = ((np.arange(8) + 0.5) * 36 / 8).astype(int), ((np.arange(8) + 0.5) * 48 / 8).astype(int)
    assert torch.equal(mask, torch.from_numpy(stored[np.ix_(rows, cols)].astype(np.int64)))


# --- class names ---------------------------------------------------------------------------------


def test_class_names_come_from_config_then_classes_txt_then_num_classes(tmp_path: Path) -> None:
    root = _three_classes(tmp_path / "blocks")
    assert SegmentationFolder(_cfg(root, class_names=["a", "b", "c"]), "val").classes == ["a", "b", "c"]
    assert SegmentationFolder(_cfg(root, num_classes=5), "val").classes == ["red", "green", "blue"]
    (root / "classes.txt").unlink()
    assert SegmentationFolder(_cfg(root, num_classes=3), "val").classes == ["0", "1", "2"]


def test_no_class_names_says_how_to_give_them(tmp_path: Path) -> None:
    root = _three_classes(tmp_path / "blocks")
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match=r"data\.class_names.*classes\.txt.*data\.num_classes"):
        SegmentationFolder(_cfg(root), "val")


# --- errors --------------------------------------------------------------------------------------


def test_missing_root_or_folders_name_the_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.root is required"):
        SegmentationFolder(DataConfig(dataset="segfolder", class_names=["a"]), "val")
    root = _three_classes(tmp_path / "blocks")
    with pytest.raises(DataError, match=r"test/images.*does not exist.*<split>/masks/<stem>\.png"):
        SegmentationFolder(_cfg(root), "test")
    (root / "val" / "masks" / "a.png").unlink()
    (root / "val" / "masks").rmdir()
    with pytest.raises(DataError, match=r"val/masks' does not exist"):
        SegmentationFolder(_cfg(root), "val")


def test_images_without_masks_are_listed_with_their_count(tmp_path: Path) -> None:
    root = _three_classes(tmp_path / "blocks")
    image, mask = _blocks()
    for i in range(7):
        _write(root / "val", f"extra{i}", image, mask)
        (root / "val" / "masks" / f"extra{i}.png").unlink()
    with pytest.raises(DataError, match=r"7 images in .*val/images have no mask \(stems: extra0, .*extra4, \.\.\.\)"):
        SegmentationFolder(_cfg(root), "val")


def test_masks_without_images_are_refused(tmp_path: Path) -> None:
    root = _three_classes(tmp_path / "blocks")
    (root / "val" / "images" / "a.png").unlink()
    with pytest.raises(DataError, match=r"1 masks in .*val/masks have no image \(stems: a\)"):
        SegmentationFolder(_cfg(root), "val")


def test_class_id_out_of_range_names_the_file_values_and_class_count(tmp_path: Path) -> None:
    root = _three_classes(tmp_path / "blocks")
    image, mask = _blocks()
    mask[0, :2] = (7, 3)
    _write(root / "val", "b", image, mask)
    data = SegmentationFolder(_cfg(root), "val")
    data[0]  # "a" holds 0..2 and ignore_index only
    with pytest.raises(DataError, match=r"mask .*val/masks/b\.png holds class ids \[3, 7\], outside the 3 classes"):
        data[1]
    relabelled = SegmentationFolder(_cfg(root, class_names=list("abcdefgh")), "val")
    assert set(relabelled[1][1].unique().tolist()) <= set(range(8)) | {IGNORE}


def test_ignore_index_other_than_255_is_honoured(tmp_path: Path) -> None:
    root = _three_classes(tmp_path / "blocks")
    with pytest.raises(DataError, match=r"class ids \[255\].*ignore_index \(9\)"):
        SegmentationFolder(_cfg(root, ignore_index=9), "val")[0]


def test_rgb_mask_is_refused_naming_its_mode(tmp_path: Path) -> None:
    root = _three_classes(tmp_path / "blocks")
    image, mask = _blocks()
    _write(root / "val", "a", image, Image.fromarray(mask).convert("RGB"))
    with pytest.raises(DataError, match=r"mask .*a\.png has mode 'RGB' \(3 channels\).*single-channel"):
        SegmentationFolder(_cfg(root), "val")[0]


def test_palette_mask_reads_its_indices(tmp_path: Path) -> None:
    root = _three_classes(tmp_path / "blocks")
    expected = SegmentationFolder(_cfg(root), "val")[0][1]
    image, mask = _blocks()
    palette = Image.new("P", (mask.shape[1], mask.shape[0]))
    palette.putpalette([v for value in range(256) for v in PALETTE.get(value, (0, 0, 0))])
    palette.putdata(mask.reshape(-1).tolist())
    _write(root / "val", "a", image, palette)
    assert torch.equal(SegmentationFolder(_cfg(root), "val")[0][1], expected)


def test_mask_of_another_size_names_both_sizes(tmp_path: Path) -> None:
    root = _three_classes(tmp_path / "blocks")
    image, mask = _blocks()
    _write(root / "val", "a", image, mask[:30, :40])
    with pytest.raises(DataError, match=r"mask .*a\.png is 40x30 but its image .*a\.png is 48x36"):
        SegmentationFolder(_cfg(root), "val")[0]
