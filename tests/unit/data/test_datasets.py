"""Dataset sources and the batch wrapper: labelled subsets, the {input, target, index} contract, errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from kdforge.core.config import DataConfig
from kdforge.core.errors import DataError
from kdforge.data.datasets import UNLABELLED, BatchDict, build_dataset, dataset_targets, labelled_subset

# Class sizes 10, 6 and 4, interleaved.
TARGETS = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 0, 1, 0, 0, 0, 0]


class _Pairs(Dataset):
    """(input, target) pairs; no ``targets`` attribute, so labels come from the samples."""

    def __init__(self, targets: list[int]) -> None:
        self.labels = targets

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.full((1, 2, 2), float(index)), self.labels[index]


def _per_class(indices: set[int]) -> Counter:
    return Counter(TARGETS[i] for i in indices)


# --- labelled_subset ------------------------------------------------------------------------------


def test_per_class_keeps_that_many_of_each_class() -> None:
    keep = labelled_subset(TARGETS, fraction=1.0, per_class=3, seed=0)
    assert _per_class(keep) == {0: 3, 1: 3, 2: 3}


def test_per_class_above_the_class_size_keeps_the_whole_class() -> None:
    keep = labelled_subset(TARGETS, fraction=1.0, per_class=5, seed=0)
    assert _per_class(keep) == {0: 5, 1: 5, 2: 4}


def test_fraction_is_taken_per_class_and_keeps_at_least_one() -> None:
    assert _per_class(labelled_subset(TARGETS, fraction=0.5, per_class=None, seed=0)) == {0: 5, 1: 3, 2: 2}
    assert _per_class(labelled_subset(TARGETS, fraction=0.01, per_class=None, seed=0)) == {0: 1, 1: 1, 2: 1}


def test_subset_is_fixed_by_the_seed() -> None:
    picks = [labelled_subset(TARGETS, 1.0, 2, seed) for seed in (0, 0, 1, 2, 3)]
    assert picks[0] == picks[1]
    assert any(p != picks[0] for p in picks[2:])


# --- BatchDict ------------------------------------------------------------------------------------


def test_tuple_samples_become_dicts_with_their_index() -> None:
    item = BatchDict(_Pairs([4, 7, 1]))[1]
    assert set(item) == {"input", "target", "index"}
    assert torch.equal(item["input"], torch.full((1, 2, 2), 1.0))
    assert (item["target"], item["index"]) == (7, 1)


def test_dict_samples_keep_their_keys() -> None:
    data = [{"input": torch.zeros(2), "target": 3, "weight": 0.5}]
    item = BatchDict(data)[0]
    assert item == {"input": data[0]["input"], "target": 3, "weight": 0.5, "index": 0}
    assert "index" not in data[0]  # the dataset's own sample is not changed


def test_hidden_samples_get_target_minus_one() -> None:
    wrapped = BatchDict(_Pairs([4, 7, 1]), hidden={0, 2})
    assert [wrapped[i]["target"] for i in range(3)] == [UNLABELLED, 7, UNLABELLED]
    assert len(wrapped) == 3


def test_dict_sample_without_a_target_is_unlabelled() -> None:
    item = BatchDict([{"input": torch.zeros(2)}])[0]
    assert item["target"] == UNLABELLED


def test_input_that_is_not_a_tensor_says_to_add_a_transform() -> None:
    with pytest.raises(DataError, match="sample 0 has input of type list, not a tensor.*transform"):
        BatchDict([([0.0, 1.0], 1)])[0]


def test_sample_that_is_neither_pair_nor_dict() -> None:
    with pytest.raises(DataError, match=r"\(input, target\) or a dict, got Tensor"):
        BatchDict([torch.zeros(3)])[0]


def test_dataset_targets_with_and_without_a_targets_attribute() -> None:
    assert dataset_targets(_Pairs([2, 0, 1])) == [2, 0, 1]
    with_attr = _Pairs([2, 0, 1])
    with_attr.targets = torch.tensor([5, 5, 5])  # read instead of loading samples
    assert dataset_targets(with_attr) == [5, 5, 5]


# --- build_dataset --------------------------------------------------------------------------------


def test_digits_with_labelled_per_class_hides_the_other_labels() -> None:
    cfg = DataConfig(dataset="digits", image_size=8, in_chans=1, mean=(0.0,), std=(1.0,), labelled_per_class=3)
    wrapped, raw = build_dataset(cfg, "train")
    targets = [wrapped[i]["target"] for i in range(len(wrapped))]
    labelled = Counter(t for t in targets if t != UNLABELLED)
    assert labelled == {c: 3 for c in range(10)}
    assert targets.count(UNLABELLED) == len(raw) - 30
    val, _ = build_dataset(cfg, "val")  # validation keeps every label
    assert all(val[i]["target"] != UNLABELLED for i in range(len(val)))


def test_import_factory_without_split_names_the_contract() -> None:
    cfg = DataConfig(dataset="import", factory="tests.unit.factories:dataset_without_split", kwargs={"size": 3})
    with pytest.raises(DataError) as info:
        build_dataset(cfg, "train")
    message = str(info.value)
    assert "tests.unit.factories:dataset_without_split" in message
    assert "factory(split='train', **data.kwargs)" in message
    assert "taking split=" in message


def test_import_factory_passes_split_and_kwargs() -> None:
    cfg = DataConfig(dataset="import", factory="tests.unit.factories:digits_with_nan", kwargs={"bad": 2})
    wrapped, _ = build_dataset(cfg, "train")
    assert torch.isnan(wrapped[0]["input"]).all() and torch.isnan(wrapped[1]["input"]).all()
    assert torch.isfinite(wrapped[2]["input"]).all()
    val, _ = build_dataset(cfg, "val")
    assert torch.isfinite(val[0]["input"]).all()


def test_imagefolder_missing_split_names_the_folder_and_layout(tmp_path: Path) -> None:
    (tmp_path / "train" / "cat").mkdir(parents=True)
    cfg = DataConfig(dataset="imagefolder", root=str(tmp_path))
    with pytest.raises(DataError) as info:
        build_dataset(cfg, "val")
    message = str(info.value)
    assert str(tmp_path / "val") in message and "does not exist" in message
    assert "val/<class>/<image>" in message


def test_imagefolder_without_root() -> None:
    with pytest.raises(DataError, match="data.root is required"):
        build_dataset(DataConfig(dataset="imagefolder"), "train")


def _png_folder(root: Path) -> None:
    """train/ and val/ with two classes of two 12x10 PNGs each."""
    from PIL import Image

    for split in ("train", "val"):
        for n in range(4):
            folder = root / split / f"c{n % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12, 10), (40 * n, 100, 200)).save(folder / f"{n}.png")


def test_imagefolder_train_split_replays_its_views(tmp_path: Path) -> None:
    _png_folder(tmp_path)
    cfg = DataConfig(dataset="imagefolder", root=str(tmp_path), image_size=8, labelled_per_class=1)
    wrapped, raw = build_dataset(cfg, "train")
    assert wrapped.replayable and wrapped.random is True and raw.classes == ["c0", "c1"]
    assert sorted(wrapped.targets) == [UNLABELLED, UNLABELLED, 0, 1]  # labels read without decoding images
    item, params = wrapped.sample_view(2, torch.Generator().manual_seed(0))
    assert torch.equal(wrapped.view(2, params)["input"], item["input"]) and item["input"].shape == (3, 8, 8)
    val, _ = build_dataset(cfg, "val")
    assert not val.replayable and val.random is None and val[0]["input"].shape == (3, 8, 8)


def test_imagefolder_with_auto_augment_is_not_replayable(tmp_path: Path) -> None:
    _png_folder(tmp_path)
    cfg = DataConfig(root=str(tmp_path), image_size=8, augment={"auto_augment": "rand-m9-mstd0.5"})
    wrapped, _ = build_dataset(cfg, "train")
    assert not wrapped.replayable and wrapped[0]["input"].shape == (3, 8, 8)
    with pytest.raises(DataError, match="cannot replay augmented views"):
        wrapped.view(0, torch.zeros(10))
