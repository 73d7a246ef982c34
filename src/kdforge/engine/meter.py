"""Running sums of the loss and its parts, kept on the device so logging costs no sync per step."""

from __future__ import annotations

import time

import torch

from kdforge.core.distributed import ONE_PROCESS, World


class StepMeter:
    """Sums over one log interval. A micro-step's values stay *pending* until its optimizer step is
    applied (``commit``) or skipped as non-finite (``discard``), so skipped steps never reach the log."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.pending: dict[str, torch.Tensor] = {}
        self.micro_steps = self.samples = self.pending_steps = self.pending_samples = 0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, parts: dict[str, torch.Tensor], samples: int) -> None:
        for name, value in {"loss": loss, **{f"loss/{k}": v for k, v in parts.items()}}.items():
            value = value.detach().float()
            self.pending[name] = self.pending[name] + value if name in self.pending else value
        self.pending_steps += 1
        self.pending_samples += samples

    def pending_loss_finite(self) -> torch.Tensor:
        """A 0-dim bool tensor (no sync): is the pending window's summed loss finite?"""
        return torch.isfinite(self.pending["loss"]) if "loss" in self.pending else torch.tensor(True)

    def commit(self) -> None:
        for name, value in self.pending.items():
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.micro_steps += self.pending_steps
        self.samples += self.pending_samples
        self.discard()

    def discard(self) -> None:
        self.pending, self.pending_steps, self.pending_samples = {}, 0, 0

    def means(self, world: World = ONE_PROCESS, device: torch.device | None = None) -> dict[str, float]:
        """Mean loss and parts per micro-step, and throughput (where the time goes is `StepTimer`'s job); under
        torchrun the means are averaged over the processes and the throughput summed (one collective on
        `device`)."""
        count = max(self.micro_steps, 1)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        values = {name: float(total) / count for name, total in self.sums.items()}
        values["samples_per_s"] = self.samples / elapsed
        if not world.distributed:
            return values
        keys = sorted(values)
        summed = world.sum(torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)).tolist()
        return {k: v if k == "samples_per_s" else v / world.size for k, v in zip(keys, summed, strict=True)}
