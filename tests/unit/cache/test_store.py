"""The cache on disk: every field and view parameter read back as written, an unfinished build never read as a
cache, a continued build picking up where the progress file says, and an older cache replaced only at the end."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from kdforge.app.cache.build import cache_report
from kdforge.app.cache.store import PARAMS, PROGRESS, CacheReader, CacheWriter, partial_dir, read_manifest
from kdforge.core.errors import CacheError

ROWS, CLASSES, K = 6, 5, 2
EXTRA = {"teacher_metrics": {"teacher": {"val/acc1": 50.0}}, "teacher_params": {"teacher": 7}, "token_layouts": {}}


def _header(replay: bool = True, views: int = 2, tag: str = "a") -> dict:
    return {
        "fingerprint": {"tag": tag},
        "rows": ROWS,
        "samples": ROWS // views,
        "views": views,
        "replay": replay,
        "classes": CLASSES,
        "teachers": ["teacher"],
    }


def _fields(seed: int = 0) -> dict[tuple[str, str, str], torch.Tensor]:
    """Every row of each kind of field the build writes: top-k parts and a whole tap."""
    g = torch.Generator().manual_seed(seed)
    return {
        ("teacher", "logits", "values"): torch.randn(ROWS, K, generator=g).half(),
        ("teacher", "logits", "indices"): torch.randint(0, CLASSES, (ROWS, K), generator=g).to(torch.int16),
        ("teacher", "logits", "fill"): torch.randn(ROWS, generator=g),
        ("teacher", "feat", "dense"): torch.randn(ROWS, 3, 2, generator=g),
    }


def _params(seed: int = 0) -> torch.Tensor:
    return torch.rand(ROWS, 10, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rows(fields: dict, lo: int, hi: int) -> dict:
    return {key: value[lo:hi] for key, value in fields.items()}


def _build(path: Path, seed: int = 0, tag: str = "a") -> CacheWriter:
    """A complete cache written in two chunks."""
    writer = CacheWriter.start(path, _header(tag=tag))
    fields, params = _fields(seed), _params(seed)
    writer.write(0, _rows(fields, 0, 4), params[:4])
    writer.commit(4)
    writer.write(4, _rows(fields, 4, ROWS), params[4:])
    writer.finish(EXTRA)
    return writer


def _assert_rows(reader: CacheReader, seed: int = 0) -> None:
    fields, params = _fields(seed), _params(seed)
    for row in range(ROWS):
        got = reader.row(row)
        assert set(got) == {"teacher"} and set(got["teacher"]) == {"logits", "feat"}
        for (teacher, key, part), value in fields.items():
            stored = got[teacher][key][part]
            assert stored.dtype == value.dtype and torch.equal(stored, value[row])
        assert torch.equal(reader.params(row), params[row])


def test_round_trip_of_every_field_and_view_params(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    _build(path)
    reader = CacheReader(path)
    _assert_rows(reader)
    manifest = reader.manifest
    assert manifest["complete"] and manifest["fingerprint"] == {"tag": "a"}
    assert manifest["teacher_metrics"] == EXTRA["teacher_metrics"] and manifest["teacher_params"] == {"teacher": 7}
    assert (reader.views, reader.replay) == (2, True)
    shapes = {(f["key"], f["part"]): (f["shape"], f["dtype"]) for f in manifest["fields"]}
    assert shapes == {
        ("logits", "values"): ([K], "float16"),
        ("logits", "indices"): ([K], "int16"),
        ("logits", "fill"): ([], "float32"),
        ("feat", "dense"): ([3, 2], "float32"),
    }
    assert json.loads((path / PROGRESS).read_text()) == {"rows_done": ROWS}
    assert reader.nbytes() == sum(f.stat().st_size for f in path.glob("*.npy")) > 0
    assert not partial_dir(path).exists()


def test_a_cache_without_replay_stores_no_view_params(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    writer = CacheWriter.start(path, _header(replay=False, views=1))
    writer.write(0, _fields(), None)
    writer.finish(EXTRA)
    reader = CacheReader(path)
    assert not (path / PARAMS).exists() and (reader.views, reader.replay) == (1, False)
    assert torch.equal(reader.row(5)["teacher"]["feat"]["dense"], _fields()[("teacher", "feat", "dense")][5])


def test_reader_survives_pickling_for_loader_workers(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    _build(path)
    reader = CacheReader(path)
    reader.row(0)  # opens the memory maps, which must not travel
    _assert_rows(pickle.loads(pickle.dumps(reader)))


def test_the_size_report_compares_with_fp32_logits(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    _build(path)
    report = cache_report(CacheReader(path))
    # fp32 whole: logits (CLASSES,) and feat (3, 2) per row, each counted once (not once per top-k part)
    assert report["fp32_bytes"] == ROWS * 4 * (CLASSES + 6)
    assert report["bytes"] == CacheReader(path).nbytes() and report["rows"] == ROWS
    assert report["ratio"] == pytest.approx(report["fp32_bytes"] / report["bytes"])
    assert report["teacher_metrics"] == EXTRA["teacher_metrics"]


def test_an_unfinished_build_is_refused_as_a_cache(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    writer = CacheWriter.start(path, _header())
    writer.write(0, _rows(_fields(), 0, 4), _params()[:4])
    writer.commit(4)
    assert not path.exists() and partial_dir(path).is_dir()
    for where in (path, partial_dir(path)):
        with pytest.raises(CacheError, match="no complete teacher cache"):
            CacheReader(where)
    assert json.loads((partial_dir(path) / PROGRESS).read_text()) == {"rows_done": 4}


def test_resume_continues_from_the_committed_rows(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    assert CacheWriter.resume(path) is None  # nothing to continue
    fields, params = _fields(), _params()
    writer = CacheWriter.start(path, _header())
    writer.write(0, _rows(fields, 0, 2), params[:2])
    writer.commit(2)
    writer.write(2, _rows(fields, 2, 4), params[2:4])  # written, never committed: redone after the resume
    del writer
    resumed = CacheWriter.resume(path)
    assert resumed is not None and resumed.rows_done == 2 and resumed.manifest["fingerprint"] == {"tag": "a"}
    resumed.write(2, _rows(fields, 2, ROWS), params[2:])
    resumed.finish(EXTRA)
    _assert_rows(CacheReader(path))


def test_start_discards_an_older_partial_build(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    writer = CacheWriter.start(path, _header(tag="old"))
    writer.write(0, _rows(_fields(1), 0, 4), _params(1)[:4])
    writer.commit(4)
    fresh = CacheWriter.start(path, _header(tag="new"))
    assert fresh.rows_done == 0 and not list(partial_dir(path).glob("*.npy"))
    assert json.loads((partial_dir(path) / PROGRESS).read_text()) == {"rows_done": 0}


def test_finish_replaces_an_older_cache_only_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    _build(path, seed=0, tag="old")
    writer = CacheWriter.start(path, _header(tag="new"))
    fields, params = _fields(1), _params(1)
    writer.write(0, fields, params)
    writer.commit(ROWS)
    old = CacheReader(path)  # the new build is all on disk, not finished: the old cache is still the cache
    assert old.manifest["fingerprint"] == {"tag": "old"}
    _assert_rows(old, seed=0)
    writer.finish(EXTRA)
    new = CacheReader(path)
    assert new.manifest["fingerprint"] == {"tag": "new"}
    _assert_rows(new, seed=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no .partial, no .old-* left behind


def test_a_foreign_manifest_is_an_error_that_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CacheError, match="not a kdforge teacher cache"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CacheError, match="unreadable"):
        read_manifest(tmp_path)
    assert read_manifest(tmp_path / "missing") is None


def test_arrays_are_npy_files_numpy_can_read(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    _build(path)
    spec = next(f for f in CacheReader(path).manifest["fields"] if f["part"] == "dense")
    array = np.load(path / spec["file"])
    assert array.shape == (ROWS, 3, 2) and np.array_equal(array, _fields()[("teacher", "feat", "dense")].numpy())
