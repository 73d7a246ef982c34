"""Several processes launched by ``torchrun``: one per GPU (NCCL) or CPU process (gloo).

Each process trains an identical student on its share of every global batch; gradients are averaged by
DistributedDataParallel, metric sums and logged losses are summed across processes, and only rank 0 writes
files. The teacher is replicated (it never trains, so it is never wrapped).

A `World` is this process's place among the others and carries the collectives. It is made once
(`init_distributed`) and passed to whatever needs it; ``World()`` is one process, where every collective is
the identity, so code written for torchrun runs unchanged in a notebook or a test.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def joined(cls) -> World:
        """The world of the process group this process has joined (one process when there is none)."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of `values` over the processes (in place; returned for chaining)."""
        if self.distributed:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def min(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise minimum over the processes, e.g. of "all good" flags (in place)."""
        if self.distributed:
            dist.all_reduce(values, op=dist.ReduceOp.MIN)
        return values

    def sum_attributes(self, obj: Any, names: Sequence[str]) -> None:
        """Replace each attribute `names` of `obj` (a metrics accumulator) by its sum over processes: numbers
        become floats; tensors (e.g. a confusion matrix) are summed in place and keep their dtype and device."""
        if not self.distributed or not names:
            return
        tensors = [name for name in names if isinstance(getattr(obj, name), torch.Tensor)]  # same order everywhere
        for name in tensors:
            tensor = getattr(obj, name)
            tensor.copy_(self.sum(tensor.to(_collective_device())))  # NCCL reduces only GPU tensors
        numbers = [name for name in names if name not in tensors]
        if not numbers:
            return
        values = [float(getattr(obj, name)) for name in numbers]
        totals = self.sum(torch.tensor(values, dtype=torch.float64, device=_collective_device()))
        for name, total in zip(numbers, totals.tolist(), strict=True):
            setattr(obj, name, total)

    def average_buffers(self, module: nn.Module) -> None:
        """Average floating-point buffers (BN running statistics) over processes: each process saw other data."""
        for buffer in module.buffers():
            if self.distributed and buffer.is_floating_point():
                self.sum(buffer).div_(self.size)

    def gather_rows(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every process's rows of each tensor, concatenated in rank order (equal shapes on every process)."""
        if not self.distributed:
            return tensors
        gathered = []
        for tensor in tensors:
            parts = [torch.empty_like(tensor) for _ in range(self.size)]
            dist.all_gather(parts, tensor.contiguous())
            gathered.append(torch.cat(parts))
        return tuple(gathered)

    def gather_varying_rows(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        """Every process's rows of `tensor`, concatenated in rank order. Row counts may differ (an uneven val
        split) and a process may have none (None): every process must call this, since it is a collective."""
        if not self.distributed:
            return tensor
        meta = None if tensor is None else (len(tensor), tuple(tensor.shape[1:]), tensor.dtype)
        metas: list[Any] = [None] * self.size
        dist.all_gather_object(metas, meta)
        known = [m for m in metas if m is not None]
        if not known:
            return None
        _, shape, dtype = known[0]
        device = _collective_device()
        local = tensor.to(device) if tensor is not None else torch.empty(0, *shape, dtype=dtype, device=device)
        counts = [m[0] if m is not None else 0 for m in metas]
        longest = max(counts)
        padded = torch.cat([local, local.new_zeros(longest - len(local), *shape)])
        (parts,) = self.gather_rows(padded)
        rows = torch.cat([chunk[:n] for chunk, n in zip(parts.split(longest), counts, strict=True)])
        return rows.to(tensor.device) if tensor is not None else rows


ONE_PROCESS = World()  # a default argument: no process group, every collective the identity


def init_distributed(use_cuda: bool) -> World:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE`` > 1), else one process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def _collective_device() -> torch.device:
    """Where tensors for collectives live: the current GPU under NCCL, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
