"""Building the frozen teachers and running them where and how ``teacher_runtime`` says.

A teacher may live on its own device (e.g. the CPU while the student trains on a GPU), hold bf16 or fp16
weights, run channels-last and compiled. Its outputs always come back on the device of its input.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from kdforge.core.config import RunConfig, TeacherRuntimeConfig
from kdforge.core.context import resolve_device
from kdforge.data.inputs import Inputs, first_tensor, map_inputs
from kdforge.distill.adapters import InputAdapter
from kdforge.distill.distiller import DEFAULT_TEACHER
from kdforge.distill.terms import prepare_for_terms
from kdforge.models.build import build_model, tapped_model
from kdforge.models.taps import TappedModel

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def teacher_role(name: str) -> str:
    """How a teacher is named in messages: "teacher", or "teacher 'big'" for one of several."""
    return "teacher" if name == DEFAULT_TEACHER else f"teacher {name!r}"


class TeacherRunner(nn.Module):
    """A tapped teacher pinned to its runtime: moves its input to its device, dtype and memory format, and
    its outputs back to the input's device. ``.to()`` leaves a teacher with its own device where it is."""

    def __init__(self, net: TappedModel, runtime: TeacherRuntimeConfig, device: torch.device) -> None:
        super().__init__()
        self.net = net
        self.pinned = runtime.device is not None
        self.dtype = DTYPES.get(runtime.dtype)  # None for auto: fp32 weights, autocast decides the compute
        self.channels_last = runtime.channels_last
        net.to(device=device, dtype=self.dtype)
        if self.channels_last:
            net.to(memory_format=torch.channels_last)
        self.device = device
        if runtime.compile:
            net.compile()  # in place: the parameters stay registered once

    def train(self, mode: bool = True) -> TeacherRunner:
        return super().train(False)  # frozen: BN statistics and dropout never change, whoever calls train()

    def _apply(self, fn: Any, recurse: bool = True) -> TeacherRunner:
        return self if self.pinned else super()._apply(fn, recurse)

    def token_layout(self) -> tuple[int, int, int] | None:
        return self.net.token_layout()

    def forward(self, inputs: Inputs) -> dict[str, torch.Tensor]:
        home = first_tensor(inputs).device
        outputs = self.net(map_inputs(functools.partial(self._prepared, home=home), inputs))
        return {k: _moved(v, home, v.dtype) for k, v in outputs.items()}

    def _prepared(self, x: torch.Tensor, home: torch.device) -> torch.Tensor:
        """One input tensor on the teacher's device, dtype and memory format."""
        dtype = self.dtype if self.dtype is not None and x.is_floating_point() else x.dtype  # ids, masks keep theirs
        x = _moved(x, self.device if self.pinned else home, dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def _moved(x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """`x` on `device`; asynchronous only towards a GPU (a GPU-to-CPU copy must finish before it is read)."""
    return x.to(device, dtype=dtype, non_blocking=device.type == "cuda")


def teacher_device(config: RunConfig, device: torch.device) -> torch.device:
    """Where the teachers run: ``teacher_runtime.device``, else the run's device."""

    return resolve_device(config.teacher_runtime.device) if config.teacher_runtime.device else device


def teacher_stacks(
    teachers: dict[str, nn.Module], inputs: dict[str, nn.Module], device: torch.device
) -> dict[str, nn.Module]:
    """Each teacher behind its input adapter (when it has one), as it sees the student's batches."""
    stacks = {name: nn.Sequential(inputs[name], net) if name in inputs else net for name, net in teachers.items()}
    for stack in stacks.values():
        stack.to(device)  # the input adapters; a teacher with its own device stays there
    return stacks


def build_teachers(
    config: RunConfig, num_classes: int | None, to_outputs: Any, device: torch.device
) -> tuple[dict[str, TeacherRunner], dict[str, InputAdapter]]:
    """Every configured teacher (tapped, frozen, on its runtime) and the input adapters of those whose
    input differs from the data pipeline's.

    Each is built under its own RNG seeded by ``config.seed``: a randomly initialised teacher is then the
    same whether it is built for the cache or for a live run, and building it never shifts the global RNG
    (so a cached run and a live run initialise and train the student identically).
    """
    runtime, where = config.teacher_runtime, teacher_device(config, device)
    teachers, inputs = {}, {}
    for name, spec in config.teacher_specs().items():
        taps = {**spec.taps, **(config.distill.taps.teacher if name == DEFAULT_TEACHER else {})}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            net = build_model(spec, num_classes, teacher_role(name))
            prepare_for_terms(config, net)
            net = tapped_model(net, spec, taps, to_outputs, "global" if config.data.multicrop else None)
        net.requires_grad_(False).eval()
        teachers[name] = TeacherRunner(net, runtime, where)
        if spec.input is not None:
            inputs[name] = InputAdapter(
                config.data.mean, config.data.std, spec.input.mean, spec.input.std, spec.input.size
            )
    return teachers, inputs
