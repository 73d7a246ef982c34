"""Distiller: a frozen teacher, a student and weighted distillation terms, as one module.

``loss = task_weight * task_loss + sum_i weight_i * term_i``. The teacher never trains: it stays in eval
mode whatever ``train()`` is called with, its parameters have ``requires_grad=False``, and it runs under
``torch.inference_mode()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from kdforge.distill.losses.base import DistillTerm, Outputs
from kdforge.distill.schedule import EpochSettings


class TaskLoss(Protocol):
    def loss(self, outputs: Outputs, batch: dict[str, Any]) -> torch.Tensor: ...


@dataclass
class WeightedTerm:
    name: str
    weight: float
    term: DistillTerm


class Distiller(nn.Module):
    """Student + frozen teacher + terms.

    In train mode ``forward(batch)`` returns ``{"loss", "parts", "student", "teacher"}``; in eval mode it
    returns the student's outputs only. ``teacher=None`` gives plain supervised training.

    Args:
        student: module returning a dict of named outputs (a `TappedModel`).
        teacher: same, or None.
        task: object with ``loss(outputs, batch)``.
        terms: the weighted distillation terms.
        task_weight: weight of the task loss.
        teacher_input: maps the batch input to the teacher's input (resize / renormalize), or None.
        schedule: ``epoch -> EpochSettings`` (phases, scheduled weights and parameters), or None.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        task: TaskLoss,
        terms: Sequence[WeightedTerm] = (),
        task_weight: float = 1.0,
        teacher_input: nn.Module | None = None,
        schedule: Callable[[int], EpochSettings] | None = None,
    ) -> None:
        super().__init__()
        if terms and teacher is None:
            raise ValueError("distillation terms need a teacher; set teacher or remove distill.terms.")
        self.student = student
        self.teacher = teacher
        self.task = task
        self.terms = nn.ModuleList(t.term for t in terms)
        self.term_names = [t.name for t in terms]
        self.term_weights = [float(t.weight) for t in terms]
        self.task_weight = float(task_weight)
        self.teacher_input = teacher_input or nn.Identity()
        self.schedule = schedule
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: BN statistics and dropout never change
        return self

    def trainable_modules(self) -> dict[str, nn.Module]:
        """What the optimizer trains and checkpoints hold: the student and the terms' adapters."""
        return {"student": self.student, "terms": self.terms}

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        for module in self.trainable_modules().values():
            yield from (p for p in module.parameters() if p.requires_grad)

    @torch.no_grad()
    def setup(self, batch: dict[str, Any]) -> tuple[Outputs, Outputs | None]:
        """Run one example batch to build shape-dependent term parts; returns both models' outputs."""
        was_training = self.training
        self.eval()
        student = self.student(batch["input"])
        teacher = self.teacher_outputs(batch) if self.teacher is not None else None
        for term in self.terms:
            term.setup(student, teacher)
        self.train(was_training)
        return student, teacher

    def set_epoch(self, epoch: int) -> EpochSettings | None:
        """Apply the schedule's settings for 0-based `epoch` and tell every term; returns the settings."""
        settings = self.schedule(epoch) if self.schedule is not None else None
        if settings is not None:
            self.task_weight = settings.task_weight
            self.term_weights = [settings.weights[name] for name in self.term_names]
            for name, term in zip(self.term_names, self.terms, strict=True):
                for param, value in settings.params.get(name, {}).items():
                    setattr(term, param, value)
        for term in self.terms:
            term.set_epoch(epoch)
        return settings

    def needs_dataset(self) -> bool:
        return any(term.needs_dataset for term in self.terms)

    def bind_dataset(self, targets: Sequence[int]) -> None:
        """Give the training labels (-1 for unlabelled) to the terms that keep per-sample state."""
        for term in self.terms:
            if term.needs_dataset:
                term.bind_dataset(targets)

    def teacher_outputs(self, batch: dict[str, Any]) -> Outputs:
        with torch.inference_mode():
            outputs = self.teacher(self.teacher_input(batch["input"]))
        # Inference tensors cannot be saved for backward; a clone makes them ordinary constants.
        return {k: v.clone() for k, v in outputs.items()}

    def forward(self, batch: dict[str, Any]) -> dict[str, Any] | Outputs:
        student = self.student(batch["input"])
        if not self.training:
            return student
        # Terms weighted 0 (a task-only phase) are skipped, and so is the teacher when none is active.
        active = [(n, w, t) for n, w, t in zip(self.term_names, self.term_weights, self.terms, strict=True) if w]
        teacher = self.teacher_outputs(batch) if self.teacher is not None and active else {}
        parts: dict[str, torch.Tensor] = {}
        total = student_zero(student)
        if self.task_weight > 0:
            parts["task"] = self.task.loss(student, batch)
            total = total + self.task_weight * parts["task"]
        for name, weight, term in active:
            parts[name] = term(student, teacher, batch)
            total = total + weight * parts[name]
        return {"loss": total, "parts": parts, "student": student, "teacher": teacher}


def student_zero(outputs: Outputs) -> torch.Tensor:
    """A float32 zero on the outputs' device, connected to the graph so ``backward`` always works."""
    first = next(iter(outputs.values()))
    return first.float().sum() * 0.0
