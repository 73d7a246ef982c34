"""Distiller: frozen teachers, a student and weighted distillation terms, as one module.

``loss = task_weight * task_loss + sum_i weight_i * term_i``. The teachers never train: they stay in eval
mode whatever ``train()`` is called with, their parameters have ``requires_grad=False``, and they run
under ``torch.inference_mode()``. A term reads one teacher (the first by default) or the ensemble of
several.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from kdforge.core.distributed import ONE_PROCESS, World
from kdforge.core.errors import ConfigError
from kdforge.distill.adapters import register_token_layout
from kdforge.distill.losses.base import DistillTerm, Outputs
from kdforge.distill.schedule import EpochSettings
from kdforge.models.multicrop import global_crops
from kdforge.models.taps import TAP_PREFIX

DEFAULT_TEACHER = "teacher"


class TaskLoss(Protocol):
    def loss(self, outputs: Outputs, batch: dict[str, Any]) -> torch.Tensor: ...


class CachedTeachers(Protocol):
    """Teacher outputs read from the batch (the teacher cache) instead of computed by a live teacher."""

    names: list[str]
    token_layouts: list[tuple[int, int, int]]

    def outputs(self, batch: dict[str, Any], names: Sequence[str]) -> dict[str, Outputs]: ...


@dataclass
class WeightedTerm:
    name: str
    weight: float
    term: DistillTerm
    teachers: tuple[str, ...] = ()  # empty: the first teacher; several: their ensemble


def ensemble_outputs(outputs: Sequence[Outputs], temperature: float = 1.0) -> Outputs:
    """One teacher's worth of outputs from several: task outputs (logits, class axis 1) become
    ``T * log(mean_i softmax(z_i / T))``, so a term softening them at T sees exactly the mean of the
    teachers' softened probabilities; taps are averaged where every teacher's shape agrees."""
    merged: Outputs = {}
    for key in set.intersection(*(set(o) for o in outputs)):
        values = [o[key].float() for o in outputs]
        if any(v.shape != values[0].shape for v in values):
            continue
        if key.startswith(TAP_PREFIX):
            merged[key] = torch.stack(values).mean(0)
        else:
            probs = torch.stack([(v / temperature).softmax(dim=1) for v in values]).mean(0)
            merged[key] = temperature * probs.clamp_min(1e-12).log()
    return merged


class StudentObjective(nn.Module):
    """The trainable side of a distiller: the student and the terms (with their adapters), turning a batch and
    the teachers' outputs into the weighted loss. The only module DistributedDataParallel wraps: the frozen
    teachers stay outside it.

    ``forward(batch, teachers)`` returns ``{"loss", "parts", "student"}``.
    """

    def __init__(
        self,
        student: nn.Module,
        task: TaskLoss,
        terms: Sequence[WeightedTerm],
        task_weight: float,
        term_teachers: list[tuple[str, ...]],
        pair: Callable[[Outputs, Outputs], tuple[Outputs, Outputs]] | None,
    ) -> None:
        super().__init__()
        self.student = student
        self.terms = nn.ModuleList(t.term for t in terms)
        self.term_names = [t.name for t in terms]
        self.term_weights = [float(t.weight) for t in terms]
        self.term_teachers = term_teachers
        self.task_weight = float(task_weight)
        self.task = task
        self.pair = pair

    def active_terms(self) -> list[int]:
        """Indices of the terms weighted above 0 (a task-only phase weights them all 0: none runs)."""
        return [i for i, weight in enumerate(self.term_weights) if weight]

    def term_inputs(self, index: int, student: Outputs, teachers: dict[str, Outputs]) -> tuple[Outputs, Outputs]:
        """What term `index` reads: the student's outputs and its teacher's (or its teachers' ensemble), paired."""
        names = self.term_teachers[index]
        if len(names) == 1:
            view = teachers[names[0]]
        else:
            view = ensemble_outputs([teachers[n] for n in names], getattr(self.terms[index], "temperature", 1.0))
        return self.pair(student, view) if self.pair is not None else (student, view)

    def forward(self, batch: dict[str, Any], teachers: dict[str, Outputs]) -> dict[str, Any]:
        student = self.student(batch["input"])
        parts: dict[str, torch.Tensor] = {}
        total = student_zero(student)
        if self.task_weight > 0:
            parts["task"] = self.task.loss(student, batch)
            total = total + self.task_weight * parts["task"]
        for i in self.active_terms():
            parts[self.term_names[i]] = value = self.terms[i](*self.term_inputs(i, student, teachers), batch)
            total = total + self.term_weights[i] * value
        return {"loss": total, "parts": parts, "student": student}


class Distiller(nn.Module):
    """Student + frozen teachers + terms.

    In train mode ``forward(batch)`` returns ``{"loss", "parts", "student", "teacher", "teachers"}``
    (``teacher``: the first teacher's outputs; ``teachers``: every computed teacher's, by name): the teachers'
    outputs (`teacher_outputs`), then the `objective` on them. A training loop may call the two itself, the
    objective wrapped in DistributedDataParallel. In eval mode it returns the student's outputs only. No teacher
    gives plain supervised training. With `cached` teachers no teacher network exists: their outputs come with
    the batch.

    Args:
        student: module returning a dict of named outputs (a `TappedModel`).
        teacher: one module, ``{name: module}`` for several, or None.
        task: object with ``loss(outputs, batch)``.
        terms: the weighted distillation terms.
        task_weight: weight of the task loss.
        teacher_input: per teacher (same form as `teacher`), maps the batch input to its input, or None.
        schedule: ``epoch -> EpochSettings`` (phases, scheduled weights and parameters), or None.
        cached: cached teacher outputs, used instead of `teacher` (which is then None).
        pair: lines the student's outputs up with a teacher's for the terms (multi-crop: `pair_crops`), or None.
        world: the training processes, given to the terms (a memory bank moves with every process's batch).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | Mapping[str, nn.Module] | None,
        task: TaskLoss,
        terms: Sequence[WeightedTerm] = (),
        task_weight: float = 1.0,
        teacher_input: nn.Module | Mapping[str, nn.Module] | None = None,
        schedule: Callable[[int], EpochSettings] | None = None,
        cached: CachedTeachers | None = None,
        pair: Callable[[Outputs, Outputs], tuple[Outputs, Outputs]] | None = None,
        world: World = ONE_PROCESS,
    ) -> None:
        super().__init__()
        teachers = _named(teacher)
        self.cached = cached
        self.teacher_names = list(teachers) or (list(cached.names) if cached is not None else [])
        if terms and not self.teacher_names:
            raise ValueError("distillation terms need a teacher; set teacher or remove distill.terms.")
        self.teachers = nn.ModuleDict(teachers)
        inputs = _named(teacher_input)
        self.teacher_inputs = nn.ModuleDict({n: inputs.get(n, nn.Identity()) for n in teachers})
        first = next(iter(self.teacher_names), None)
        term_teachers = [t.teachers or ((first,) if first else ()) for t in terms]
        self.objective = StudentObjective(student, task, terms, task_weight, term_teachers, pair)
        self.schedule = schedule
        for term in self.objective.terms:
            term.world = world
        for net in self.teachers.values():
            net.requires_grad_(False)
            net.eval()

    @property
    def student(self) -> nn.Module:
        return self.objective.student

    @student.setter
    def student(self, module: nn.Module) -> None:  # e.g. its torch.compile'd wrapper
        self.objective.student = module

    @property
    def terms(self) -> nn.ModuleList:
        return self.objective.terms

    @property
    def term_names(self) -> list[str]:
        return self.objective.term_names

    @property
    def term_weights(self) -> list[float]:
        return self.objective.term_weights

    @property
    def task_weight(self) -> float:
        return self.objective.task_weight

    def loss_weights(self) -> dict[str, float]:
        """Each loss part's current weight: ``task`` and every term by name."""
        return {"task": self.task_weight, **dict(zip(self.term_names, self.term_weights, strict=True))}

    @property
    def teacher(self) -> nn.Module | None:
        """The first (usually the only) teacher."""
        return next(iter(self.teachers.values()), None)

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        for net in self.teachers.values():
            net.eval()  # frozen: BN statistics and dropout never change
        return self

    def trainable_modules(self) -> dict[str, nn.Module]:
        """What the optimizer trains and checkpoints hold: the student and the terms' adapters."""
        return {"student": self.student, "terms": self.terms}

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        for module in self.trainable_modules().values():
            yield from (p for p in module.parameters() if p.requires_grad)

    @torch.no_grad()
    def setup(
        self, batch: dict[str, Any], check: Callable[[Outputs, dict[str, Outputs]], None] | None = None
    ) -> tuple[Outputs, dict[str, Outputs]]:
        """Run one example batch to build shape-dependent term parts; returns the student's outputs and
        every teacher's. `check` sees those outputs first (e.g. the task's class-count check)."""
        was_training = self.training
        self.eval()
        student = self.student(batch["input"])
        teachers = self.teacher_outputs(batch, self.teacher_names)
        if check is not None:
            check(student, teachers)
        layouts = [m.token_layout() for m in (self.student, *self.teachers.values()) if hasattr(m, "token_layout")]
        for layout in layouts + (self.cached.token_layouts if self.cached is not None else []):
            if layout is not None:
                register_token_layout(layout)  # how adapters turn this model's tokens into maps
        for index, term in enumerate(self.terms):
            paired, view = self.objective.term_inputs(index, student, teachers)
            try:
                term.setup(paired, view)
                if not term.needs_dataset:  # a dry run: shape mistakes surface now, not after an epoch
                    term(paired, view, batch)
            except (ValueError, RuntimeError, KeyError) as exc:
                raise ConfigError(
                    f"distillation term {self.term_names[index]!r} does not fit the models: {exc}"
                ) from exc
        self.train(was_training)
        return student, teachers

    def set_epoch(self, epoch: int) -> EpochSettings | None:
        """Apply the schedule's settings for 0-based `epoch` and tell every term; returns the settings."""
        settings = self.schedule(epoch) if self.schedule is not None else None
        if settings is not None:
            self.objective.task_weight = settings.task_weight
            self.objective.term_weights = [settings.weights[name] for name in self.term_names]
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

    def step_teachers(self) -> list[str]:
        """The teachers a training step runs: those the active terms read (none in a task-only phase)."""
        objective = self.objective
        return list(dict.fromkeys(n for i in objective.active_terms() for n in objective.term_teachers[i]))

    def teacher_outputs(self, batch: dict[str, Any], names: Sequence[str]) -> dict[str, Outputs]:
        """The named teachers' outputs, computed under inference mode (or read from the cache)."""
        if self.cached is not None:
            return self.cached.outputs(batch, names)
        result = {}
        for name in names:
            with torch.inference_mode():
                outputs = self.teachers[name](self.teacher_inputs[name](global_crops(batch["input"])))
            # Inference tensors cannot be saved for backward; a clone makes them ordinary constants.
            result[name] = {k: v.clone() for k, v in outputs.items()}
        return result

    def forward(self, batch: dict[str, Any]) -> dict[str, Any] | Outputs:
        if not self.training:
            return self.student(batch["input"])
        teachers = self.teacher_outputs(batch, self.step_teachers())
        first = next(iter(self.teacher_names), None)
        return {**self.objective(batch, teachers), "teacher": teachers.get(first, {}), "teachers": teachers}


def _named(value: nn.Module | Mapping[str, nn.Module] | None) -> dict[str, nn.Module]:
    if value is None:
        return {}
    return dict(value) if isinstance(value, Mapping) else {DEFAULT_TEACHER: value}


def student_zero(outputs: Outputs) -> torch.Tensor:
    """A float32 zero on the outputs' device, connected to the graph so ``backward`` always works."""
    first = next(iter(outputs.values()))
    return first.float().sum() * 0.0
