"""The NaN/Inf guard: an optimizer step is applied only when the step's loss and gradients are finite."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from kdforge.core.config import TrainConfig
from kdforge.core.distributed import World
from kdforge.core.errors import NonFiniteLossError
from kdforge.engine.buffers import BufferSnapshot
from kdforge.engine.meter import StepMeter
from kdforge.engine.progress import TrainState


class GuardedUpdate:
    """Unscale, measure the gradient norm, decide, then clip and step, or skip.

    A skipped step changes nothing: no update, the BN statistics put back (`buffers`), its losses dropped from the
    log (`meter`); it is counted, and ``max_nonfinite_steps`` skips in a row stop the run with an error. The
    decision is the step's one host-device sync and, under torchrun, its one collective besides the gradients',
    which also carries the processes' stop requests, so every process decides alike.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        params: Sequence[nn.Parameter],
        buffers: BufferSnapshot,
        meter: StepMeter,
        config: TrainConfig,
        world: World,
        warn: Callable[[str], None],
    ) -> None:
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.params, self.buffers, self.meter = list(params), buffers, meter
        self.clip, self.max_skips = config.clip_grad_norm, config.max_nonfinite_steps
        self.fp16 = scaler.is_enabled()  # the resolved AMP mode: the scaler is on for fp16 only
        self.world, self.warn = world, warn

    def __call__(self, state: TrainState, stop_requested: bool, device: torch.device) -> tuple[bool, bool]:
        """Apply or skip the step's gradients and advance the schedule; returns whether they were applied and
        whether to go on (no stop request on any process)."""
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        flags = torch.stack([self.meter.pending_loss_finite(), torch.isfinite(norm)]).float()
        if self.world.distributed:
            go_on = torch.tensor([0.0 if stop_requested else 1.0], device=device)
            flags = self.world.min(torch.cat([flags, go_on]))
        loss_ok, grads_ok, *go_on = (bool(flag) for flag in flags.tolist())
        applied = False
        if loss_ok and (grads_ok or self.fp16):  # fp16 overflow: the scaler skips and lowers its scale
            applied = self._apply(state, norm if grads_ok else None)
        else:
            self.buffers.restore()
            self.meter.discard()
            self._skipped(state, "loss" if not loss_ok else "gradient norm")
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return applied, go_on[0] if go_on else not stop_requested

    def _apply(self, state: TrainState, norm: torch.Tensor | None) -> bool:
        """Clip, step and count the step's losses; False when the fp16 scaler skipped the step."""
        if self.clip and norm is not None:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.clip, norm)
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.meter.commit()
        if self.scaler.get_scale() < scale:
            return False
        state.nonfinite_streak = 0
        return True

    def _skipped(self, state: TrainState, what: str) -> None:
        state.nonfinite_total += 1
        state.nonfinite_streak += 1
        self.warn(
            f"step {state.global_step}: the {what} is not finite; step skipped ({state.nonfinite_total} skipped in "
            "total)"
        )
        if state.nonfinite_streak >= self.max_skips:
            raise NonFiniteLossError(
                f"{state.nonfinite_streak} steps in a row gave a non-finite loss or gradients (last: {what}). "
                "Lower the learning rate, enable clip_grad_norm, use amp: bf16 instead of fp16, or check the data "
                "for NaN/Inf values. Checkpoints written so far hold only finite weights."
            )
