"""Evaluation of a model on a loader with the task's metrics."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from kdforge.core.distributed import ONE_PROCESS, World
from kdforge.data.inputs import map_inputs
from kdforge.tasks.base import Task


def to_device(batch: dict[str, Any], device: torch.device, channels_last: bool = False) -> dict[str, Any]:
    """The batch's tensors on `device`; with `channels_last`, a 4-D ``input`` also in channels-last memory format,
    to match a channels-last student (a mismatch makes every conv convert it again)."""
    non_blocking = device.type == "cuda"
    moved = map_inputs(lambda v: v.to(device, non_blocking=non_blocking), batch)
    image = moved.get("input")
    if channels_last and isinstance(image, torch.Tensor) and image.dim() == 4:  # (B, C, H, W)
        moved["input"] = image.contiguous(memory_format=torch.channels_last)
    return moved


def autocast_context(device: torch.device, amp: str) -> Callable[[], AbstractContextManager]:
    """A factory of autocast contexts for the resolved AMP mode (``off`` gives a null context)."""
    if amp == "off":
        return nullcontext
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def resolve_amp(amp: str, device: torch.device) -> str:
    """``auto`` means bf16 on a CUDA device that supports it, fp16 on older CUDA, off on CPU."""
    if device.type != "cuda":
        return "off"
    if amp == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return amp


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    task: Task,
    device: torch.device,
    amp: str = "off",
    channels_last: bool = False,
    world: World = ONE_PROCESS,
) -> dict[str, float]:
    """Metrics of `model` (returning the task's outputs dict) over `loader`; restores its train/eval mode.
    `channels_last` feeds 4-D inputs in channels-last memory format (for a model converted to it). Under torchrun
    (`world`) each process evaluates its share and the metrics are summed over all."""
    was_training = model.training
    model.eval()
    metrics = task.metrics()
    autocast = autocast_context(device, amp)
    for batch in loader:
        batch = to_device(batch, device, channels_last)
        with autocast():
            outputs = model(batch["input"])
        metrics.update(outputs, batch)
    model.train(was_training)
    world.sum_attributes(metrics, metrics.sums)
    for name in metrics.rows:  # every process joins each gather, also one without val rows
        local = getattr(metrics, name)
        rows = world.gather_varying_rows(torch.cat(local) if local else None)
        setattr(metrics, name, [rows] if rows is not None else [])
    return metrics.compute()
