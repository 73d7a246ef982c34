"""Dataset sources: class folders, segmentation folders, the bundled digits, or any ``pkg.mod:factory``.

Every dataset is wrapped so that a batch is a dict ``{"input", "target", "index"}``; ``target`` is -1
for samples without a label (e.g. an unlabelled transfer set), which get the distillation terms only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from kdforge.core.config import DataConfig
from kdforge.core.errors import DataError
from kdforge.core.registry import Registry, import_object
from kdforge.data.inputs import is_inputs

UNLABELLED = -1
DatasetFactory = Callable[[DataConfig, str, bool], Dataset]  # (data config, split, whether to augment)
DATASETS: Registry[DatasetFactory] = Registry("dataset")


@DATASETS.register("digits")
def _digits(cfg: DataConfig, split: str, augment: bool) -> Dataset:
    from kdforge.data.digits import DigitsDataset

    return DigitsDataset(split, image_size=cfg.image_size, in_chans=cfg.in_chans, seed=cfg.split_seed, **cfg.kwargs)


@DATASETS.register("imagefolder")
def _imagefolder(cfg: DataConfig, split: str, augment: bool) -> Dataset:
    from torchvision.datasets import ImageFolder

    from kdforge.data.multicrop import MultiCropTransform
    from kdforge.data.transforms import image_transform
    from kdforge.data.views import ReplayableImages, ViewTransform

    if cfg.root is None:
        raise DataError("data.root is required for dataset 'imagefolder': a folder with train/ and val/ inside.")
    folder = Path(cfg.root) / split
    if not folder.is_dir():
        raise DataError(
            f"dataset folder {str(folder)!r} does not exist. The imagefolder layout is "
            f"{cfg.root}/train/<class>/<image> and {cfg.root}/val/<class>/<image>."
        )
    transform = image_transform(cfg, train=augment)
    try:
        if isinstance(transform, (ViewTransform, MultiCropTransform)):
            return ReplayableImages(ImageFolder(str(folder), **cfg.kwargs), transform)
        return ImageFolder(str(folder), transform=transform, **cfg.kwargs)
    except FileNotFoundError as exc:
        raise DataError(f"dataset folder {str(folder)!r}: {exc}") from exc


@DATASETS.register("segfolder")
def _segfolder(cfg: DataConfig, split: str, augment: bool) -> Dataset:
    from kdforge.data.segmentation import SegmentationFolder

    return SegmentationFolder(cfg, split, augment)


@DATASETS.register("import")
def _imported(cfg: DataConfig, split: str, augment: bool) -> Dataset:
    """``factory(split=..., **data.kwargs)``, plus ``augment=`` (bool) when the factory takes it; otherwise it
    decides its own augmentation for each split."""
    if not cfg.factory:
        raise DataError("data.factory ('package.module:function') is required for dataset 'import'.")
    factory = import_object(cfg.factory, "dataset factory")
    # A factory taking ``augment`` is told which transform to use (the k-NN memory reads train unaugmented).
    extra = {"augment": augment} if "augment" in inspect.signature(factory).parameters else {}
    try:
        dataset = factory(split=split, **cfg.kwargs, **extra)
    except TypeError as exc:
        raise DataError(
            f"dataset factory {cfg.factory!r} failed when called as factory(split={split!r}, **data.kwargs) "
            f"with kwargs {cfg.kwargs}: {exc}. Wrap your dataset in a function taking split= and those kwargs."
        ) from exc
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise DataError(f"dataset factory {cfg.factory!r} returned {type(dataset).__name__}, not a map-style Dataset.")
    return dataset


class BatchDict(Dataset):
    """Wraps a dataset so each sample is ``{"input", "target", "index"}``, with selected labels hidden."""

    def __init__(self, dataset: Dataset, hidden: set[int] | None = None) -> None:
        self.dataset = dataset
        self.hidden = hidden or set()

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def targets(self) -> list[int]:
        """Every sample's label as training sees it (-1 where hidden)."""
        return [UNLABELLED if i in self.hidden else t for i, t in enumerate(dataset_targets(self.dataset))]

    @property
    def replayable(self) -> bool:
        """Whether a view can be replayed from its parameters (the dataset has ``view`` and ``sample_view``)."""
        return hasattr(self.dataset, "view") and hasattr(self.dataset, "sample_view")

    @property
    def random(self) -> bool | None:
        """Whether two reads of a sample can differ; None when the dataset does not say (not replayable)."""
        return getattr(self.dataset, "random", None) if self.replayable else None

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._item(index, self.dataset[index])

    def view(self, index: int, params: torch.Tensor) -> dict[str, Any]:
        """The sample as ``__getitem__`` gives it, for the view these augmentation parameters describe."""
        return self._item(index, self._replayable().view(index, params))

    def sample_view(self, index: int, generator: torch.Generator) -> tuple[dict[str, Any], torch.Tensor]:
        """A new view drawn from `generator`, with its augmentation parameters."""
        image, target, params = self._replayable().sample_view(index, generator)
        return self._item(index, (image, target)), params

    def _replayable(self) -> Any:
        if not self.replayable:
            raise DataError(
                f"dataset {type(self.dataset).__name__} cannot replay augmented views (it has no view/sample_view). "
                "Use dataset 'imagefolder' without augment.auto_augment, or wrap (image, target) samples in "
                "kdforge.data.views.ReplayableImages."
            )
        return self.dataset

    def _item(self, index: int, sample: Any) -> dict[str, Any]:
        """The dict a raw sample becomes: ``{"input", "target", "index"}`` (plus a dict sample's own keys)."""
        if isinstance(sample, dict):
            item = {"target": UNLABELLED, **sample}
        elif isinstance(sample, (tuple, list)) and len(sample) >= 2:
            item = {"input": sample[0], "target": sample[1]}
        else:
            raise DataError(f"dataset samples must be (input, target) or a dict, got {type(sample).__name__}.")
        if not is_inputs(item.get("input")):
            raise DataError(
                f"dataset sample {index} has input of type {type(item.get('input')).__name__}, not a tensor or a "
                "dict of tensors: give the dataset a transform that ends in a tensor (e.g. torchvision ToTensor + "
                "Normalize), or return {'input': {'name': tensor, ...}, 'target': ...} for several inputs."
            )
        if index in self.hidden:
            item["target"] = UNLABELLED
        item["index"] = index
        return item


def dataset_targets(dataset: Dataset) -> list[int]:
    """Every sample's label, read from ``targets`` when the dataset has it (no image decoding)."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = [_target(dataset[i]) for i in range(len(dataset))]
    return [int(t) for t in targets]


def _target(sample: Any) -> Any:
    return sample["target"] if isinstance(sample, dict) else sample[1]


def labelled_subset(targets: Sequence[int], fraction: float, per_class: int | None, seed: int) -> set[int]:
    """Indices that keep their label: ``per_class`` per class, else a ``fraction`` of each class."""
    generator = torch.Generator().manual_seed(seed)
    keep: set[int] = set()
    for cls in sorted(set(targets)):
        members = [i for i, t in enumerate(targets) if t == cls]
        count = per_class if per_class is not None else max(1, round(fraction * len(members)))
        order = torch.randperm(len(members), generator=generator)[:count].tolist()
        keep.update(members[i] for i in order)
    return keep


def build_dataset(cfg: DataConfig, split: str, augment: bool | None = None) -> tuple[BatchDict, Dataset]:
    """The wrapped dataset and the raw one (for class names); the train split may hide labels. `augment`
    (default: for the train split) picks the training or the evaluation transform."""
    raw = DATASETS.get(cfg.dataset)(cfg, split, split == "train" if augment is None else augment)
    if len(raw) == 0:
        raise DataError(f"the {split} split of dataset {cfg.dataset!r} is empty; check data.root / the factory.")
    hidden: set[int] = set()
    if split == "train" and (cfg.labelled_fraction < 1.0 or cfg.labelled_per_class is not None):
        targets = dataset_targets(raw)
        keep = labelled_subset(targets, cfg.labelled_fraction, cfg.labelled_per_class, cfg.split_seed)
        hidden = set(range(len(targets))) - keep
    return BatchDict(raw, hidden), raw


def class_names(dataset: Dataset, cfg: DataConfig) -> list[str]:
    """The dataset's class names (its ``classes``), else ``data.class_names``, else ``0..N-1`` from
    ``data.num_classes``."""
    names = getattr(dataset, "classes", None)
    if names is None:
        names = cfg.class_names
    if names is not None:
        return [str(n) for n in names]
    if cfg.num_classes is None:
        raise DataError("the dataset has no 'classes' attribute; set data.class_names or data.num_classes.")
    return [str(i) for i in range(cfg.num_classes)]
