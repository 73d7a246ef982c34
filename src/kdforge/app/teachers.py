"""The teachers' own figures before distillation starts: their metrics on the val set and their cost."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from kdforge.app.report.profile import model_profile
from kdforge.core.config import RunConfig
from kdforge.core.distributed import ONE_PROCESS, World
from kdforge.data.inputs import Inputs
from kdforge.distill.teachers import TeacherRunner, teacher_role, teacher_stacks
from kdforge.engine.evaluate import evaluate
from kdforge.tasks.base import Task

if TYPE_CHECKING:
    from kdforge.app.build import Run


def evaluate_teachers(
    config: RunConfig,
    stacks: dict[str, nn.Module],
    loader: DataLoader,
    task: Task,
    device: torch.device,
    amp: str,
    say: Callable[[str], None],
    warn: Callable[[str], None],
    world: World = ONE_PROCESS,
) -> dict[str, dict[str, float]]:
    """Each teacher's metrics on the val set, said aloud, so a bad teacher shows before hours are spent on it."""
    results = {}
    for name, stack in stacks.items():
        if not config.teacher_specs()[name].checkpoint:
            warn(
                f"the {teacher_role(name)} has no checkpoint, so it has random weights (kdforge never downloads "
                "pretrained weights): set its checkpoint (--teacher-checkpoint) to distil a trained teacher."
            )
        results[name] = metrics = evaluate(stack, loader, task, device, amp, world=world)
        say(f"{teacher_role(name)}: " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return results


TEACHER_LATENCY_RUNS = 5  # a big teacher's CPU forward can take a second; fewer runs than the student's


def teacher_profile(teacher: TeacherRunner, example: Inputs) -> dict[str, Any]:
    """The report's cost figures of one teacher (`kdforge.app.report.profile`) on `example`, the batch-1 input it
    reads (through its input adapter)."""
    return model_profile(teacher.net.model, example, runs=TEACHER_LATENCY_RUNS, adapter=teacher.net.adapter)


def measured_teachers(run: Run) -> dict[str, dict[str, float]]:
    """Each teacher's metrics before training starts (also in metrics.jsonl); a cached teacher's were measured when
    the cache was built (its network is not loaded)."""
    distiller, trainer = run.parts.distiller, run.trainer
    if distiller.cached is not None:
        return distiller.cached.reader.manifest["teacher_metrics"]
    stacks = teacher_stacks(dict(distiller.teachers), dict(distiller.teacher_inputs), trainer.device)
    loader, log = trainer.val_loader, run.log
    task, device = run.parts.task, trainer.device
    results = evaluate_teachers(
        run.config, stacks, loader, task, device, trainer.amp, log.message, log.warning, trainer.world
    )
    for name, metrics in results.items():
        log.log("teacher", 0, {"teacher": name, **{f"teacher/{name}/{k}": v for k, v in metrics.items()}})
    return results
