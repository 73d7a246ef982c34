"""Building and opening the teacher cache: an interrupted build is continued where its progress file says and
ends with the arrays of an uninterrupted one; a cache built for other settings is refused with what changed;
random pipelines need views (and replay), which reproduce the teacher's image pixel for pixel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from kdforge.app.build import build_loaders, build_task
from kdforge.app.cache import build as build_module
from kdforge.app.cache.build import open_cache, resolve_views
from kdforge.app.cache.reading import CachedTeacherDataset, TeacherCache
from kdforge.app.cache.store import PARAMS, PROGRESS, CacheReader, CacheWriter, partial_dir
from kdforge.app.pipeline import build_cache
from kdforge.core.config import CacheConfig
from kdforge.core.context import Context
from kdforge.core.errors import CacheError, StaleCacheError
from kdforge.data.datasets import BatchDict
from kdforge.data.digits import DigitsDataset
from kdforge.models.zoo import cnn

DIGITS_TRAIN = 1347  # rows of a one-view digits cache
HERE = "tests.unit.cache.test_build"
DETERMINISTIC = {"scale": [1.0, 1.0], "ratio": [1.0, 1.0], "hflip": 0.0, "color_jitter": 0.0}


# --- models and datasets the configs import --------------------------------------------------------


class _SeesInput(nn.Module):
    """A teacher whose ``seen`` module returns its input: a tap there stores the image the teacher saw."""

    def __init__(self, num_classes: int, in_chans: int) -> None:
        super().__init__()
        self.seen = nn.Identity()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_chans, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.seen(x))


def sees_input(num_classes: int = 10, in_chans: int = 3, widths: Any = None) -> nn.Module:
    """`_SeesInput`; `widths` (of the CNN in the base config, which the test configs merge into) is unused."""
    return _SeesInput(num_classes, in_chans)


class _Noisy(Dataset):
    """Digits with fresh noise on every read (from torch's global RNG): random, and not replayable."""

    classes = DigitsDataset.classes

    def __init__(self, split: str) -> None:
        self.digits = DigitsDataset(split)
        self.split, self.targets = split, self.digits.targets

    def __len__(self) -> int:
        return len(self.digits)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, target = self.digits[index]
        return (image + 0.1 * torch.randn_like(image) if self.split == "train" else image), target


def noisy_digits(split: str) -> Dataset:
    return _Noisy(split)


class _Flipping(_Noisy):
    """Digits flipped left-right with probability 1/2 on every read: random, two reads agree half the time."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, target = self.digits[index]
        return (image.flip(-1) if torch.rand(()) < 0.5 else image), target


class _ReplayableWithoutSaying(Dataset):
    """Replayable (``view``/``sample_view``) and random on every read, without a ``random`` attribute."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.view(index, torch.rand(1, dtype=torch.float64))

    def view(self, index: int, params: torch.Tensor) -> tuple[torch.Tensor, int]:
        return torch.full((1, 4, 4), float(params[0])), 0

    def sample_view(self, index: int, generator: torch.Generator) -> tuple[torch.Tensor, int, torch.Tensor]:
        params = torch.rand(1, generator=generator, dtype=torch.float64)
        return *self.view(index, params), params


# --- helpers -------------------------------------------------------------------------------------


def _cache_section(root: Path, **values: Any) -> dict[str, Any]:
    return {"enabled": True, "dir": str(root / "cache"), "batch_size": 256, **values}


def _write_images(root: Path, per_class: tuple[int, int] = (4, 2), seed: int = 0) -> Path:
    """A small ImageFolder (3 classes of random RGB PNGs, 20x16) with train/ and val/."""
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "val"), per_class, strict=True):
        for label in range(3):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def _image_config(make_config, root: Path, augment: dict | None = None, teacher: dict | None = None, **sections: Any):
    data = {
        "dataset": "imagefolder",
        "root": str(_write_images(root / "images")),
        "image_size": 8,
        "in_chans": 3,
        "batch_size": 4,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
    }
    if augment is not None:
        data["augment"] = augment
    three = {"kwargs": {"in_chans": 3}}
    sections = {"cache": _cache_section(root), **sections}
    return make_config(data=data, teacher={**three, **(teacher or {})}, student=three, **sections)


def _opened(config) -> tuple[TeacherCache, Any]:
    """(the opened cache, the training set) for `config`, as `train` opens them."""
    task = build_task(config)
    train_set, val_set = task.datasets()
    return open_cache(config, task, train_set, val_set, torch.device("cpu"), lambda text: None), train_set


def _arrays(path: Path) -> dict[str, np.ndarray]:
    return {file.name: np.load(file) for file in sorted(path.glob("*.npy"))}


def _said(capsys: pytest.CaptureFixture) -> str:
    """What the build printed (rich's console, on stderr), with its line wrapping undone."""
    return " ".join(capsys.readouterr().err.split())


class _Interrupted(Exception):
    pass


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Records the start row of every `CacheWriter.write`; ``fail_at = n`` raises on the n-th call."""
    record: dict[str, Any] = {"starts": [], "fail_at": None}
    real = CacheWriter.write

    def write(self: CacheWriter, start: int, fields: Any, params: Any) -> None:
        record["starts"].append(start)
        if len(record["starts"]) == record["fail_at"]:
            raise _Interrupted
        real(self, start, fields, params)

    monkeypatch.setattr(CacheWriter, "write", write)
    monkeypatch.setattr(build_module, "COMMIT_EVERY", 1)
    return record


def _no_teacher(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a teacher network was built")

    monkeypatch.setattr("kdforge.distill.teachers.build_model", refuse)


# --- an interrupted build ------------------------------------------------------------------------


def test_interrupted_build_is_continued_and_ends_as_an_uninterrupted_one(make_config, tmp_path, writes, capsys):
    config = make_config(cache=_cache_section(tmp_path))
    path, work = tmp_path / "cache", partial_dir(tmp_path / "cache")
    writes["fail_at"] = 4  # batches of 256 rows: three are written and committed, the fourth fails
    with pytest.raises(_Interrupted):
        build_cache(config)
    assert not path.exists() and work.is_dir()
    assert json.loads((work / PROGRESS).read_text()) == {"rows_done": 3 * 256}
    for where in (path, work):
        with pytest.raises(CacheError, match="no complete teacher cache"):
            CacheReader(where)

    writes["starts"].clear()
    writes["fail_at"] = None
    capsys.readouterr()
    report = build_cache(config)
    assert writes["starts"] == [768, 1024, 1280]  # only the rows the progress file did not record
    assert "continuing an interrupted build at row 768/1347" in _said(capsys)
    assert report["rows"] == DIGITS_TRAIN and not work.exists()

    other = make_config(cache=_cache_section(tmp_path / "other"))
    writes["starts"].clear()
    build_cache(other)
    assert writes["starts"] == [0, 256, 512, 768, 1024, 1280]
    resumed, whole = _arrays(path), _arrays(tmp_path / "other" / "cache")
    assert resumed.keys() == whole.keys() and len(resumed) == 3  # logits values, indices, fill
    for name, array in whole.items():
        assert resumed[name].dtype == array.dtype and np.array_equal(resumed[name], array), name
    manifests = [CacheReader(p).manifest for p in (path, tmp_path / "other" / "cache")]
    assert manifests[0]["fields"] == manifests[1]["fields"]
    assert manifests[0]["fingerprint"] == manifests[1]["fingerprint"]


def test_an_interrupted_build_for_other_settings_starts_over(make_config, tmp_path, writes):
    writes["fail_at"] = 2
    with pytest.raises(_Interrupted):
        build_cache(make_config(cache=_cache_section(tmp_path)))
    writes["starts"].clear()
    writes["fail_at"] = None
    build_cache(make_config(cache=_cache_section(tmp_path, logits_topk=4)))
    assert writes["starts"][0] == 0 and len(writes["starts"]) == 6
    manifest = CacheReader(tmp_path / "cache").manifest
    assert manifest["fingerprint"]["precision"]["logits_topk"] == 4


# --- stale caches --------------------------------------------------------------------------------


def _checkpoint(path: Path, seed: int) -> str:
    torch.manual_seed(seed)
    torch.save({"model": cnn(num_classes=10, in_chans=1, widths=[16, 32]).state_dict()}, path)
    return str(path)


def _change_checkpoint(sections: dict[str, Any], tmp_path: Path) -> None:
    _checkpoint(Path(sections["teacher"]["checkpoint"]), seed=1)


def _change_taps(sections: dict[str, Any], tmp_path: Path) -> None:
    sections["teacher"]["taps"] = {"feat": "stages.0"}


def _change_image_size(sections: dict[str, Any], tmp_path: Path) -> None:
    sections["data"] = {"image_size": 10}


def _change_topk(sections: dict[str, Any], tmp_path: Path) -> None:
    sections["cache"]["logits_topk"] = 4


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_change_checkpoint, ["teacher weights: teacher.checkpoint sha256 was "]),
        (_change_taps, ['taps: teacher.feat was null, now "stages.0"']),
        (_change_image_size, ["input pipeline: data.image_size was 8, now 10", "dataset listing: "]),
        (_change_topk, ["precision: logits_topk was 32, now 4"]),
    ],
    ids=["checkpoint", "taps", "image_size", "logits_topk"],
)
def test_a_cache_built_for_other_settings_is_refused_and_rebuilt(make_config, tmp_path, change, expected):
    sections = {
        "teacher": {"checkpoint": _checkpoint(tmp_path / "teacher.pt", seed=0)},
        "cache": _cache_section(tmp_path),
    }
    build_cache(make_config(**sections))
    change(sections, tmp_path)
    changed = make_config(**sections)
    with pytest.raises(StaleCacheError) as info:
        build_cache(changed)
    message = str(info.value)
    assert "built for other settings" in message and "--rebuild" in message
    for text in expected:
        assert text in message
    assert message.count("\n  ") == len(expected)  # one line per changed part, nothing else named

    report = build_cache(changed, rebuild=True)
    assert report["rows"] == DIGITS_TRAIN
    assert build_cache(changed)["rows"] == DIGITS_TRAIN  # the rebuilt cache is the up-to-date one
    assert not partial_dir(tmp_path / "cache").exists()


def test_a_changed_training_image_makes_the_cache_stale(make_config, tmp_path):
    config = _image_config(make_config, tmp_path, augment=DETERMINISTIC)
    build_cache(config)
    image = next(iter(sorted((tmp_path / "images" / "train" / "c1").glob("*.png"))))
    pixels = np.asarray(Image.open(image))
    Image.fromarray(255 - pixels).save(image)
    with pytest.raises(StaleCacheError, match="dataset listing: sha256 was") as info:
        build_cache(config)
    assert str(info.value).count("\n  ") == 1
    build_cache(config, rebuild=True)


def test_an_up_to_date_cache_is_used_without_building_a_teacher(make_config, tmp_path, monkeypatch, capsys):
    config = make_config(cache=_cache_section(tmp_path))
    build_cache(config)
    stamps = {file.name: file.stat().st_mtime_ns for file in (tmp_path / "cache").iterdir()}
    _no_teacher(monkeypatch)
    capsys.readouterr()
    report = build_cache(config)
    assert f"teacher cache {tmp_path / 'cache'}: up to date (1347 rows" in _said(capsys)
    assert report["rows"] == DIGITS_TRAIN
    assert {file.name: file.stat().st_mtime_ns for file in (tmp_path / "cache").iterdir()} == stamps


# --- random pipelines ----------------------------------------------------------------------------


def test_random_augmentation_without_views_is_refused_naming_cache_views(make_config, tmp_path):
    with pytest.raises(CacheError, match="Set cache.views: V"):
        build_cache(_image_config(make_config, tmp_path))
    assert not partial_dir(tmp_path / "cache").exists()


def test_a_random_dataset_that_cannot_be_replayed_is_refused(make_config, tmp_path):
    config = make_config(data={"dataset": "import", "factory": f"{HERE}:noisy_digits"}, cache=_cache_section(tmp_path))
    with pytest.raises(CacheError, match="reads of one sample differ"):
        build_cache(config)


def test_an_image_folder_with_auto_augment_is_refused_as_not_replayable(make_config, tmp_path):
    config = _image_config(make_config, tmp_path, augment={"auto_augment": "rand-m9-mstd0.5"})
    with pytest.raises(CacheError, match="kdforge cannot replay its random draws"):
        build_cache(config)


def test_a_dataset_that_is_random_only_sometimes_is_refused_whatever_the_rng_state() -> None:
    dataset = BatchDict(_Flipping("train"))
    accepted = []
    for seed in range(8):
        torch.manual_seed(seed)
        try:
            resolve_views(CacheConfig(), dataset)
            accepted.append(seed)
        except CacheError:
            pass
    assert accepted == []


def test_a_replayable_dataset_that_does_not_say_whether_it_is_random_is_probed() -> None:
    dataset = BatchDict(_ReplayableWithoutSaying())
    assert dataset.replayable and dataset.random is None
    assert resolve_views(CacheConfig(views=3), dataset) == (3, True)
    with pytest.raises(CacheError, match="cache.views"):
        resolve_views(CacheConfig(), dataset)


def test_a_deterministic_image_folder_caches_one_view_without_replay(make_config, tmp_path):
    cache, train_set = _opened(_image_config(make_config, tmp_path, augment=DETERMINISTIC))
    manifest = cache.reader.manifest
    assert (manifest["views"], manifest["replay"], manifest["rows"]) == (1, False, 12) and cache.views == 1
    assert not (tmp_path / "cache" / PARAMS).exists()
    dataset = CachedTeacherDataset(train_set, cache.reader)
    for index in range(len(dataset)):
        assert torch.equal(dataset[index]["input"], train_set[index]["input"])
        assert torch.equal(dataset[(index, 0)]["input"], train_set[index]["input"])


# --- replayed views ------------------------------------------------------------------------------


def _replay_config(make_config, tmp_path):
    return _image_config(
        make_config,
        tmp_path,
        teacher={"name": f"{HERE}:sees_input", "kwargs": {"in_chans": 3}, "taps": {"image": "seen"}},
        cache=_cache_section(tmp_path, views=3, dtype="fp32", batch_size=5),
    )


def test_replayed_views_are_the_images_the_teacher_saw(make_config, tmp_path):
    cache, train_set = _opened(_replay_config(make_config, tmp_path))
    manifest = cache.reader.manifest
    assert (manifest["views"], manifest["replay"], manifest["rows"]) == (3, True, 36)
    dataset = CachedTeacherDataset(train_set, cache.reader)
    for index in range(len(dataset)):
        views = []
        for view in range(3):
            item = dataset[(index, view)]
            seen = cache.reader.row(index * 3 + view)["teacher"]["feat:image"]["dense"]
            assert seen.dtype == torch.float32 and seen.shape == (3, 8, 8)
            assert torch.equal(item["input"], seen), (index, view)
            assert item["index"] == index and item["target"] == train_set[index]["target"]
            views.append(item["input"])
        assert not torch.equal(views[0], views[1]) and not torch.equal(views[1], views[2])
        assert not torch.equal(views[0], views[2])
        assert torch.equal(dataset[index]["input"], views[0])


def test_training_batches_carry_the_teacher_outputs_of_their_own_views(make_config, tmp_path):
    config = _replay_config(make_config, tmp_path)
    cache, train_set = _opened(config)
    dataset = CachedTeacherDataset(train_set, cache.reader)
    loader, _ = build_loaders(config, dataset, train_set, Context(), views=cache.views)
    loader.sampler.set_epoch(1)
    pairs = list(loader.sampler)
    assert {view for _, view in pairs} == {0, 1, 2}
    for batch in loader:
        outputs = cache.outputs(batch, ["teacher"])["teacher"]
        assert torch.equal(outputs["feat:image"], batch["input"])
        assert outputs["logits"].shape == (len(batch["input"]), 3)


def test_a_continued_build_draws_the_same_views(make_config, tmp_path, writes):
    config = _replay_config(make_config, tmp_path)
    writes["fail_at"] = 3  # batches of 5 rows: 10 rows committed
    with pytest.raises(_Interrupted):
        build_cache(config)
    writes["fail_at"] = None
    writes["starts"].clear()
    build_cache(config)
    assert writes["starts"] == [10, 15, 20, 25, 30, 35]
    whole = _image_config(
        make_config,
        tmp_path / "whole",
        teacher={"name": f"{HERE}:sees_input", "kwargs": {"in_chans": 3}, "taps": {"image": "seen"}},
        cache=_cache_section(tmp_path / "whole", views=3, dtype="fp32", batch_size=5),
    )
    build_cache(whole)
    resumed, uninterrupted = _arrays(tmp_path / "cache"), _arrays(tmp_path / "whole" / "cache")
    assert PARAMS in resumed and resumed.keys() == uninterrupted.keys()
    for name, array in uninterrupted.items():
        assert np.array_equal(resumed[name], array), name


# --- what a reviewer found ------------------------------------------------------------------------


def test_a_cache_dir_that_is_another_folder_is_refused_and_left_alone(make_config, tmp_path):
    other = tmp_path / "data"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(CacheError, match="is not a kdforge teacher cache"):
        build_cache(make_config(cache={"enabled": True, "dir": str(other)}))
    assert (other / "precious.txt").read_text() == "keep me"


def test_a_second_builder_waits_for_the_first_and_then_finds_the_cache_built(make_config, tmp_path):
    import threading

    from kdforge.app.cache.store import build_lock

    config = make_config(cache=_cache_section(tmp_path))
    path = Path(config.cache.dir).resolve()
    said: list[str] = []
    opened: list[TeacherCache] = []
    second = threading.Thread(target=lambda: opened.append(open_cache(*_open_args(config), said.append)))
    with build_lock(path, said.append):  # the first builder holds the lock
        second.start()
        second.join(timeout=1.0)
        assert second.is_alive() and said == [f"teacher cache {path}: another process is building it; waiting"]
    second.join(timeout=60)
    assert opened and opened[0].reader.manifest["complete"]


def _open_args(config) -> tuple:
    task = build_task(config)
    train_set, val_set = task.datasets()
    return config, task, train_set, val_set, torch.device("cpu")


def test_the_config_order_of_teachers_decides_the_default_teacher(make_config, tmp_path):
    teacher = {"source": "import", "name": "kdforge.models.zoo:cnn", "kwargs": {"in_chans": 1, "widths": [8, 8]}}
    sections = {"teacher": None, "cache": _cache_section(tmp_path)}
    _opened(make_config(teachers={"a": teacher, "b": teacher}, **sections))
    cache, _ = _opened(make_config(teachers={"b": teacher, "a": teacher}, **sections))
    assert cache.names == ["b", "a"]


def test_a_damaged_cache_file_is_an_error_naming_the_rebuild(make_config, tmp_path):
    config = make_config(cache=_cache_section(tmp_path))
    _opened(config)
    victim = sorted((tmp_path / "cache").glob("*.npy"))[0]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated
    with pytest.raises(CacheError, match="--rebuild"):
        _opened(config)
    victim.unlink()
    with pytest.raises(CacheError, match="missing or damaged"):
        _opened(config)


def test_a_teacher_output_that_changes_shape_between_batches_is_refused(tmp_path):
    writer = CacheWriter.start(tmp_path / "cache", {"rows": 4, "replay": False, "views": 1})
    writer.write(0, {("teacher", "feat:f", "dense"): torch.zeros(2, 3)}, None)
    with pytest.raises(CacheError, match="changed between batches"):
        writer.write(2, {("teacher", "feat:f", "dense"): torch.zeros(2, 5)}, None)


def test_a_previous_cache_left_between_the_renames_is_removed_by_the_next_build(make_config, tmp_path):
    from kdforge.app.cache.store import old_dir

    config = make_config(cache=_cache_section(tmp_path))
    old = old_dir((tmp_path / "cache").resolve())
    old.mkdir()
    (old / "stale.npy").write_bytes(b"x" * 100)
    _opened(config)
    assert not old.exists()


def test_in_memory_random_views_fingerprint_the_same_whatever_the_run_seed():
    from kdforge.app.cache.fingerprint import dataset_listing

    dataset = _Flipping("train")
    torch.manual_seed(1)
    first = dataset_listing(dataset)
    torch.manual_seed(2)
    assert dataset_listing(dataset) == first


def test_caching_a_config_without_teacher_is_an_error(make_config, tmp_path):
    from kdforge.core.errors import ConfigError

    with pytest.raises(ConfigError, match="nothing to cache"):
        build_cache(make_config(teacher=None, distill={"terms": []}, cache={"dir": str(tmp_path / "c")}))
