"""A run from its config, ready to fit: the task, the data (through the teacher cache when enabled), the loaders and
the distiller (models with taps, terms, teachers) as `RunParts`; then `build` adds the run directory, the loggers
and the trainer. Nothing here trains."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from kdforge.app.cache.build import open_cache
from kdforge.app.cache.reading import CachedTeacherDataset, TeacherCache
from kdforge.app.checks import task_class
from kdforge.app.rundir import new_run_dir, write_run_files
from kdforge.core.config import RunConfig
from kdforge.core.context import Context
from kdforge.core.errors import ConfigError
from kdforge.data.datasets import UNLABELLED
from kdforge.data.sampler import ResumableSampler
from kdforge.distill.distiller import Distiller
from kdforge.distill.schedule import epoch_settings
from kdforge.distill.teachers import build_teachers, teacher_role
from kdforge.distill.terms import build_terms, prepare_for_terms
from kdforge.engine.callbacks import build_callbacks
from kdforge.engine.evaluate import to_device
from kdforge.engine.loggers import RunLog, build_loggers, console
from kdforge.engine.preemption import ignore_stop_signals
from kdforge.engine.trainer import Trainer
from kdforge.models.build import build_model, tapped_model
from kdforge.models.multicrop import is_multicrop, pair_crops
from kdforge.tasks.base import Task


def build_task(config: RunConfig) -> Task:
    return task_class(config.task)(config)


def build_loaders(
    config: RunConfig, train: Dataset, val: Dataset, context: Context, views: int = 1
) -> tuple[DataLoader, DataLoader]:
    """Train loader with a resumable sampler (yielding ``(index, view)`` with cached `views`); both loaders
    get their own generators, because a loader without one draws its workers' seed from the global RNG
    and would shift dropout after a resume. Under torchrun each process reads its share (data.batch_size is per
    process)."""
    data = config.data
    if len(train) < data.batch_size:
        raise ConfigError(
            f"data.batch_size={data.batch_size} is larger than the training set ({len(train)} samples); lower it."
        )
    common: dict[str, Any] = dict(
        num_workers=data.num_workers,
        worker_init_fn=ignore_stop_signals,
        pin_memory=data.pin_memory and context.device.type == "cuda",
        persistent_workers=data.persistent_workers and data.num_workers > 0,
    )
    if data.num_workers > 0 and data.prefetch_factor is not None:
        common["prefetch_factor"] = data.prefetch_factor
    shard = dict(rank=context.world.rank, world=context.world.size)
    train_loader = DataLoader(
        train,
        batch_size=data.batch_size,
        sampler=ResumableSampler(len(train), shuffle=True, seed=config.seed, views=views, **shard),
        drop_last=True,
        generator=torch.Generator(),
        **common,
    )
    val_loader = DataLoader(
        val,
        batch_size=data.val_batch_size or data.batch_size,
        sampler=ResumableSampler(len(val), shuffle=False, even=False, **shard),
        generator=torch.Generator().manual_seed(config.seed),
        **common,
    )
    return train_loader, val_loader


def build_distiller(
    config: RunConfig,
    task: Task,
    context: Context,
    example: dict[str, Any],
    cache: TeacherCache | None = None,
) -> Distiller:
    """Models (with taps), terms and the teachers' input adapters (no teacher network when the teacher
    outputs come from `cache`); checks class counts on one batch."""
    device = context.device
    student_net = build_model(config.student, task.model_classes, "student")
    prepare_for_terms(config, student_net)
    taps = {**config.student.taps, **config.distill.taps.student}
    student = tapped_model(student_net, config.student, taps, task.to_outputs, "all" if config.data.multicrop else None)
    teachers, inputs = ({}, {}) if cache else build_teachers(config, task.model_classes, task.to_outputs, device)
    first = epoch_settings(config.distill, 0, config.train.epochs)
    schedule = functools.partial(epoch_settings, config.distill, total_epochs=config.train.epochs)
    pair = pair_crops if config.data.multicrop else None
    terms = build_terms(config, first)
    distiller = Distiller(
        student, teachers, task, terms, first.task_weight, inputs, schedule, cache, pair, context.world
    )
    distiller.to(device)

    def check(student_out: dict[str, torch.Tensor], teacher_outs: dict[str, dict[str, torch.Tensor]]) -> None:
        task.check_outputs(student_out, "student")
        for name, outputs in teacher_outs.items():
            task.check_outputs(outputs, teacher_role(name))

    _check_inputs(config, example["input"], inputs)
    distiller.setup(to_device(example, device), check)
    distiller.to(device)  # adapters built in setup
    return distiller


def _check_inputs(config: RunConfig, inputs: Any, adapters: dict[str, Any]) -> None:
    """The first batch's input is what the config's crops and teacher input adapters expect."""
    if config.data.multicrop is not None and not is_multicrop(inputs):
        raise ConfigError(
            f"data.multicrop is set but dataset {config.data.dataset!r} gives one view per sample; use dataset "
            "imagefolder (its training transform makes the crops), or return {'global': ..., 'local': ...} inputs."
        )
    if adapters and isinstance(inputs, dict) and not is_multicrop(inputs):
        raise ConfigError(
            f"teacher input (size / mean / std) resizes and renormalises images, but the data gives several inputs "
            f"({', '.join(inputs)}); remove the teacher's input section and adapt the inputs in its forward adapter."
        )


def first_batch(loader: DataLoader) -> dict[str, Any]:
    return next(iter(DataLoader(loader.dataset, batch_size=min(2, len(loader.dataset)))))


@dataclass
class RunParts:
    """What a Trainer is built from."""

    task: Task
    train_loader: DataLoader
    val_loader: DataLoader
    distiller: Distiller
    cache: TeacherCache | None


def build_run(config: RunConfig, context: Context) -> RunParts:
    """Task, data (through the teacher cache when enabled: built or continued first), loaders, distiller."""
    task = build_task(config)
    train_set, val_set = task.datasets()
    cache = None
    if config.cache.enabled:
        cache = _open_cache_once(config, task, train_set, val_set, context)
        train_set = CachedTeacherDataset(train_set, cache.reader)
    train_loader, val_loader = build_loaders(config, train_set, val_set, context, cache.views if cache else 1)
    distiller = build_distiller(config, task, context, first_batch(train_loader), cache)
    if distiller.needs_dataset():  # a label-free task's terms never see the labels (CRD draws any negatives)
        distiller.bind_dataset([UNLABELLED] * len(train_set) if task.embeds_only else train_set.targets)
        distiller.to(context.device)  # per-sample state (memory banks) built in bind_dataset
    return RunParts(task, train_loader, val_loader, distiller, cache)


def _open_cache_once(
    config: RunConfig, task: Task, train_set: Dataset, val_set: Dataset, context: Context
) -> TeacherCache:
    """Under torchrun rank 0 builds (or checks) the cache while the others wait, then they open it."""
    world = context.world
    say = console.print if config.log.verbose and world.is_main else _quiet
    if world.is_main:
        cache = open_cache(config, task, train_set, val_set, context.device, say)
    world.barrier()
    return cache if world.is_main else open_cache(config, task, train_set, val_set, context.device, say)


def _quiet(text: str) -> None:
    """Messages of a run with log.verbose off."""


@dataclass
class Run:
    """A built run, ready to fit: its parts, the trainer, where records go and its directory (rank 0 only)."""

    config: RunConfig
    context: Context
    parts: RunParts
    trainer: Trainer
    log: RunLog
    run_dir: Path | None


def build(config: RunConfig, context: Context, run_dir: Path | None, resume: Path | None, write: bool) -> Run:
    """The run's parts, then (on rank 0, when `write`) its directory and records, the loggers, the trainer with the
    built-in and the user's callbacks; a resume restores the trainer from its checkpoint. The loggers start last,
    so a run that fails to build leaves no tracking run open."""
    main = context.world.is_main
    loggers = build_loggers(config.log.loggers) if write and main else {}  # only rank 0 logs
    callbacks = build_callbacks(config.train.callbacks)
    parts = build_run(config, context)
    if write and run_dir is None and main:
        run_dir = new_run_dir(config)
    run_dir = run_dir if write and main else None  # only rank 0 writes files
    if run_dir is not None:
        write_run_files(run_dir, config, resumed=resume is not None)
    log = RunLog(run_dir, loggers, verbose=config.log.verbose and main)
    task, distiller = parts.task, parts.distiller
    trainer = Trainer(config, distiller, task, parts.train_loader, parts.val_loader, context, run_dir, log, callbacks)
    if resume is not None:
        trainer.resume(resume)
    log.start(run_dir.name if run_dir else "", config.to_dict(), resumed=resume is not None)
    return Run(config, context, parts, trainer, log, run_dir)
