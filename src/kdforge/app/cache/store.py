"""The cache on disk: a manifest, a progress file and one memory-mapped ``.npy`` array per stored field.

A build writes into ``<dir>.partial/``. The manifest says what each array holds; ``progress.json`` says how
many rows are on disk (written atomically after the arrays are flushed), so an interrupted build is
continued from there and never read as complete. A finished build is marked complete and renamed to
``<dir>`` in one step, replacing an older cache only then.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdforge.core.atomic import atomic_write
from kdforge.core.errors import CacheError

FORMAT = "kdforge-teacher-cache"
VERSION = 1
MANIFEST, PROGRESS, PARAMS = "manifest.json", "progress.json", "view_params.npy"
DENSE = "dense"  # a field stored whole; top-k logits are stored as the parts "values", "indices", "fill"


def partial_dir(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def old_dir(path: Path) -> Path:
    """Where the previous cache waits between the two renames that replace it (removed on the next build)."""
    return path.with_name(path.name + ".old")


@contextlib.contextmanager
def build_lock(path: Path, say: Callable[[str], None]) -> Iterator[None]:
    """One process at a time checks and builds the cache at `path` (e.g. a seed sweep sharing it): others wait,
    then find it built. The lock is a file next to the cache, released by the OS if the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"teacher cache {path}: another process is building it; waiting")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            shutil.rmtree(old_dir(path), ignore_errors=True)  # left by a build that died between its renames
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_arrays(path: Path, manifest: dict[str, Any], mode: str) -> dict[str, np.ndarray]:
    """Every field's array (and the view parameters), checked against the manifest's shapes and dtypes.

    Raises:
        CacheError: a file is missing, unreadable, truncated or of another shape (then the cache is rebuilt).
    """
    rows = manifest["rows"]
    expected = {f["file"]: ((rows, *f["shape"]), f["dtype"]) for f in manifest["fields"]}
    if manifest["replay"] and manifest["fields"]:
        expected[PARAMS] = (None, "float64")
    arrays = {}
    for name, (shape, dtype) in expected.items():
        try:
            array = np.load(path / name, mmap_mode=mode, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CacheError(
                f"teacher cache file {str(path / name)!r} is missing or damaged ({exc}); rebuild the cache with "
                "`kdforge cache -c CONFIG --rebuild`."
            ) from exc
        if (shape is not None and array.shape != shape) or str(array.dtype) != dtype:
            raise CacheError(
                f"teacher cache file {str(path / name)!r} holds {array.dtype} {array.shape}, the manifest says "
                f"{dtype} {shape}: the cache is damaged; rebuild it with `kdforge cache -c CONFIG --rebuild`."
            )
        arrays[name] = array
    return arrays


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1)))


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of the cache at `path`, or None when there is none; a foreign file is an error."""
    file = path / MANIFEST
    if not file.is_file():
        return None
    try:
        manifest = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CacheError(f"teacher cache manifest {str(file)!r} is unreadable ({exc}); delete {str(path)!r}.") from exc
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise CacheError(
            f"{str(path)!r} is not a kdforge teacher cache of version {VERSION}; delete it or set cache.dir elsewhere."
        )
    return manifest


def _file_name(index: int, teacher: str, key: str, part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{index:03d}.{teacher}.{key}.{part}") + ".npy"


class CacheWriter:
    """Writes rows into a ``.partial`` cache directory; `finish` makes it the cache."""

    def __init__(self, path: Path, manifest: dict[str, Any], rows_done: int = 0) -> None:
        self.path, self.manifest, self.rows_done = path, manifest, rows_done
        self.work = partial_dir(path)
        self.arrays: dict[str, np.memmap] = {}
        self.params: np.memmap | None = None
        if manifest.get("fields"):  # continuing: the arrays exist
            self.arrays = open_arrays(self.work, manifest, "r+")
            self.params = self.arrays.pop(PARAMS, None)

    @classmethod
    def start(cls, path: Path, manifest: dict[str, Any]) -> CacheWriter:
        work = partial_dir(path)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        manifest = {"format": FORMAT, "version": VERSION, "complete": False, "fields": [], **manifest}
        write_json(work / MANIFEST, manifest)
        write_json(work / PROGRESS, {"rows_done": 0})
        return cls(path, manifest)

    @classmethod
    def resume(cls, path: Path) -> CacheWriter | None:
        """A writer continuing the interrupted build at ``<path>.partial``, or None when there is none (or it is
        damaged: it is then started over)."""
        work = partial_dir(path)
        try:
            manifest = read_manifest(work)
            if manifest is None:
                return None
            rows_done = int(json.loads((work / PROGRESS).read_text())["rows_done"])
            return cls(path, manifest, rows_done)
        except (CacheError, OSError, ValueError, KeyError):
            return None

    def write(
        self, start: int, fields: Mapping[tuple[str, str, str], torch.Tensor], params: torch.Tensor | None
    ) -> None:
        """Rows ``start:start+B`` of every field (keyed ``(teacher, output key, part)``) and the views' params."""
        if not self.arrays:
            self._create(fields, params)
        for spec in self.manifest["fields"]:
            value = fields.get((spec["teacher"], spec["key"], spec["part"]))
            if value is None or list(value.shape[1:]) != spec["shape"]:
                got = "nothing" if value is None else f"shape {tuple(value.shape[1:])}"
                raise CacheError(
                    f"the teacher's output {spec['key']!r} ({spec['part']}) changed between batches: {got} per sample "
                    f"after {tuple(spec['shape'])}. The cache needs outputs of one shape; fix the input size "
                    "(data.image_size) or the tapped module."
                )
            self.arrays[spec["file"]][start : start + len(value)] = value.cpu().numpy()
        if self.params is not None and params is not None:
            self.params[start : start + len(params)] = params.numpy()

    def _create(self, fields: Mapping[tuple[str, str, str], torch.Tensor], params: torch.Tensor | None) -> None:
        rows = self.manifest["rows"]
        for index, ((teacher, key, part), value) in enumerate(fields.items()):
            name = _file_name(index, teacher, key, part)
            dtype = str(value.numpy().dtype)
            spec = {
                "file": name,
                "teacher": teacher,
                "key": key,
                "part": part,
                "shape": list(value.shape[1:]),
                "dtype": dtype,
            }
            self.manifest["fields"].append(spec)
            self.arrays[name] = np.lib.format.open_memmap(
                self.work / name, mode="w+", dtype=dtype, shape=(rows, *value.shape[1:])
            )
        if self.manifest["replay"]:
            assert params is not None, "a replayed pipeline gives every row's view parameters"
            self.params = np.lib.format.open_memmap(
                self.work / PARAMS, mode="w+", dtype="float64", shape=(rows, params.shape[1])
            )
        write_json(self.work / MANIFEST, self.manifest)

    def commit(self, rows_done: int) -> None:
        """Flush the arrays, then record `rows_done`: what the progress file says is on disk."""
        for array in [*self.arrays.values(), *([self.params] if self.params is not None else [])]:
            array.flush()
        self.rows_done = rows_done
        write_json(self.work / PROGRESS, {"rows_done": rows_done})

    def finish(self, extra: dict[str, Any]) -> Path:
        """Mark the build complete and move it to the cache path (an older cache there is replaced)."""
        self.commit(self.manifest["rows"])
        self.arrays, self.params = {}, None
        self.manifest.update(extra, complete=True)
        write_json(self.work / MANIFEST, self.manifest)
        if self.path.exists():
            os.replace(self.path, old_dir(self.path))
        os.replace(self.work, self.path)
        shutil.rmtree(old_dir(self.path), ignore_errors=True)
        return self.path


class CacheReader:
    """Rows of a complete cache, as ``{teacher: {output key: {part: tensor}}}``; opens its arrays lazily in
    each process, so it can be sent to DataLoader workers."""

    def __init__(self, path: Path) -> None:
        manifest = read_manifest(path)
        if manifest is None or not manifest.get("complete"):
            raise CacheError(f"no complete teacher cache at {str(path)!r}; build it with `kdforge cache -c CONFIG`.")
        self.path, self.manifest = path, manifest
        self.views: int = manifest["views"]
        self.replay: bool = manifest["replay"]
        open_arrays(path, manifest, "r")  # damage shows now, not in the first batch or in a worker
        self._arrays: dict[str, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = open_arrays(self.path, self.manifest, "r")
        return self._arrays

    def row(self, row: int) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
        arrays = self._open()
        out: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
        for spec in self.manifest["fields"]:
            value = torch.from_numpy(np.array(arrays[spec["file"]][row]))
            out.setdefault(spec["teacher"], {}).setdefault(spec["key"], {})[spec["part"]] = value
        return out

    def params(self, row: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self._open()[PARAMS][row]))

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.glob("*.npy"))
