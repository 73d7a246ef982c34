"""Detection data: the ``{train,val}/{images,labels}`` layout checked, its labels read, its data yaml written.

Ultralytics skips a bad label file with a warning and trains on the rest; kdforge stops instead and names the
file and line, since a silently dropped class or a shifted column ruins a distillation run without a trace.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdforge.core.atomic import atomic_write
from kdforge.core.config.detection import DetectDataConfig
from kdforge.core.errors import ClassCountMismatchError, DataError

SPLITS = ("train", "val")


def image_suffixes() -> frozenset[str]:
    """The suffixes Ultralytics reads as images (its ``IMG_FORMATS``), so both count the same files."""
    from ultralytics.data.utils import IMG_FORMATS  # lazy: ultralytics is an optional extra

    return frozenset(f".{suffix.lower()}" for suffix in IMG_FORMATS)


@dataclass
class DetectionData:
    """A checked dataset: the data yaml Ultralytics reads, the classes, and image counts per split."""

    yaml_path: Path
    names: list[str]
    images: dict[str, int]

    @property
    def nc(self) -> int:
        return len(self.names)


def prepare_data(cfg: DetectDataConfig, run_dir: Path) -> DetectionData:
    """Check the dataset and write the data yaml Ultralytics reads to ``run_dir/data.yaml``.

    Also for an existing data yaml: kdforge resolves its relative paths against the yaml's folder, Ultralytics
    against the working directory or its ``datasets_dir``; writing absolute paths makes both read the same
    folders (and drops a ``download:`` script, which must never run).
    """
    if cfg.root is not None:
        root = Path(cfg.root).resolve()
        dirs = {split: layout_dirs(root, split) for split in SPLITS}
        names = class_names(cfg, root)
    else:
        root, names, dirs = read_data_yaml(Path(cfg.yaml), cfg.names)
    images = {split: len(check_split(*dirs[split], len(names), cfg.check_labels)) for split in SPLITS}
    content = {"path": str(root), **{split: str(dirs[split][0].resolve()) for split in SPLITS}}
    path = write_data_yaml(run_dir / "data.yaml", {**content, "nc": len(names), "names": names})
    return DetectionData(path, names, images)


def layout_dirs(root: Path, split: str) -> tuple[Path, Path]:
    """``root/split/images`` and ``root/split/labels``; a missing one is an error that shows the layout."""
    if not root.is_dir():
        raise DataError(f"detection data root {str(root)!r} does not exist (detect.data.root).")
    images, labels = root / split / "images", root / split / "labels"
    for folder in (images, labels):
        if not folder.is_dir():
            raise DataError(
                f"{str(folder)!r} is missing: a detection dataset holds train/images, train/labels, val/images and "
                "val/labels (YOLO txt labels: one 'class cx cy w h' line per object, coordinates in 0-1)."
            )
    return images, labels


def class_names(cfg: DetectDataConfig, root: Path) -> list[str]:
    """``detect.data.names``, else ``root/classes.txt``; without either the class count is unknown."""
    if cfg.names is not None:
        return list(cfg.names)
    listing = root / "classes.txt"
    if not listing.is_file():
        raise DataError(
            f"no class names for {str(root)!r}: set detect.data.names: [name0, name1, ...] or write one name per line "
            f"to {str(listing)!r}."
        )
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"{str(listing)!r} is empty: write one class name per line.")
    return names


def write_data_yaml(path: Path, content: dict[str, Any]) -> Path:
    """The Ultralytics data yaml (absolute paths), written atomically."""
    text = yaml.safe_dump({**content, "names": dict(enumerate(content["names"]))}, sort_keys=False)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_data_yaml(path: Path, names: list[str] | None) -> tuple[Path, list[str], dict[str, tuple[Path, Path]]]:
    """An existing Ultralytics data yaml: its base folder, classes, and each split's image and label folders."""
    if not path.is_file():
        raise DataError(f"data yaml {str(path)!r} does not exist (detect.data.yaml).")
    data = yaml.safe_load(path.read_text()) or {}
    missing = [key for key in ("train", "val", "names") if key not in data]
    if missing:
        raise DataError(f"data yaml {str(path)!r} lacks {missing}; it needs train, val (image folders) and names.")
    found = list(data["names"].values()) if isinstance(data["names"], dict) else list(data["names"])
    if "nc" in data and data["nc"] != len(found):
        raise ClassCountMismatchError(f"data yaml {str(path)!r} says nc: {data['nc']} but lists {len(found)} names.")
    if names is not None and names != found:
        raise ClassCountMismatchError(f"detect.data.names {names} differ from the names in {str(path)!r}: {found}.")
    base = Path(data.get("path") or path.parent)
    base = base if base.is_absolute() else (path.parent / base).resolve()
    dirs = {split: _yaml_split(base, data[split], path) for split in SPLITS}
    return base, found, dirs


def _yaml_split(base: Path, entry: Any, path: Path) -> tuple[Path, Path]:
    """(images, labels) of one yaml split: a folder of images; labels where Ultralytics looks (images -> labels)."""
    if not isinstance(entry, str):
        raise DataError(f"{str(path)!r}: kdforge reads splits given as one image folder, got {entry!r}.")
    images = Path(entry) if Path(entry).is_absolute() else base / entry
    if not images.is_dir():
        raise DataError(f"{str(path)!r}: image folder {str(images)!r} does not exist.")
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    labels = Path(sb.join(str(images / "x").rsplit(sa, 1))).parent
    return images, labels


def check_split(images: Path, labels: Path, nc: int, check_labels: bool) -> list[Path]:
    """The split's images; with `check_labels`, every label file read (errors name the file and line)."""
    suffixes = image_suffixes()
    files = sorted(p for p in images.rglob("*") if p.suffix.lower() in suffixes)
    if not files:
        raise DataError(f"{str(images)!r} holds no images ({', '.join(sorted(suffixes))}).")
    if check_labels:
        for image in files:
            label = labels / image.relative_to(images).with_suffix(".txt")
            if label.is_file():
                check_label_file(label, nc)
    return files


def check_label_file(path: Path, nc: int) -> None:
    """Each line ``class cx cy w h`` (or a polygon ``class x1 y1 x2 y2 ...``), class < nc, coordinates in 0-1."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if fields:
            problem = _line_problem(fields, nc)
            if problem:
                raise DataError(f"{path}:{number}: {problem} (line: {line.strip()!r}).")


def _line_problem(fields: list[str], nc: int) -> str | None:
    """What is wrong with one label line, or None."""
    if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
        return f"expected 'class cx cy w h' (5 values) or a polygon 'class x1 y1 x2 y2 ...', got {len(fields)} values"
    try:
        cls = float(fields[0])
        coords = [float(v) for v in fields[1:]]
    except ValueError:
        return "every value must be a number"
    if not cls.is_integer() or cls < 0:
        return f"class {fields[0]} is not a class index (an integer >= 0)"
    if cls >= nc:
        return f"class {int(cls)} is out of range: the data has {nc} classes (0-{nc - 1}); check the names or the label"
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in coords):
        return "coordinates must be normalised to 0-1 (divide pixel values by the image width and height)"
    if len(fields) == 5 and (coords[2] <= 0 or coords[3] <= 0):
        return "box width and height must be > 0"
    return None
