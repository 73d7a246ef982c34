"""Building the teacher cache (``kdforge cache``, or the first run with ``cache.enabled``), and opening it
for training: an up-to-date cache is used, a stale one refused, an interrupted build continued."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, Dataset, Subset

from kdforge.app.cache.encoding import encode_outputs
from kdforge.app.cache.fingerprint import changes, fingerprint
from kdforge.app.cache.reading import TeacherCache
from kdforge.app.cache.store import DENSE, CacheReader, CacheWriter, build_lock, read_manifest
from kdforge.app.report.profile import example_input
from kdforge.app.teachers import evaluate_teachers, teacher_profile
from kdforge.core.config import CacheConfig, RunConfig
from kdforge.core.errors import CacheError, StaleCacheError
from kdforge.data.inputs import batch_size
from kdforge.data.views import reads_differ
from kdforge.distill.teachers import (
    build_teachers,
    teacher_device,
    teacher_stacks,
)
from kdforge.engine.evaluate import autocast_context, resolve_amp, to_device
from kdforge.models.multicrop import global_crops
from kdforge.tasks.base import Task

COMMIT_EVERY = 32  # batches between progress records: what an interrupted build loses at most


def resolve_views(cfg: CacheConfig, dataset: Any) -> tuple[int, bool]:
    """(views per sample, whether views are replayed from stored parameters) for the training pipeline.

    A deterministic pipeline caches one view. A random one must be replayable (image folders without
    auto-augment are) and needs ``cache.views``: caching one random view and training on fresh random views
    would give the student images the teacher never saw.
    """
    random = dataset.random if dataset.random is not None else reads_differ(dataset)
    if not random:
        return 1, False
    if not dataset.replayable:
        raise CacheError(
            "the training pipeline is random (reads of one sample differ) and kdforge cannot replay its random "
            "draws, so cached teacher outputs would not match what the student sees. Make the dataset's train "
            "transform deterministic, or use an image folder (whose augmentation kdforge replays) with cache.views."
        )
    if cfg.views is None:
        raise CacheError(
            "the training augmentation is random (data.augment: crop scale/ratio, flip, colour jitter), so one cached "
            "view per sample would give the student images the teacher never saw. Set cache.views: V (e.g. 8): V "
            "views per sample are cached with their augmentation parameters and each epoch replays one of them; or "
            "make the pipeline deterministic (data.augment: {scale: [1, 1], ratio: [1, 1], hflip: 0, color_jitter: 0})."
        )
    return cfg.views, True


def open_cache(
    config: RunConfig,
    task: Task,
    train_set: Any,
    val_set: Dataset,
    device: torch.device,
    say: Callable[[str], None],
    rebuild: bool = False,
) -> TeacherCache:
    """The cache for this run: used when up to date, continued when interrupted, built when missing.

    One process builds at a time (a lock next to the cache); one that waited finds the cache built.

    Raises:
        StaleCacheError: a complete cache exists for other settings (and `rebuild` is False).
        CacheError: ``cache.dir`` is something else, or cannot be written.
    """
    path = Path(config.cache.dir).resolve()
    views, replay = resolve_views(config.cache, train_set)
    amp = resolve_amp(config.train.amp, teacher_device(config, device))
    expected = fingerprint(config, train_set.dataset, views, amp)
    names = list(config.teacher_specs())  # the config's order decides the default teacher, not the build's
    try:
        with build_lock(path, say):
            reader = _up_to_date(path, expected, rebuild, say)
            if reader is None:
                writer = CacheWriter.resume(path)
                if writer is not None and not changes(writer.manifest["fingerprint"], expected):
                    rows = writer.manifest["rows"]
                    say(f"teacher cache {path}: continuing an interrupted build at row {writer.rows_done}/{rows}")
                else:
                    header = {
                        "fingerprint": expected,
                        "rows": len(train_set) * views,
                        "samples": len(train_set),
                        "views": views,
                        "replay": replay,
                        "classes": task.num_classes,
                        "teachers": names,
                    }
                    writer = CacheWriter.start(path, header)
                reader = _build(writer, config, task, train_set, val_set, device, amp, say)
    except OSError as exc:
        raise CacheError(
            f"cannot write the teacher cache at {str(path)!r} ({exc}); set cache.dir to a writable folder."
        ) from exc
    return TeacherCache(reader, names)


def _up_to_date(path: Path, expected: dict[str, Any], rebuild: bool, say: Callable[[str], None]) -> CacheReader | None:
    """The complete cache at `path` when it fits `expected` (None when there is none, or `rebuild`)."""
    if path.exists() and not (path.is_dir() and read_manifest(path) is not None):
        raise CacheError(
            f"cache.dir {str(path)!r} exists and is not a kdforge teacher cache; kdforge replaces a cache folder "
            "when it rebuilds, so point cache.dir at a new folder."
        )
    manifest = read_manifest(path) if path.is_dir() else None
    if manifest is None or not manifest.get("complete") or rebuild:
        return None
    changed = changes(manifest["fingerprint"], expected)
    if changed:
        raise StaleCacheError(
            f"the teacher cache at {str(path)!r} was built for other settings and will not be used:\n  "
            + "\n  ".join(changed)
            + "\nRebuild it with `kdforge cache -c CONFIG --rebuild`, or set cache.dir to a new folder."
        )
    reader = CacheReader(path)
    say(f"teacher cache {path}: up to date ({reader.manifest['rows']} rows, {reader.nbytes() / 2**20:.1f} MiB)")
    return reader


def _build(
    writer: CacheWriter,
    config: RunConfig,
    task: Task,
    train_set: Any,
    val_set: Dataset,
    device: torch.device,
    amp: str,
    say: Callable[[str], None],
) -> CacheReader:
    teachers, inputs = build_teachers(config, task.model_classes, task.to_outputs, device)
    stacks = teacher_stacks(teachers, inputs, device)
    example = example_input(val_set)
    val_loader = DataLoader(
        val_set,
        batch_size=config.data.val_batch_size or config.data.batch_size,
        num_workers=config.data.num_workers,
        generator=torch.Generator(),  # without one, iterating draws a seed from the global RNG
    )
    metrics = evaluate_teachers(config, stacks, val_loader, task, device, amp, say, say)
    rows_dataset = _ViewRows(train_set, writer.manifest["views"], config.cache.seed, writer.manifest["replay"])
    loader = DataLoader(
        Subset(rows_dataset, range(writer.rows_done, writer.manifest["rows"])),
        batch_size=config.cache.batch_size or config.data.batch_size,
        num_workers=config.data.num_workers,
        pin_memory=config.data.pin_memory and device.type == "cuda",
        generator=torch.Generator(),  # without one, iterating draws a seed from the global RNG
    )
    autocast = autocast_context(device, amp)
    row, tic = writer.rows_done, time.perf_counter()
    with _Progress(len(loader), str(writer.path)) as advance:
        for count, batch in enumerate(loader, 1):
            x = global_crops(to_device(batch, device)["input"])
            with torch.inference_mode(), autocast():
                outputs = {name: stack(x) for name, stack in stacks.items()}
            writer.write(row, encode_outputs(outputs, task.logit_keys, config.cache), batch.get("params"))
            row += batch_size(x)
            if count % COMMIT_EVERY == 0:
                writer.commit(row)
            advance()
    path = writer.finish(
        {
            "teacher_metrics": metrics,
            "token_layouts": {name: net.token_layout() for name, net in teachers.items()},
            "teacher_profiles": {
                name: teacher_profile(net, inputs[name](example) if name in inputs else example)
                for name, net in teachers.items()
            },
            "build_seconds": round(time.perf_counter() - tic, 3),
        }
    )
    reader = CacheReader(path)
    say(f"teacher cache {path}: built, {reader.manifest['rows']} rows, {reader.nbytes() / 2**20:.1f} MiB")
    return reader


class _Progress:
    def __init__(self, total: int, label: str) -> None:
        self.bar = Progress(
            TextColumn(f"[bold]caching teacher outputs -> {label}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
        )
        self.task = self.bar.add_task("cache", total=total)

    def __enter__(self) -> Callable[[], None]:
        self.bar.start()
        return lambda: self.bar.update(self.task, advance=1)

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


class _ViewRows(Dataset):
    """Row ``r = index * views + view`` of the cache: the sample's input (and the view's parameters, drawn
    from a generator seeded by the row, so a continued build draws exactly what an uninterrupted one would)."""

    def __init__(self, base: Any, views: int, seed: int, replay: bool) -> None:
        self.base, self.views, self.seed, self.replay = base, views, seed, replay

    def __len__(self) -> int:
        return len(self.base) * self.views

    def __getitem__(self, row: int) -> dict[str, torch.Tensor]:
        index = row // self.views
        if not self.replay:
            return {"input": self.base[index]["input"]}
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + row)
        item, params = self.base.sample_view(index, generator)
        return {"input": item["input"], "params": params}


def cache_report(reader: CacheReader) -> dict[str, Any]:
    """Size on disk against the same outputs stored whole in float32 (what a naive cache would hold)."""
    manifest, fp32 = reader.manifest, 0
    seen = set()
    for spec in manifest["fields"]:
        key = (spec["teacher"], spec["key"])
        if key in seen:
            continue
        seen.add(key)
        shape = spec["shape"] if spec["part"] == DENSE else [manifest["classes"], *spec["shape"][1:]]
        fp32 += manifest["rows"] * 4 * math.prod(shape)
    return {
        "rows": manifest["rows"],
        "bytes": reader.nbytes(),
        "fp32_bytes": fp32,
        "ratio": fp32 / max(reader.nbytes(), 1),
        "teacher_metrics": manifest.get("teacher_metrics", {}),
    }
