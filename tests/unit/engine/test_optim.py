"""Optimizers (no weight decay on 1-D parameters) and the per-step learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdforge.core.config import OptimizerConfig, ScheduleConfig
from kdforge.core.errors import ConfigError
from kdforge.engine.optim import build_optimizer, build_scheduler, lr_factor

# --- lr_factor ------------------------------------------------------------------------------------


def test_warmup_is_linear_from_the_ratio_to_one() -> None:
    cfg = ScheduleConfig(name="cosine", warmup_lr_ratio=0.2, min_lr_ratio=0.0)
    factors = [lr_factor(step, 20, 4, cfg) for step in range(5)]
    assert factors == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


def test_cosine_decays_to_the_min_ratio_at_the_end() -> None:
    cfg = ScheduleConfig(name="cosine", min_lr_ratio=0.1)
    total, warmup = 20, 4
    factors = [lr_factor(step, total, warmup, cfg) for step in range(warmup, total + 1)]
    assert factors[0] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(factors, factors[1:], strict=False))  # strictly decreasing
    halfway = lr_factor(warmup + (total - warmup) // 2, total, warmup, cfg)
    assert halfway == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_factor(total + 5, total, warmup, cfg) == pytest.approx(0.1)  # stays there


def test_constant_stays_one() -> None:
    cfg = ScheduleConfig(name="constant")
    assert [lr_factor(step, 10, 0, cfg) for step in range(12)] == [1.0] * 12


def test_constant_with_warmup_ramps_then_stays_one() -> None:
    cfg = ScheduleConfig(name="constant", warmup_lr_ratio=0.5)
    assert [lr_factor(step, 10, 2, cfg) for step in range(5)] == pytest.approx([0.5, 0.75, 1.0, 1.0, 1.0])


def test_scheduler_sets_the_optimizer_lr_per_step() -> None:
    param = nn.Parameter(torch.zeros(2, 2))
    optimizer = torch.optim.SGD([param], lr=0.4)
    cfg = ScheduleConfig(name="cosine", warmup_epochs=0.5, warmup_lr_ratio=0.25, min_lr_ratio=0.0)
    scheduler = build_scheduler(optimizer, cfg, total_steps=8, steps_per_epoch=4)  # 2 warm-up steps
    lrs = []
    for _ in range(9):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:3] == pytest.approx([0.1, 0.25, 0.4])
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


# --- build_optimizer ------------------------------------------------------------------------------


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2), nn.LayerNorm(2))


def test_one_dimensional_params_get_no_weight_decay() -> None:
    net = _net()
    optimizer = build_optimizer([net], OptimizerConfig(name="adamw", weight_decay=0.05))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(net[0].weight), id(net[3].weight)}
    one_d = [net[0].bias, net[1].weight, net[1].bias, net[3].bias, net[4].weight, net[4].bias]
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in one_d}
    assert isinstance(optimizer, torch.optim.AdamW)


def test_frozen_params_are_left_out_and_modules_are_combined() -> None:
    net, adapter = _net(), nn.Linear(3, 3)
    net[0].requires_grad_(False)
    optimizer = build_optimizer([net, adapter], OptimizerConfig(name="sgd", lr=0.1, momentum=0.9))
    ids = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert len(ids) == len(set(ids))
    assert id(net[0].weight) not in ids and id(net[0].bias) not in ids
    assert id(adapter.weight) in ids and id(adapter.bias) in ids
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["nesterov"]


def test_unknown_optimizer_is_a_config_error_with_a_suggestion(make_config) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(train={"optimizer": {"name": "adam"}})
    message = str(info.value)
    assert "train.optimizer.name" in message
    assert "unknown optimizer 'adam'" in message and "'adamw'" in message
