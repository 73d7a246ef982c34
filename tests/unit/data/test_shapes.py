"""The generated shapes set and ``kdforge data``: seeded files, valid masks, every class present."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdforge.app.cli import main
from kdforge.data.shapes import WRITERS, write_segmentation_shapes


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _masks(root: Path, split: str) -> list[np.ndarray]:
    return [np.array(Image.open(p)) for p in sorted((root / split / "masks").glob("*.png"))]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_segmentation_shapes(tmp_path_factory.mktemp("shapes"), image_size=32, train=12, val=4, seed=3)


def test_the_same_seed_writes_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    runs = [write_segmentation_shapes(tmp_path / name, 32, 6, 2, seed) for name, seed in (("a", 0), ("b", 0), ("c", 1))]
    first, again, other = (_files(run) for run in runs)
    assert len(first) == 6 * 2 + 2 * 2 + 1
    assert first == again
    assert {k for k in first if first[k] != other.get(k)} - {"classes.txt"}, "seed 1 wrote the same images"


def test_val_images_do_not_depend_on_the_train_count(tmp_path: Path) -> None:
    small = write_segmentation_shapes(tmp_path / "small", 32, train=2, val=3)
    large = write_segmentation_shapes(tmp_path / "large", 32, train=5, val=3)
    assert _files(small / "val") == _files(large / "val")


def test_layout_modes_and_sizes(shapes: Path) -> None:
    for split, count in (("train", 12), ("val", 4)):
        images = sorted((shapes / split / "images").glob("*.png"))
        masks = sorted((shapes / split / "masks").glob("*.png"))
        assert [p.name for p in images] == [p.name for p in masks] == [f"{i:04d}.png" for i in range(count)]
        for image_path, mask_path in zip(images, masks, strict=True):
            image, mask = Image.open(image_path), Image.open(mask_path)
            assert (image.mode, mask.mode) == ("RGB", "L")
            assert image.size == mask.size == (32, 32)
    assert (shapes / "classes.txt").read_text().splitlines() == ["background", "circle", "square", "triangle"]


def test_masks_hold_only_class_ids_and_every_class_appears_in_train(shapes: Path) -> None:
    masks = _masks(shapes, "train")
    assert set(np.unique(np.stack(masks)).tolist()) == {0, 1, 2, 3}
    assert all(set(np.unique(m).tolist()) <= {0, 1, 2, 3} for m in _masks(shapes, "val"))
    assert all(len(np.unique(m)) >= 2 for m in masks), "an image without any shape"


def test_shapes_differ_from_the_background_in_the_image(shapes: Path) -> None:
    image = np.array(Image.open(shapes / "train" / "images" / "0000.png"), dtype=np.float64)
    mask = _masks(shapes, "train")[0]
    inside, outside = image[mask > 0].mean(0), image[mask == 0].mean(0)
    assert np.abs(inside - outside).sum() > 30


def test_eighty_images_take_well_under_a_second(tmp_path: Path) -> None:
    write_segmentation_shapes(tmp_path / "warm", train=1, val=0)  # PIL's PNG plugin loads on first use
    start = time.perf_counter()
    write_segmentation_shapes(tmp_path / "set", image_size=64, train=64, val=16)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("task", sorted(WRITERS))
def test_cli_writes_the_set_for_every_task(tmp_path: Path, task: str, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "set"
    args = ["data", "shapes", str(out), "--task", task, "--image-size", "24", "--train", "3", "--val", "2"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert len(list((out / "train" / "images").iterdir())) == 3
    targets = {"segment": "masks", "detect": "labels"}[task]
    assert len(list((out / "val" / targets).iterdir())) == 2
    assert Image.open(out / "val" / "images" / "0000.png").size == (24, 24)


def test_cli_shapes_needs_a_task(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["data", "shapes", str(tmp_path / "set")])
    assert "--task" in capsys.readouterr().err


def test_cli_digits_still_writes_class_folders(tmp_path: Path) -> None:
    assert main(["data", "digits", str(tmp_path / "digits"), "--image-size", "8"]) == 0
    assert sorted(p.name for p in (tmp_path / "digits" / "train").iterdir()) == [str(i) for i in range(10)]
    assert Image.open(next((tmp_path / "digits" / "val" / "3").iterdir())).size == (8, 8)
