"""Build a run from a `RunConfig` (task, data, models, distiller, trainer) and execute it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdforge.app.cache.build import cache_report, open_cache
from kdforge.app.cache.reading import CachedTeacherDataset, TeacherCache
from kdforge.app.export import export_student
from kdforge.app.report.html import write_report
from kdforge.app.report.profile import example_input, model_profile
from kdforge.app.report.summary import print_summary, write_summary
from kdforge.app.resume import preempted_run
from kdforge.app.runtime import new_run_dir, setup_process, write_run_files
from kdforge.core.config import RunConfig
from kdforge.core.distributed import barrier, current_world
from kdforge.core.errors import ConfigError
from kdforge.data.datasets import UNLABELLED
from kdforge.data.sampler import ResumableSampler
from kdforge.distill.distiller import Distiller, WeightedTerm
from kdforge.distill.losses import build_term, term_signature
from kdforge.distill.losses.dense import expose_attention
from kdforge.distill.schedule import EpochSettings, epoch_settings
from kdforge.distill.teachers import (
    build_teachers,
    evaluate_teachers,
    teacher_profile,
    teacher_role,
    teacher_stacks,
)
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.engine.evaluate import to_device
from kdforge.engine.logger import RunLogger, console
from kdforge.engine.preemption import ignore_stop_signals
from kdforge.engine.trainer import Trainer
from kdforge.models.build import build_model, count_parameters, tapped_model
from kdforge.models.checkpoint import evaluated_weights
from kdforge.models.multicrop import is_multicrop, pair_crops
from kdforge.tasks.base import TASKS, Task


@dataclass
class RunResult:
    run_dir: Path | None
    metrics: dict[str, float]
    best_metrics: dict[str, float]
    teacher_metrics: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def build_task(config: RunConfig) -> Task:
    return TASKS.get(config.task)(config)


def build_loaders(
    config: RunConfig, train: Dataset, val: Dataset, device: torch.device, views: int = 1
) -> tuple[DataLoader, DataLoader]:
    """Train loader with a resumable sampler (yielding ``(index, view)`` with cached `views`); both loaders
    get their own generators, because a loader without one draws its workers' seed from the global RNG
    and would shift dropout after a resume."""
    data = config.data
    if len(train) < data.batch_size:
        raise ConfigError(
            f"data.batch_size={data.batch_size} is larger than the training set ({len(train)} samples); lower it."
        )
    common: dict[str, Any] = dict(
        num_workers=data.num_workers,
        worker_init_fn=ignore_stop_signals,
        pin_memory=data.pin_memory and device.type == "cuda",
        persistent_workers=data.persistent_workers and data.num_workers > 0,
    )
    if data.num_workers > 0 and data.prefetch_factor is not None:
        common["prefetch_factor"] = data.prefetch_factor
    world = current_world()  # under torchrun, data.batch_size is per process
    shard = dict(rank=world.rank, world=world.size)
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
    device: torch.device,
    example: dict[str, Any],
    cache: TeacherCache | None = None,
) -> Distiller:
    """Models (with taps), terms and the teachers' input adapters (no teacher network when the teacher
    outputs come from `cache`); checks class counts on one batch."""
    student_net = build_model(config.student, task.model_classes, "student")
    taps = {**config.student.taps, **config.distill.taps.student}
    student = tapped_model(student_net, config.student, taps, task.to_outputs, "all" if config.data.multicrop else None)
    teachers, inputs = ({}, {}) if cache else build_teachers(config, task.model_classes, task.to_outputs, device)
    if any(term.loss == "attention" for term in config.distill.terms):
        expose_attention(student_net)  # timm's fused attention never materialises the probabilities a tap reads
    first = epoch_settings(config.distill, 0, config.train.epochs)
    pair = pair_crops if config.data.multicrop else None
    distiller = Distiller(
        student, teachers, task, _terms(config, first), first.task_weight, inputs, _schedule(config), cache, pair
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


def _terms(config: RunConfig, first: EpochSettings) -> list[WeightedTerm]:
    """The configured terms, built, with their epoch-0 weights (config validation checked what they schedule).
    A term that skips unlabelled pixels gets ``data.ignore_index`` unless it sets its own."""
    terms = []
    for name, spec in zip(config.distill.term_names(), config.distill.terms, strict=True):
        params = spec.params()
        if "ignore_index" in term_signature(spec.loss)[0]:
            params.setdefault("ignore_index", config.data.ignore_index)
        term = build_term(spec.loss, params)
        terms.append(WeightedTerm(name, first.weights[name], term, tuple(spec.teachers or ())))
    return terms


def _schedule(config: RunConfig) -> Callable[[int], EpochSettings]:
    return functools.partial(epoch_settings, config.distill, total_epochs=config.train.epochs)


def _quiet(text: str) -> None:
    """Messages of a run with log.verbose off."""


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


def build_run(config: RunConfig, device: torch.device) -> RunParts:
    """Task, data (through the teacher cache when enabled: built or continued first), loaders, distiller."""
    task = build_task(config)
    train_set, val_set = task.datasets()
    cache = None
    if config.cache.enabled:
        cache = _open_cache_once(config, task, train_set, val_set, device)
        train_set = CachedTeacherDataset(train_set, cache.reader)
    train_loader, val_loader = build_loaders(config, train_set, val_set, device, cache.views if cache else 1)
    distiller = build_distiller(config, task, device, first_batch(train_loader), cache)
    if distiller.needs_dataset():  # a label-free task's terms never see the labels (CRD draws any negatives)
        distiller.bind_dataset([UNLABELLED] * len(train_set) if task.embeds_only else train_set.targets)
        distiller.to(device)  # per-sample state (memory banks) built in bind_dataset
    return RunParts(task, train_loader, val_loader, distiller, cache)


def _open_cache_once(
    config: RunConfig, task: Task, train_set: Dataset, val_set: Dataset, device: torch.device
) -> TeacherCache:
    """Under torchrun rank 0 builds (or checks) the cache while the others wait, then they open it."""
    world = current_world()
    say = console.print if config.log.verbose and world.is_main else _quiet
    if world.is_main:
        cache = open_cache(config, task, train_set, val_set, device, say)
    barrier()
    return cache if world.is_main else open_cache(config, task, train_set, val_set, device, say)


def train(
    config: RunConfig, resume: str | Path | None = None, run_dir: Path | None = None, write: bool = True
) -> RunResult:
    """Train (or distil) the student described by `config`; writes a run directory when `write`."""
    device = setup_process(config)
    world = current_world()
    if write and run_dir is None and resume is None:
        run_dir, resume = preempted_run(config)
    parts = build_run(config, device)
    task, distiller, cache = parts.task, parts.distiller, parts.cache
    train_loader, val_loader = parts.train_loader, parts.val_loader
    if write and run_dir is None and world.is_main:
        run_dir = new_run_dir(config)
    run_dir = run_dir if world.is_main else None  # only rank 0 writes files
    if run_dir is not None:
        write_run_files(run_dir, config, resumed=resume is not None)
    main = world.is_main
    logger = RunLogger(run_dir, config.log.tensorboard, config.log.progress and main, config.log.verbose and main)
    trainer = Trainer(config, distiller, task, train_loader, val_loader, device, run_dir, logger)
    if resume is not None:
        trainer.resume(resume)
    try:
        with trainer.stop:  # a signal during the teacher's evaluation also stops cleanly (before the first step)
            if cache is not None:  # measured when the cache was built; the teacher is not loaded
                teachers_metrics = cache.reader.manifest["teacher_metrics"]
            else:
                teachers_metrics = _evaluate_teachers(config, distiller, val_loader, task, device, trainer.amp, logger)
            metrics = trainer.fit()
        teacher_metrics = next(iter(teachers_metrics.values()), {})
        best_ckpt = _best_checkpoint(run_dir, config.train.checkpoint.best_name)
        best = dict(best_ckpt["metrics"]) if best_ckpt is not None else trainer.last_metrics
        summary = _summary(config, distiller, trainer, metrics, best, teachers_metrics)
        if run_dir is not None:
            net = _exported_network(trainer, best_ckpt)
            export_student(net, None, run_dir / "student.safetensors")
            if config.log.report:
                _add_profiles(summary, distiller, net, val_loader.dataset)
            write_summary(summary, run_dir / "summary.json")
            if config.log.report:
                write_report([run_dir], run_dir / "report.html")
        if config.log.verbose:
            print_summary(summary)
    finally:
        logger.close()
    return RunResult(run_dir, metrics, best, teacher_metrics, summary)


def build_cache(config: RunConfig, rebuild: bool = False) -> dict[str, Any]:
    """Build (or continue, or check) the teacher cache `config` describes; returns its size report."""
    if not config.teacher_specs():
        raise ConfigError("the config has no teacher, so there is nothing to cache; set teacher (or teachers).")
    device = setup_process(config)
    task = build_task(config)
    train_set, val_set = task.datasets()
    cache = open_cache(config, task, train_set, val_set, device, console.print, rebuild)
    return {"path": str(cache.reader.path), **cache_report(cache.reader)}


def _evaluate_teachers(
    config: RunConfig,
    distiller: Distiller,
    loader: DataLoader,
    task: Task,
    device: torch.device,
    amp: str,
    logger: RunLogger,
) -> dict[str, dict[str, float]]:
    """Each teacher's metrics before training starts, also in metrics.jsonl."""
    stacks = teacher_stacks(dict(distiller.teachers), dict(distiller.teacher_inputs), device)
    results = evaluate_teachers(config, stacks, loader, task, device, amp, logger.message, logger.warning)
    for name, metrics in results.items():
        logger.log("teacher", 0, {"teacher": name, **{f"teacher/{name}/{k}": v for k, v in metrics.items()}})
    return results


def _best_checkpoint(run_dir: Path | None, name: str) -> dict[str, Any] | None:
    """The run's best checkpoint, read once for its metrics and its weights (None when there is none)."""
    path = run_dir / "checkpoints" / name if run_dir else None
    return load_checkpoint(path) if path is not None and path.is_file() else None


def _exported_network(trainer: Trainer, best: dict[str, Any] | None) -> nn.Module:
    """The best checkpoint's student (its EMA when EMA is on), loaded into the trained network."""
    net = trainer.ema.module if trainer.ema is not None else trainer.student_net
    if best is not None:
        net.load_state_dict(evaluated_weights(best))
    return net


def _add_profiles(summary: dict[str, Any], distiller: Distiller, student: nn.Module, val_set: Dataset) -> None:
    """Parameters, size, MACs and CPU latency of the student and each teacher, for the report's table (a cached
    teacher was measured when the cache was built)."""
    example = example_input(val_set)
    summary["student"]["profile"] = model_profile(student, example, adapter=distiller.student.adapter)
    cached = _cached_profiles(distiller)
    for entry in summary["teachers"]:
        name = entry["teacher"]
        teacher_example = distiller.teacher_inputs[name](example) if not cached else None
        entry["profile"] = cached[name] if cached else teacher_profile(distiller.teachers[name], teacher_example)


def _cached_profiles(distiller: Distiller) -> dict[str, dict[str, Any]]:
    """The cached teachers' profiles, measured when the cache was built ({} with live teachers)."""
    return distiller.cached.reader.manifest["teacher_profiles"] if distiller.cached is not None else {}


def _summary(
    config: RunConfig,
    distiller: Distiller,
    trainer: Trainer,
    last: dict[str, float],
    best: dict[str, float],
    teachers_metrics: dict[str, dict[str, float]],
) -> dict[str, Any]:
    student_params = count_parameters(trainer.student_net)
    cached = _cached_profiles(distiller)
    teachers = [
        {
            "teacher": name,
            "name": spec.name,
            "params": cached[name]["params"] if cached else count_parameters(distiller.teachers[name]),
            "metrics": teachers_metrics.get(name, {}),
        }
        for name, spec in config.teacher_specs().items()
    ]
    return {
        "task": config.task,
        "student": {"name": config.student.name, "params": student_params, "metrics": best, "last_metrics": last},
        "teacher": teachers[0] if teachers else None,
        "teachers": teachers,
        "compression": teachers[0]["params"] / student_params if teachers else None,
        "epochs_run": trainer.state.epoch,
        "best_epoch": trainer.state.best_epoch,
        "stopped_early": trainer.state.stopped_early,
        "steps": trainer.state.global_step,
        "nonfinite_steps": trainer.state.nonfinite_total,
    }
