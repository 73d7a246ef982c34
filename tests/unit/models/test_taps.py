"""TappedModel: forward hooks by module name put intermediate tensors into the output dict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdforge.core.errors import ConfigError
from kdforge.models.taps import TappedModel, tap_key
from kdforge.models.zoo import cnn

TAPS = {"s0": "stages.0", "s1": "stages.1", "pooled": "pool"}


def _tapped(taps: dict[str, str] | None = None) -> TappedModel:
    torch.manual_seed(0)
    return TappedModel(cnn(num_classes=5, widths=(4, 6, 8)), TAPS if taps is None else taps).eval()


def test_tap_key() -> None:
    assert tap_key("s1") == "feat:s1"


def test_outputs_hold_logits_and_taps_with_shapes() -> None:
    model = _tapped()
    out = model(torch.randn(2, 3, 16, 16))
    assert set(out) == {"logits", "feat:s0", "feat:s1", "feat:pooled"}
    assert out["logits"].shape == (2, 5)
    assert out["feat:s0"].shape == (2, 4, 8, 8)  # conv-BN-ReLU-maxpool: 16 -> 8
    assert out["feat:s1"].shape == (2, 6, 4, 4)  # 8 -> 4
    assert out["feat:pooled"].shape == (2, 8)  # global average pool + flatten


def test_tapped_values_are_the_module_outputs() -> None:
    model = _tapped()
    x = torch.randn(2, 3, 16, 16)
    out = model(x)
    inner = model.model
    with torch.no_grad():
        s0 = inner.stages[0](x)
        s1 = inner.stages[1](s0)
        pooled = inner.pool(inner.stages[2](s1))
    torch.testing.assert_close(out["feat:s0"], s0)
    torch.testing.assert_close(out["feat:s1"], s1)
    torch.testing.assert_close(out["feat:pooled"], pooled)
    torch.testing.assert_close(out["logits"], inner.head(pooled))


def test_no_taps_gives_logits_only() -> None:
    model = _tapped(taps={})
    out = model(torch.randn(1, 3, 8, 8))
    assert list(out) == ["logits"]


def test_two_taps_on_one_module() -> None:
    out = _tapped({"a": "pool", "b": "pool"})(torch.randn(1, 3, 8, 8))
    assert torch.equal(out["feat:a"], out["feat:b"])


def test_custom_to_outputs() -> None:
    torch.manual_seed(0)
    model = TappedModel(cnn(num_classes=3, widths=(4,)), {"f": "stages.0"}, to_outputs=lambda raw: {"scores": raw * 2})
    x = torch.randn(1, 3, 4, 4)
    out = model.eval()(x)
    assert set(out) == {"scores", "feat:f"}
    torch.testing.assert_close(out["scores"], model.model(x) * 2)


def test_tuple_output_takes_the_first_element() -> None:
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x + 1, x - 1

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair = Pair()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.pair(x)[1]

    x = torch.zeros(2, 3)
    out = TappedModel(Net(), {"p": "pair"})(x)
    torch.testing.assert_close(out["feat:p"], x + 1)
    torch.testing.assert_close(out["logits"], x - 1)


def test_gradients_flow_through_tapped_features() -> None:
    model = _tapped().train()
    out = model(torch.randn(2, 3, 16, 16))
    out["feat:s0"].pow(2).mean().backward()
    first_conv = model.model.stages[0][0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    assert model.model.head.weight.grad is None  # the head is after the tap


@pytest.mark.parametrize(("path", "close"), [("stages.3", "stages.0"), ("stage.1", "stages.1"), ("pol", "pool")])
def test_unknown_module_lists_close_names(path: str, close: str) -> None:
    with pytest.raises(ConfigError) as info:
        _tapped({"f": path})
    message = str(info.value)
    assert f"tap module {path!r} does not exist" in message
    assert "Closest names:" in message
    assert close in message
    assert "kdforge modules" in message  # how to list them all


def test_unknown_module_without_close_name_lists_top_level_modules() -> None:
    with pytest.raises(ConfigError) as info:
        _tapped({"f": "zzzzzzzzzzzzzz"})
    message = str(info.value)
    assert "Top-level modules: stages, pool, drop, head." in message


def test_outputs_do_not_leak_between_calls() -> None:
    model = _tapped()
    first = model(torch.randn(2, 3, 16, 16))
    second = model(torch.randn(3, 3, 8, 8))
    assert first is not second
    assert first["feat:s1"].shape == (2, 6, 4, 4)  # the first dict is not rewritten by the second call
    assert second["feat:s1"].shape == (3, 6, 2, 2)
    assert not torch.equal(first["feat:pooled"][:1], second["feat:pooled"][:1])


def test_calling_the_inner_model_directly_stores_nothing() -> None:
    model = _tapped()
    model.model(torch.randn(1, 3, 8, 8))  # hooks fire with no forward of the wrapper running
    out = model(torch.randn(2, 3, 16, 16))
    assert out["feat:s0"].shape[0] == 2


def test_a_failed_call_leaves_nothing_behind() -> None:
    model = _tapped()
    with pytest.raises(RuntimeError):
        model(torch.randn(1, 3, 3, 3))  # stages.0 (tapped) runs, then stages.1 cannot pool a 1x1 map
    assert model._store is None  # the per-call store is cleared even when the forward fails
    out = model(torch.randn(2, 3, 16, 16))
    assert set(out) == {"logits", "feat:s0", "feat:s1", "feat:pooled"}
    assert out["feat:s0"].shape == (2, 4, 8, 8)


def test_a_tap_that_did_not_fire_is_absent() -> None:
    class Skip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(2, 2)
            self.unused = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    model = TappedModel(Skip(), {"u": "used", "n": "unused"})
    assert set(model(torch.zeros(1, 2))) == {"logits", "feat:u"}


def test_tap_is_not_changed_by_later_in_place_ops() -> None:
    model = _tapped({"bn": "stages.0.1"})
    x = torch.randn(2, 3, 8, 8)
    out = model(x)
    with torch.no_grad():
        bn = model.model.stages[0][1](model.model.stages[0][0](x))
    torch.testing.assert_close(out["feat:bn"], bn)


@pytest.mark.slow
def test_tapped_model_under_torch_compile() -> None:
    model = _tapped()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model)(x)
    assert set(compiled) == {"logits", "feat:s0", "feat:s1", "feat:pooled"}
    for key, value in eager.items():
        torch.testing.assert_close(compiled[key], value, rtol=1e-4, atol=1e-5, msg=key)
