"""The interface every distillation term implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from kdforge.core.distributed import ONE_PROCESS, World
from kdforge.core.errors import ConfigError
from kdforge.models.taps import TAP_PREFIX

Outputs = dict[str, torch.Tensor]


class DistillTerm(nn.Module):
    """Base class: ``forward(student, teacher, batch) -> scalar`` computed in float32 (float64 when the
    inputs are float64, for tests against float64 references).

    Optional hooks: ``prepare_model`` (each model, before its taps), ``setup`` (shapes), ``bind_dataset`` (when
    ``needs_dataset``), ``set_epoch``. State a term must keep across a resume (memory banks) belongs in buffers:
    checkpoints save the terms' state dicts. ``world`` is the training processes (the Distiller gives its own), for
    terms whose state every process must keep alike.
    """

    needs_dataset = False  # True: the pipeline calls bind_dataset with the training labels before training
    inputs = ""  # what it reads, for `kdforge methods`
    schedulable: tuple[str, ...] = ()  # parameters read from attributes at every step, so they may be scheduled
    ensemble = False  # True: reads class logits, so several teachers can be merged into one (distiller.py)
    world: World = ONE_PROCESS

    @classmethod
    def prepare_model(cls, model: nn.Module) -> None:
        """Adjust a model (student or teacher, before its taps are registered) so this term can read what it
        needs; most terms need nothing."""

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        """Build shape-dependent parts (adapters) from one example batch's outputs."""

    def bind_dataset(self, targets: Sequence[int]) -> None:
        """The training set's labels (-1 for unlabelled samples), indexed like ``batch["index"]``."""

    def set_epoch(self, epoch: int) -> None:
        """Called at the start of every epoch (0-based), for terms with their own warm-up."""

    def forward(self, student: Outputs, teacher: Outputs, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError


def softened_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float, dim: int) -> torch.Tensor:
    """``KL(softmax(t/T) || softmax(s/T))`` along `dim`, unreduced (that axis summed out)."""
    log_p_student = torch.log_softmax(student / temperature, dim=dim)
    log_p_teacher = torch.log_softmax(teacher / temperature, dim=dim)
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim)


def built(part: Any, term: str, hook: str = "setup()") -> Any:
    """`part` (an adapter, a bank), or a clear error when the term is used before `hook` built it."""
    if part is None:
        raise RuntimeError(f"{term} term used before {hook}; the Distiller and pipeline call it before training.")
    return part


def as_float(x: torch.Tensor) -> torch.Tensor:
    """An adapter output (bf16 under autocast) in float32, or float64 when float64, as ``pick`` reads inputs."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def pick(outputs: Outputs, key: str, role: str) -> torch.Tensor:
    """``outputs[key]`` (an output such as ``logits`` or ``embedding``, or a tap by its name or as ``feat:<name>``)
    in float32, or float64 when given float64 (loss math never runs in fp16/bf16: a log-softmax of fp16 logits
    overflows), with a clear error when absent."""
    if key not in outputs and TAP_PREFIX + key in outputs:
        key = TAP_PREFIX + key
    elif key not in outputs and key.removeprefix(TAP_PREFIX) in outputs:
        key = key.removeprefix(TAP_PREFIX)  # a model output by name (a features task's ``embedding``)
    if key not in outputs:
        raise ConfigError(
            f"the {role}'s outputs have no {key!r}; available: {sorted(outputs)}. Taps are declared under "
            f"distill.taps.{role} (or on a named teacher's spec: teachers.NAME.taps)."
        )
    value = outputs[key]
    return value if value.dtype == torch.float64 else value.float()
