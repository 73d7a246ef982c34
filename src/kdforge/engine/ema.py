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
        ema_state = self.module.state_dict()
        self._float_keys = [k for k, v in ema_state.items() if v.is_floating_point()]
        self._int_keys = [k for k, v in ema_state.items() if not v.is_floating_point()]
        self._float_ema = [ema_state[k] for k in self._float_keys]
        self._int_ema = [ema_state[k] for k in self._int_keys]

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / 2000)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        live = model.state_dict()
        torch._foreach_lerp_(self._float_ema, [live[k] for k in self._float_keys], 1.0 - self.current_decay())
        for ema_tensor, key in zip(self._int_ema, self._int_keys, strict=True):
            ema_tensor.copy_(live[key])

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
