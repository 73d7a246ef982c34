"""The process a run lives in: its device, CPU threads, seeds and place among torchrun's processes."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from kdforge.core.config import RunConfig
from kdforge.core.distributed import World, init_distributed
from kdforge.core.errors import ConfigError


@dataclass(frozen=True)
class Context:
    """Where this process computes and who else trains with it; made once by `setup_process`, passed down."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    world: World = field(default_factory=World)


def default_threads() -> int:
    """Half the usable cores (at least 1): on a busy machine OpenMP's default of every core often runs slower."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, usable // 2)


def resolve_device(name: str) -> torch.device:
    """The torch device `name` means; under torchrun a bare ``cuda`` is this process's GPU (LOCAL_RANK)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{os.environ['LOCAL_RANK']}"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device {name!r} is not a valid torch device (use auto, cpu, cuda or cuda:N).") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but CUDA is not available here; use device: cpu or auto.")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_process(config: RunConfig) -> Context:
    """Set threads and seeds, join the torchrun process group when there is one; return the context."""
    torch.set_num_threads(config.threads or default_threads())
    device = resolve_device(config.device)
    world = init_distributed(device.type == "cuda")
    # Each process draws its own dropout and augmentation; DDP gives every process rank 0's initial weights.
    seed_everything(config.seed + 1_000_003 * world.rank)
    return Context(device, world)
