"""Building the teacher cache (``kdforge cache``, or the first run with ``cache.enabled``), and opening it
for training: an up-to-date cache is used, a stale one refused, an interrupted build continued."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from kdforge.cache.fingerprint import changes, fingerprint
from kdforge.cache.reading import TeacherCache
from kdforge.cache.store import DENSE, CacheReader, CacheWriter, read_manifest
from kdforge.cache.topk import encode_topk, index_dtype
from kdforge.config import CacheConfig, RunConfig
from kdforge.distill.teachers import build_teachers, teacher_role
from kdforge.engine.evaluate import autocast_context, evaluate, resolve_amp
from kdforge.errors import CacheError, StaleCacheError
from kdforge.models.build import count_parameters
from kdforge.tasks.base import Task

FP16_MAX = float(torch.finfo(torch.float16).max)
COMMIT_EVERY = 32  # batches between progress records: what an interrupted build loses at most
Fields = dict[tuple[str, str, str], torch.Tensor]


def resolve_views(cfg: CacheConfig, dataset: Any) -> tuple[int, bool]:
    """(views per sample, whether views are replayed from stored parameters) for the training pipeline.

    A deterministic pipeline caches one view. A random one must be replayable (image folders without
    auto-augment are) and needs ``cache.views``: caching one random view and training on fresh random views
    would give the student images the teacher never saw.
    """
    random = dataset.random if dataset.random is not None else _reads_differ(dataset)
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


PROBE_SAMPLES, PROBE_READS = 3, 8  # a coin-flip augmentation escapes 3 x 8 reads with probability 2^-21


def _reads_differ(dataset: Dataset) -> bool:
    """Whether repeated reads of a few samples differ: how a dataset that does not say it is random is caught."""
    with torch.random.fork_rng(devices=[]):
        for index in torch.linspace(0, len(dataset) - 1, PROBE_SAMPLES).long().unique().tolist():
            first = dataset[index]["input"]
            if any(not torch.equal(first, dataset[index]["input"]) for _ in range(PROBE_READS - 1)):
                return True
    return False


def teacher_device(config: RunConfig, device: torch.device) -> torch.device:
    from kdforge.runtime import resolve_device

    return resolve_device(config.teacher_runtime.device) if config.teacher_runtime.device else device


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

    Raises:
        StaleCacheError: a complete cache exists for other settings (and `rebuild` is False).
    """
    path = Path(config.cache.dir)
    views, replay = resolve_views(config.cache, train_set)
    amp = resolve_amp(config.train.amp, teacher_device(config, device))
    expected = fingerprint(config, train_set.dataset, views, amp)
    manifest = read_manifest(path)
    if manifest is not None and manifest.get("complete") and not rebuild:
        changed = changes(manifest["fingerprint"], expected)
        if changed:
            raise StaleCacheError(
                f"the teacher cache at {str(path)!r} was built for other settings and will not be used:\n  "
                + "\n  ".join(changed)
                + "\nRebuild it with `kdforge cache -c CONFIG --rebuild`, or set cache.dir to a new folder."
            )
        reader = CacheReader(path)
        say(f"teacher cache {path}: up to date ({reader.manifest['rows']} rows, {reader.nbytes() / 2**20:.1f} MiB)")
        return TeacherCache(reader)
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
            "teachers": list(config.teacher_specs()),
        }
        writer = CacheWriter.start(path, header)
    return TeacherCache(_build(writer, config, task, train_set, val_set, device, amp, say))


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
    teachers, inputs = build_teachers(config, task.num_classes, task.to_outputs, teacher_device(config, device))
    stacks = {name: nn.Sequential(inputs[name], net) if name in inputs else net for name, net in teachers.items()}
    for stack in stacks.values():
        stack.to(device)  # the input adapters; a teacher with its own device stays there
    metrics = {name: _evaluate(config, stack, val_set, task, device, amp) for name, stack in stacks.items()}
    for name, values in metrics.items():
        say(f"{teacher_role(name)}: " + "  ".join(f"{k} {v:.4g}" for k, v in values.items()))
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
            x = batch["input"].to(device, non_blocking=True)
            with torch.inference_mode(), autocast():
                outputs = {name: stack(x) for name, stack in stacks.items()}
            writer.write(row, encode_outputs(outputs, task.logit_keys, config.cache), batch.get("params"))
            row += len(x)
            if count % COMMIT_EVERY == 0:
                writer.commit(row)
            advance()
    path = writer.finish(
        {
            "teacher_metrics": metrics,
            "teacher_params": {name: count_parameters(net) for name, net in teachers.items()},
            "token_layouts": {name: net.token_layout() for name, net in teachers.items()},
            "build_seconds": round(time.perf_counter() - tic, 3),
        }
    )
    reader = CacheReader(path)
    say(f"teacher cache {path}: built, {reader.manifest['rows']} rows, {reader.nbytes() / 2**20:.1f} MiB")
    return reader


def _evaluate(
    config: RunConfig, model: nn.Module, val_set: Dataset, task: Task, device: torch.device, amp: str
) -> dict[str, float]:
    loader = DataLoader(
        val_set,
        batch_size=config.data.val_batch_size or config.data.batch_size,
        num_workers=config.data.num_workers,
        generator=torch.Generator(),  # without one, iterating draws a seed from the global RNG
    )
    return evaluate(model, loader, task, device, amp)


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


def encode_outputs(
    outputs: Mapping[str, Mapping[str, torch.Tensor]], logit_keys: tuple[str, ...], cfg: CacheConfig
) -> Fields:
    """Every teacher output as the arrays stored on disk: top-k parts for class logits (unless
    ``full_logits``), the whole tensor in the storage dtype for everything else (taps)."""
    storage = torch.float16 if cfg.dtype == "fp16" else torch.float32
    fields: Fields = {}
    for teacher, named in outputs.items():
        for key, value in named.items():
            if key in logit_keys and not cfg.full_logits:
                values, indices, fill = encode_topk(value, cfg.logits_topk)
                fields[(teacher, key, "values")] = _stored(values, storage, teacher, key)
                fields[(teacher, key, "indices")] = indices.to(index_dtype(value.shape[1])).cpu()
                fields[(teacher, key, "fill")] = _stored(fill, torch.float32, teacher, key)
            else:
                fields[(teacher, key, DENSE)] = _stored(value, storage, teacher, key)
    return fields


def _stored(value: torch.Tensor, dtype: torch.dtype, teacher: str, key: str) -> torch.Tensor:
    value = value.detach().float()
    finite = torch.isfinite(value).all()
    peak = value.abs().max() if value.numel() else torch.tensor(0.0)
    if not finite:
        raise CacheError(f"the {teacher_role(teacher)} gave non-finite values for {key!r}; check its weights and data.")
    if dtype == torch.float16 and peak > FP16_MAX:
        raise CacheError(
            f"the {teacher_role(teacher)}'s {key!r} reaches {float(peak):.3g}, beyond float16's range: "
            "set cache.dtype: fp32."
        )
    return value.to(dtype).cpu()


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
