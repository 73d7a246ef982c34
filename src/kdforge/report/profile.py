"""What a model costs to deploy: parameters, bytes on disk, multiply-accumulates and CPU latency.

The teacher-vs-student table shows these next to the metrics, so the price of each point of accuracy is
in one place.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

WARMUP = 3


def input_shape(spec: Any, data: Any, side: int | None = None) -> tuple[int, int, int]:
    """(channels, height, width) one input of a model has: a square of `side`, else its spec's ``input.size``
    (a teacher reading another size than the data), else ``data.image_size``."""
    size = side or (spec.input.size if spec.input is not None and spec.input.size else None) or data.image_size
    height, width = (size, size) if isinstance(size, int) else size
    return data.in_chans, height, width


def model_profile(model: nn.Module, input_shape: tuple[int, ...], runs: int = 20, threads: int = 1) -> dict[str, Any]:
    """Cost of `model` for one input of `input_shape` (without the batch dimension, e.g. ``(3, 224, 224)``).

    Returns:
        ``params``: parameter count. ``size_bytes``: bytes of the state dict's tensors as safetensors stores
        them (tensor data only; shared tensors once; the header of a few KiB is left out). ``macs``:
        multiply-accumulates of one batch-1 forward, counted by ``torch.utils.flop_counter.FlopCounterMode``
        (flops / 2): matrix products and convolutions (linear, conv, attention, bmm), not element-wise work
        (activations, norms, pooling, additions), which is cheap next to them. ``latency_ms``: median wall
        time of a batch-1 float32 forward on the CPU with `threads` threads, under ``inference_mode``, after
        warm-up, over `runs` runs. ``input_shape`` and ``threads`` say what was measured.

    The model is measured on a CPU copy in eval mode, so the caller's model (device, mode) is untouched.
    """
    net = copy.deepcopy(model).cpu().float().eval()
    example = torch.zeros(1, *input_shape)
    if example.dim() == 4 and any(
        p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        for p in net.parameters()
    ):
        example = example.contiguous(memory_format=torch.channels_last)  # measured as it runs (train.channels_last)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "size_bytes": state_dict_bytes(model),
        "macs": count_macs(net, example),
        "latency_ms": cpu_latency_ms(net, example, runs, threads),
        "input_shape": list(input_shape),
        "threads": threads,
    }


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of the state dict's tensors, each storage once (tied weights are saved once by safetensors)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in model.state_dict().values():
        key = (tensor.data_ptr(), tensor.numel())
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of ``model(example)``: the flop counter counts a multiply and an add as two."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(example)
    return counter.get_total_flops() // 2


def cpu_latency_ms(model: nn.Module, example: torch.Tensor, runs: int, threads: int) -> float:
    """Median milliseconds of ``model(example)`` with `threads` CPU threads; the caller's thread count is restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for _ in range(WARMUP):  # first calls allocate and pick kernels
                model(example)
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                model(example)
                times.append((time.perf_counter() - start) * 1000)
    finally:
        torch.set_num_threads(previous)
    return statistics.median(times)
