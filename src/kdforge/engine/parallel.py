"""DistributedDataParallel around what trains, as timm does: the student and the terms' adapters, never a
teacher (a teacher in DDP would be broadcast at start and checked every step, for nothing)."""

from __future__ import annotations

import torch
from torch import nn

from kdforge.core.distributed import World
from kdforge.distill.distiller import StudentObjective


def distribute(objective: StudentObjective, device: torch.device, world: World) -> nn.Module:
    """`objective` in DistributedDataParallel under torchrun (gradients averaged across processes), else itself.
    Unused parameters are searched for only when terms have their own (adapters idle in a task-only phase)."""
    if not world.distributed:
        return objective
    terms_train = any(p.requires_grad for p in objective.terms.parameters())
    return nn.parallel.DistributedDataParallel(
        objective,
        device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=False,  # BN statistics are averaged at each epoch's end instead of every step
        find_unused_parameters=terms_train,
    )
