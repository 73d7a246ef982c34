"""Detection data: layout and label checks that name the file and line, the data yaml, the generated shapes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from kdforge.app.detection.data import check_label_file, prepare_data
from kdforge.core.config.detection import DetectDataConfig
from kdforge.core.errors import ClassCountMismatchError, DataError
from kdforge.data.shapes import DETECTION_CLASSES, write_detection_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_detection_shapes(tmp_path_factory.mktemp("det"), image_size=64, train=12, val=4, seed=1)


def _labels(root: Path, split: str) -> list[np.ndarray]:
    return [np.loadtxt(p, ndmin=2) for p in sorted((root / split / "labels").glob("*.txt"))]


def test_shapes_writes_valid_yolo_labels_with_every_class(shapes: Path) -> None:
    assert (shapes / "classes.txt").read_text().split() == list(DETECTION_CLASSES)
    rows = np.concatenate(_labels(shapes, "train"))
    assert set(rows[:, 0].astype(int).tolist()) == {0, 1, 2}
    assert ((rows[:, 1:] > 0) & (rows[:, 1:] <= 1)).all()
    for path in (shapes / "train" / "labels").glob("*.txt"):
        check_label_file(path, nc=3)
    sizes = rows[:, 3] * 64
    assert sizes.min() < 16 < 24 < sizes.max(), "small and large shapes"


def test_each_box_holds_its_shape(shapes: Path) -> None:
    image = np.asarray(Image.open(shapes / "train" / "images" / "0000.png"), dtype=np.float64)
    for _, cx, cy, w, h in _labels(shapes, "train")[0]:
        x0, y0, x1, y1 = (int(round(v * 64)) for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
        centre = image[int(cy * 64), int(cx * 64)]
        corner = image[min(y0, 63), min(x0, 63)]
        assert x1 > x0 and y1 > y0
        assert np.abs(centre - corner).sum() > 0


def test_the_same_seed_writes_the_same_set(tmp_path: Path) -> None:
    a = write_detection_shapes(tmp_path / "a", 32, 4, 2, seed=5)
    b = write_detection_shapes(tmp_path / "b", 32, 4, 2, seed=5)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_prepare_data_writes_an_ultralytics_yaml(shapes: Path, tmp_path: Path) -> None:
    data = prepare_data(DetectDataConfig(root=str(shapes)), tmp_path)
    content = yaml.safe_load(data.yaml_path.read_text())
    assert content["nc"] == 3 and content["names"] == {0: "circle", 1: "square", 2: "triangle"}
    assert Path(content["train"]).is_absolute() and Path(content["train"]) == shapes.resolve() / "train" / "images"
    assert data.images == {"train": 12, "val": 4}
    again = prepare_data(DetectDataConfig(yaml=str(data.yaml_path)), tmp_path / "other")
    assert again.names == data.names and again.images == data.images


def test_an_existing_data_yaml_is_written_resolved_into_the_run(shapes: Path, tmp_path: Path) -> None:
    # a relative `path:` means the yaml's folder to kdforge, but the working directory to Ultralytics
    source = tmp_path / "sets" / "shapes.yaml"
    source.parent.mkdir()
    relative = os.path.relpath(shapes, source.parent)
    content = {"path": relative, "train": "train/images", "val": "val/images", "names": ["c", "s", "t"]}
    source.write_text(yaml.safe_dump({**content, "download": "import os; os.system('echo no')"}))
    data = prepare_data(DetectDataConfig(yaml=str(source)), tmp_path / "run")
    assert data.yaml_path == tmp_path / "run" / "data.yaml"
    written = yaml.safe_load(data.yaml_path.read_text())
    assert written["train"] == str(shapes.resolve() / "train" / "images") and Path(written["val"]).is_absolute()
    assert written["nc"] == 3 and written["names"] == {0: "c", 1: "s", 2: "t"} and "download" not in written


def test_ultralytics_dataset_errors_become_data_errors(tmp_path: Path) -> None:
    pytest.importorskip("ultralytics")
    from kdforge.app.detection.trainer import KDDetectionTrainer
    from kdforge.core.config.detection import DetectConfig

    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({"train": str(tmp_path / "nowhere"), "val": str(tmp_path / "nowhere")}))
    overrides = {"model": "yolov8n.yaml", "data": str(broken), "project": str(tmp_path), "name": "y", "device": "cpu"}
    with pytest.raises(DataError, match="could not read the dataset"):
        KDDetectionTrainer(DetectConfig(data={"yaml": str(broken)}), None, overrides)


def _copy(shapes: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(shapes, tmp_path / "copy"))


def test_a_missing_folder_is_named(shapes: Path, tmp_path: Path) -> None:
    root = _copy(shapes, tmp_path)
    (root / "val" / "labels").rename(root / "val" / "targets")
    with pytest.raises(DataError, match=r"val/labels' is missing.*train/images, train/labels"):
        prepare_data(DetectDataConfig(root=str(root)), tmp_path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("3 0.5 0.5 0.1 0.1", r"class 3 is out of range: the data has 3 classes"),
        ("1 0.5 0.5 0.1", r"expected 'class cx cy w h' \(5 values\)"),
        ("a 0.5 0.5 0.1 0.1", r"every value must be a number"),
        ("1.5 0.5 0.5 0.1 0.1", r"class 1.5 is not a class index"),
        ("0 0.5 0.5 1.7 0.1", r"coordinates must be normalised to 0-1"),
        ("0 0.5 0.5 0.0 0.1", r"box width and height must be > 0"),
    ],
)
def test_a_bad_label_line_names_the_file_and_line(shapes: Path, tmp_path: Path, line: str, message: str) -> None:
    root = _copy(shapes, tmp_path)
    label = root / "train" / "labels" / "0002.txt"
    label.write_text(label.read_text() + line + "\n")
    number = len(label.read_text().splitlines())
    with pytest.raises(DataError, match=rf"0002\.txt:{number}: {message}"):
        prepare_data(DetectDataConfig(root=str(root)), tmp_path)


def test_names_decide_the_class_count(shapes: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="class 2 is out of range: the data has 2 classes"):
        prepare_data(DetectDataConfig(root=str(shapes), names=["circle", "square"]), tmp_path)
    data = prepare_data(DetectDataConfig(root=str(shapes)), tmp_path)
    with pytest.raises(ClassCountMismatchError, match="differ from the names"):
        prepare_data(DetectDataConfig(yaml=str(data.yaml_path), names=["a", "b", "c"]), tmp_path)


def test_without_names_or_classes_txt_the_error_says_how_to_fix(shapes: Path, tmp_path: Path) -> None:
    root = _copy(shapes, tmp_path)
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match="set detect.data.names"):
        prepare_data(DetectDataConfig(root=str(root)), tmp_path)
