"""DDP wraps what trains (the student and the terms' adapters), never a teacher; one process is left unwrapped."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from kdforge.core.distributed import World
from kdforge.engine.parallel import distribute
from tests.unit.distill.test_distiller import _batch, _ready


def test_one_process_trains_the_objective_itself():
    distiller, _ = _ready(fitnet_weight=1.0)
    assert distribute(distiller.objective, torch.device("cpu"), World()) is distiller.objective


def _wrap_and_step(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        distiller, _ = _ready(fitnet_weight=1.0)  # a fitnet adapter: a term with parameters of its own
        wrapped = distribute(distiller.objective, torch.device("cpu"), World.joined())
        assert isinstance(wrapped, nn.parallel.DistributedDataParallel) and wrapped.module is distiller.objective
        reduced = {id(p) for p in wrapped.parameters()}
        assert not reduced & {id(p) for p in distiller.teacher.parameters()}  # the teacher is not in DDP
        assert {id(p) for p in distiller.trainable_parameters()} <= reduced  # student and adapter are
        batch = _batch(seed=10 + rank)  # each process its own data
        teachers = distiller.teacher_outputs(batch, distiller.step_teachers())
        wrapped(batch, teachers)["loss"].backward()
        grads = torch.cat([p.grad.flatten() for p in distiller.trainable_parameters()])
        torch.save(grads, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_processes_average_the_student_and_adapter_gradients_only(tmp_path: Path):
    args = (str(tmp_path / "store"), str(tmp_path / "grads"))
    mp.start_processes(_wrap_and_step, args=args, nprocs=2, start_method="fork")
    first, second = torch.load(tmp_path / "grads.0"), torch.load(tmp_path / "grads.1")
    torch.testing.assert_close(first, second)  # averaged across the processes' different batches
