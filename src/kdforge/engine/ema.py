"""Exponential moving average of the student's weights (evaluated and exported when enabled)."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


class ModelEma:
    """``ema = d * ema + (1 - d) * w`` after each optimizer step, for weights and float buffers (BN
    statistics); integer buffers (BN's batch counter) are copied.

    With ``warmup`` the decay ramps as ``d * (1 - exp(-updates / 2000))`` (as in Ultralytics), so an
    early EMA is not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        for sub in self.module.modules():  # hooks of the live model (taps) must not fire on the copy
            sub._forward_hooks.clear()
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        self._pairs = self._float_pairs(model)

    def _float_pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        ema_state, live_state = self.module.state_dict(), model.state_dict(keep_vars=True)
        keys = [k for k, v in ema_state.items() if v.is_floating_point()]
        return [ema_state[k] for k in keys], [live_state[k] for k in keys]

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / 2000)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        ema_tensors, live = self._pairs
        torch._foreach_lerp_(ema_tensors, [t.detach() for t in live], 1.0 - self.current_decay())
        for ema_buf, buf in zip(self.module.buffers(), model.buffers(), strict=True):
            if not ema_buf.is_floating_point():
                ema_buf.copy_(buf)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
