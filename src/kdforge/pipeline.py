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

from kdforge.config import RunConfig, load_config
from kdforge.data.sampler import ResumableSampler
from kdforge.distill.adapters import InputAdapter
from kdforge.distill.distiller import Distiller, WeightedTerm
from kdforge.distill.losses import build_term
from kdforge.distill.schedule import EpochSettings, epoch_settings
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.engine.evaluate import evaluate, resolve_amp, to_device
from kdforge.engine.logger import RunLogger
from kdforge.engine.trainer import Trainer
from kdforge.errors import ConfigError
from kdforge.export import export_student
from kdforge.models.build import build_model, count_parameters
from kdforge.models.taps import TappedModel
from kdforge.report.summary import print_summary, write_summary
from kdforge.runtime import new_run_dir, setup_process, write_run_files
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
    config: RunConfig, train: Dataset, val: Dataset, device: torch.device
) -> tuple[DataLoader, DataLoader]:
    """Train loader with a resumable sampler; both loaders get their own generators, because a loader
    without one draws its workers' seed from the global RNG and would shift dropout after a resume."""
    data = config.data
    if len(train) < data.batch_size:
        raise ConfigError(
            f"data.batch_size={data.batch_size} is larger than the training set ({len(train)} samples); lower it."
        )
    common = dict(
        num_workers=data.num_workers,
        pin_memory=data.pin_memory and device.type == "cuda",
        persistent_workers=data.num_workers > 0,
    )
    train_loader = DataLoader(
        train,
        batch_size=data.batch_size,
        sampler=ResumableSampler(len(train), shuffle=True, seed=config.seed),
        drop_last=True,
        generator=torch.Generator(),
        **common,
    )
    val_loader = DataLoader(
        val,
        batch_size=data.val_batch_size or data.batch_size,
        shuffle=False,
        generator=torch.Generator().manual_seed(config.seed),
        **common,
    )
    return train_loader, val_loader


def build_distiller(config: RunConfig, task: Task, device: torch.device, example: dict[str, Any]) -> Distiller:
    """Models (with taps), terms and the teacher's input adapter; checks class counts on one batch."""
    student = TappedModel(
        build_model(config.student, task.num_classes, "student"), config.distill.taps.student, task.to_outputs
    )
    teacher = None
    if config.teacher is not None:
        net = build_model(config.teacher, task.num_classes, "teacher")
        teacher = TappedModel(net, config.distill.taps.teacher, task.to_outputs)
    elif config.distill.terms:
        raise ConfigError("distill.terms are set but teacher is null; set a teacher or remove the terms.")
    first = epoch_settings(config.distill, 0, config.train.epochs)
    distiller = Distiller(
        student, teacher, task, _terms(config, first), first.task_weight, _teacher_input(config), _schedule(config)
    )
    distiller.to(device)
    student_out, teacher_out = distiller.setup(to_device(example, device))
    task.check_outputs(student_out, "student")
    if teacher_out is not None:
        task.check_outputs(teacher_out, "teacher")
    distiller.to(device)  # adapters built in setup
    return distiller


def _terms(config: RunConfig, first: EpochSettings) -> list[WeightedTerm]:
    """The configured terms, built; a scheduled parameter must be an attribute the term reads each step."""
    terms = []
    for name, spec in zip(config.distill.term_names(), config.distill.terms, strict=True):
        term = build_term(spec.loss, spec.params())
        for param in spec.scheduled_params():
            if not hasattr(term, param):
                raise ConfigError(f"distillation loss {spec.loss!r} cannot schedule {param!r}: it is fixed at build.")
        terms.append(WeightedTerm(name, first.weights[name], term))
    return terms


def _schedule(config: RunConfig) -> Callable[[int], EpochSettings]:
    return functools.partial(epoch_settings, config.distill, total_epochs=config.train.epochs)


def _teacher_input(config: RunConfig) -> nn.Module | None:
    spec = config.teacher.input if config.teacher else None
    if spec is None:
        return None
    data = config.data
    return InputAdapter(data.mean, data.std, spec.mean, spec.std, spec.size)


def first_batch(loader: DataLoader) -> dict[str, Any]:
    return next(iter(DataLoader(loader.dataset, batch_size=min(2, len(loader.dataset)))))


def train(
    config: RunConfig, resume: str | Path | None = None, run_dir: Path | None = None, write: bool = True
) -> RunResult:
    """Train (or distil) the student described by `config`; writes a run directory when `write`."""
    device = setup_process(config)
    task = build_task(config)
    train_set, val_set = task.datasets()
    train_loader, val_loader = build_loaders(config, train_set, val_set, device)
    distiller = build_distiller(config, task, device, first_batch(train_loader))
    if distiller.needs_dataset():
        distiller.bind_dataset(train_set.targets)
        distiller.to(device)  # per-sample state (memory banks) built in bind_dataset
    if write and run_dir is None:
        run_dir = new_run_dir(config)
    if run_dir is not None:
        write_run_files(run_dir, config, resumed=resume is not None)
    logger = RunLogger(run_dir, config.log.tensorboard, config.log.progress, config.log.verbose)
    trainer = Trainer(config, distiller, task, train_loader, val_loader, device, run_dir, logger)
    if resume is not None:
        trainer.resume(resume)
    try:
        teacher_metrics = _evaluate_teacher(config, distiller, val_loader, task, device, logger)
        metrics = trainer.fit()
        best = _best_metrics(trainer, run_dir)
        summary = _summary(config, distiller, trainer, metrics, best, teacher_metrics)
        if run_dir is not None:
            export_student(_exported_network(trainer, run_dir), None, run_dir / "student.safetensors")
            write_summary(summary, run_dir / "summary.json")
        if config.log.verbose:
            print_summary(summary)
    finally:
        logger.close()
    return RunResult(run_dir, metrics, best, teacher_metrics, summary)


def _evaluate_teacher(
    config: RunConfig, distiller: Distiller, loader: DataLoader, task: Task, device: torch.device, logger: RunLogger
) -> dict[str, float]:
    """The teacher's metrics before training starts, so a bad teacher shows before hours are spent on it."""
    if distiller.teacher is None:
        return {}
    if not config.teacher.checkpoint:
        logger.warning(
            "the teacher has no checkpoint, so it has random weights (kdforge never downloads pretrained "
            "weights): set teacher.checkpoint (--teacher-checkpoint) to distil a trained teacher."
        )
    model = nn.Sequential(distiller.teacher_input, distiller.teacher)
    metrics = evaluate(model, loader, task, device, resolve_amp(config.train.amp, device))
    logger.log("teacher", 0, metrics)
    logger.message("teacher: " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return metrics


def _best_metrics(trainer: Trainer, run_dir: Path | None) -> dict[str, float]:
    path = run_dir / "checkpoints" / "best.pt" if run_dir else None
    if path is None or not path.is_file():
        return trainer.last_metrics
    return dict(load_checkpoint(path)["metrics"])


def _exported_network(trainer: Trainer, run_dir: Path) -> nn.Module:
    """The best checkpoint's student (its EMA when EMA is on), loaded into a copy of the network."""
    best = run_dir / "checkpoints" / "best.pt"
    net = trainer.ema.module if trainer.ema is not None else trainer.student_net
    if best.is_file():
        ckpt = load_checkpoint(best)
        state = ckpt["ema"]["module"] if trainer.ema is not None and ckpt["ema"] else ckpt["student"]
        net.load_state_dict(state)
    return net


def _summary(
    config: RunConfig,
    distiller: Distiller,
    trainer: Trainer,
    last: dict[str, float],
    best: dict[str, float],
    teacher_metrics: dict[str, float],
) -> dict[str, Any]:
    student_params = count_parameters(trainer.student_net)
    teacher_params = count_parameters(distiller.teacher) if distiller.teacher is not None else None
    return {
        "task": config.task,
        "student": {
            "name": config.student.name,
            "params": student_params,
            "metrics": best,
            "last_metrics": last,
        },
        "teacher": None
        if teacher_params is None
        else {"name": config.teacher.name, "params": teacher_params, "metrics": teacher_metrics},
        "compression": None if teacher_params is None else teacher_params / student_params,
        "epochs_run": trainer.state.epoch,
        "best_epoch": trainer.state.best_epoch,
        "stopped_early": trainer.state.stopped_early,
        "steps": trainer.state.global_step,
        "nonfinite_steps": trainer.state.nonfinite_total,
    }


def resume_target(path: str | Path) -> tuple[Path, Path]:
    """For ``--resume``: the run directory and the checkpoint (``last.pt`` when given a directory)."""
    path = Path(path)
    ckpt = path / "checkpoints" / "last.pt" if path.is_dir() else path
    if not ckpt.is_file():
        raise ConfigError(f"nothing to resume at {str(path)!r}: {str(ckpt)!r} does not exist.")
    run_dir = ckpt.parent.parent
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{str(run_dir)!r} has no config.yaml; resume needs the run directory kdforge wrote.")
    return run_dir, ckpt


def resume_config(path: str | Path, overrides: list[str] | None = None) -> tuple[RunConfig, Path, Path]:
    """The run's saved config (plus overrides), its directory and its checkpoint."""
    run_dir, ckpt = resume_target(path)
    return load_config([run_dir / "config.yaml"], overrides), run_dir, ckpt
