"""ModelEma: the update formula, integer buffers, hooks of the live model, state dict round trip."""

from __future__ import annotations

import math

import torch
from torch import nn

from kdforge.engine.ema import ModelEma
from kdforge.models.taps import TappedModel
from kdforge.models.zoo import cnn


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cnn(num_classes=3, in_chans=1, widths=(4, 6))


def _train_step(model: nn.Module, seed: int) -> None:
    """Change every float tensor: SGD moves the weights, a train-mode forward the BN statistics."""
    torch.manual_seed(seed)
    model.train()
    loss = model(torch.randn(4, 1, 8, 8)).square().mean()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
            p.grad = None


def test_update_is_the_decayed_average_computed_by_hand() -> None:
    live, decay = _model(), 0.75
    ema = ModelEma(live, decay, warmup=False)
    for step in range(3):
        _train_step(live, seed=step)
        before = {k: v.clone() for k, v in ema.module.state_dict().items()}
        ema.update(live)
        for key, value in ema.module.state_dict().items():
            if value.is_floating_point():
                expected = decay * before[key] + (1 - decay) * live.state_dict()[key]
                torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7, msg=key)
    assert ema.updates == 3


def test_integer_buffers_are_copied() -> None:
    live = _model()
    ema = ModelEma(live, 0.9, warmup=False)
    for step in range(2):
        _train_step(live, seed=step)
    ema.update(live)
    tracked = [k for k in live.state_dict() if k.endswith("num_batches_tracked")]
    assert tracked
    for key in tracked:
        assert live.state_dict()[key].item() == 2
        assert torch.equal(ema.module.state_dict()[key], live.state_dict()[key])


def test_warmup_ramps_the_decay() -> None:
    ema = ModelEma(_model(), 0.99, warmup=True)
    assert ema.current_decay() == 0.0  # no update yet: copy the live weights
    ema.updates = 2000
    assert math.isclose(ema.current_decay(), 0.99 * (1 - math.exp(-1)))
    assert ModelEma(_model(), 0.99, warmup=False).current_decay() == 0.99


def test_copy_is_frozen_in_eval_mode_and_does_not_share_storage() -> None:
    live = _model()
    ema = ModelEma(live, 0.9)
    assert not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert all(p.requires_grad for p in live.parameters())
    with torch.no_grad():
        live.head.weight.add_(1.0)
    assert not torch.equal(ema.module.head.weight, live.head.weight)


def test_hooks_of_the_live_model_do_not_fire_on_the_copy() -> None:
    live = _model()
    calls: list[str] = []
    live.stages[0].register_forward_hook(lambda *_: calls.append("hook"))
    ema = ModelEma(live, 0.9)
    x = torch.randn(2, 1, 8, 8)
    ema.module(x)
    assert calls == []
    live(x)
    assert calls == ["hook"]  # the live model keeps its hook


def test_ema_of_a_tapped_network_stores_no_taps() -> None:
    tapped = TappedModel(_model(), {"s0": "stages.0"})
    ema = ModelEma(tapped.model, 0.9)
    out = tapped(torch.randn(2, 1, 8, 8))
    assert "feat:s0" in out
    logits = ema.module(torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 3)  # a plain forward of the copy, no tap machinery
    assert "feat:s0" in tapped(torch.randn(2, 1, 8, 8))


def test_state_dict_round_trip_and_updates_continue() -> None:
    live = _model()
    ema = ModelEma(live, 0.5, warmup=False)
    for step in range(2):
        _train_step(live, seed=step)
        ema.update(live)
    state = ema.state_dict()

    # As on resume: a fresh network gets the live weights, a fresh EMA of it gets the EMA state.
    resumed = _model(seed=7)
    resumed.load_state_dict(live.state_dict())
    restored = ModelEma(resumed, 0.5, warmup=False)
    restored.load_state_dict(state)
    assert restored.updates == 2
    for key, value in ema.module.state_dict().items():
        assert torch.equal(restored.module.state_dict()[key], value), key

    # Both continue identically.
    _train_step(live, seed=5)
    _train_step(resumed, seed=5)
    ema.update(live)
    restored.update(resumed)
    for key, value in ema.module.state_dict().items():
        assert torch.equal(restored.module.state_dict()[key], value), key


def test_update_averages_towards_the_model_it_is_given() -> None:
    first, other = _model(seed=0), _model(seed=1)
    ema = ModelEma(first, 0.5, warmup=False)
    ema.update(other)
    expected = 0.5 * first.head.weight + 0.5 * other.head.weight
    torch.testing.assert_close(ema.module.head.weight, expected)
