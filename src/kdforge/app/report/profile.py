"""What a model costs to deploy: parameters, bytes on disk, multiply-accumulates and CPU latency.

The teacher-vs-student table shows these next to the metrics, so the price of each point of accuracy is
in one place.
"""

from __future__ import annotations

import copy
import functools
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdforge.data.inputs import ForwardAdapter, Inputs, call_model, map_inputs

WARMUP = 3


def input_shape(spec: Any, data: Any, side: int | None = None) -> tuple[int, int, int]:
    """(channels, height, width) one input of a model has: a square of `side`, else its spec's ``input.size``
    (a teacher reading another size than the data), else ``data.image_size``."""
    size = side or (spec.input.size if spec.input is not None and spec.input.size else None) or data.image_size
    height, width = (size, size) if isinstance(size, int) else size
    return data.in_chans, height, width


def example_input(dataset: Any) -> Inputs:
    """The first sample's input with a batch axis of 1: what a model of this data is measured on (a tensor, or
    a dict of tensors for several inputs)."""
    return map_inputs(lambda t: t.unsqueeze(0), dataset[0]["input"])


def shape_text(shape: list[int] | dict[str, list[int]]) -> str:
    """``3x224x224``, or ``signal 2x64, grid 1x8x8`` for several inputs."""
    if isinstance(shape, dict):
        return ", ".join(f"{name} {shape_text(dims)}" for name, dims in shape.items())
    return "x".join(str(d) for d in shape)


def _shape(example: Inputs) -> list[int] | dict[str, list[int]]:
    if isinstance(example, Mapping):
        return {name: _shape(value) for name, value in example.items()}
    return list(example.shape[1:])


def model_profile(
    model: nn.Module,
    example: Inputs | tuple[int, ...],
    runs: int = 20,
    threads: int = 1,
    adapter: ForwardAdapter | None = None,
) -> dict[str, Any]:
    """Cost of `model` for one input: `example` (batch 1: a tensor or a dict of tensors, called as the model is
    called in training, through `adapter`) or a shape without the batch dimension (e.g. ``(3, 224, 224)``).

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
    if isinstance(example, tuple):
        example = torch.zeros(1, *example)
    channels_last = any(
        p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        for p in net.parameters()
    )
    example = map_inputs(functools.partial(_as_measured, channels_last=channels_last), example)
    run = functools.partial(call_model, net, example, adapter)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "size_bytes": state_dict_bytes(model),
        "macs": count_macs(run),
        "latency_ms": cpu_latency_ms(run, runs, threads),
        "input_shape": _shape(example),
        "threads": threads,
    }


def _as_measured(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A float32 CPU input, channels-last for a channels-last model (measured as it runs: train.channels_last)."""
    x = x.detach().cpu()
    x = x.float() if x.is_floating_point() else x  # ids and masks keep their integer type
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


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


def count_macs(run: Callable[[], Any]) -> int:
    """Multiply-accumulates of one forward (`run`): the flop counter counts a multiply and an add as two."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        run()
    return counter.get_total_flops() // 2


def cpu_latency_ms(run: Callable[[], Any], runs: int, threads: int) -> float:
    """Median milliseconds of one forward (`run`) with `threads` CPU threads; the caller's thread count is
    restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for _ in range(WARMUP):  # first calls allocate and pick kernels
                run()
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                run()
                times.append((time.perf_counter() - start) * 1000)
    finally:
        torch.set_num_threads(previous)
    return statistics.median(times)
