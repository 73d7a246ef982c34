"""Headless backbones (``num_classes=0``), classifier checkpoints loaded into them, forward adapters, crops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from kdforge.core.config import ModelSpec
from kdforge.core.errors import KDForgeError, RegistryError
from kdforge.models.build import build_model, forward_adapter, tapped_model
from kdforge.models.multicrop import MultiCropModel
from kdforge.models.taps import TappedModel

HERE = "tests.unit.models.test_headless"
RECEIVED: list[dict[str, Any]] = []
NOT_CALLABLE = 3


def recording_factory(**kwargs: Any) -> nn.Module:
    """An import factory that records the keyword arguments it was given."""
    RECEIVED.append(kwargs)
    return nn.Linear(2, 3)


def swap_adapter(model: nn.Module, inputs: Any) -> Any:
    return model(inputs["b"], inputs["a"])


@pytest.mark.parametrize(
    ("source", "name", "width"),
    [
        ("timm", "test_resnet", None),
        ("timm", "resnet10t", 512),
        ("torchvision", "resnet18", 512),
        ("torchvision", "mobilenet_v3_small", 1024),  # the classifier's hidden linear layer stays
    ],
)
def test_headless_model_returns_its_embedding(source: str, name: str, width: int | None) -> None:
    model = build_model(ModelSpec(source=source, name=name), num_classes=0).eval()
    with torch.no_grad():
        embedding = model(torch.randn(1, 3, 32, 32))
    assert embedding.dim() == 2 and embedding.shape[0] == 1 and embedding.shape[1] > 0
    if width is not None:
        assert embedding.shape[1] == width
    assert not any(isinstance(m, nn.Linear) and m.out_features == 1000 for m in model.modules())


def test_import_factory_gets_no_num_classes_when_headless() -> None:
    RECEIVED.clear()
    build_model(ModelSpec(source="import", name=f"{HERE}:recording_factory", kwargs={"k": 1}), num_classes=0)
    build_model(ModelSpec(source="import", name=f"{HERE}:recording_factory"), num_classes=4)
    assert RECEIVED == [{"k": 1}, {"num_classes": 4}]


def _classifier_checkpoint(spec: ModelSpec, tmp_path: Path) -> tuple[nn.Module, str]:
    """A 7-class model of `spec` and the path of its saved state dict (head keys included)."""
    torch.manual_seed(0)
    classifier = build_model(spec, num_classes=7)
    path = tmp_path / "classifier.pt"
    torch.save(classifier.state_dict(), path)
    return classifier, str(path)


@pytest.mark.parametrize(
    ("source", "name", "head"), [("timm", "test_resnet", "fc."), ("torchvision", "mobilenet_v3_small", "classifier.3.")]
)
def test_classifier_checkpoint_loads_into_the_headless_model(tmp_path: Path, source: str, name: str, head: str) -> None:
    classifier, path = _classifier_checkpoint(ModelSpec(source=source, name=name), tmp_path)
    torch.manual_seed(1)  # other initial weights: equality below comes from the checkpoint
    headless = build_model(ModelSpec(source=source, name=name, checkpoint=path), num_classes=0)
    saved, loaded = classifier.state_dict(), headless.state_dict()
    assert any(key.startswith(head) for key in saved) and not any(key.startswith(head) for key in loaded)
    assert set(loaded) <= set(saved)
    for key, value in loaded.items():
        assert torch.equal(value, saved[key]), key


def test_classifier_checkpoint_into_a_classifier_still_needs_every_key(tmp_path: Path) -> None:
    _, path = _classifier_checkpoint(ModelSpec(source="timm", name="test_resnet"), tmp_path)
    with pytest.raises(KDForgeError):  # a 3-class head does not fit the 7-class checkpoint
        build_model(ModelSpec(source="timm", name="test_resnet", checkpoint=path), num_classes=3)


def test_torchvision_model_without_a_linear_head_is_refused() -> None:
    with pytest.raises(KDForgeError, match="cannot find the classifier"):
        build_model(ModelSpec(source="torchvision", name="squeezenet1_1"), num_classes=0, role="student")


def test_forward_adapter_imports_a_function() -> None:
    assert forward_adapter(ModelSpec(name="x")) is None
    adapter = forward_adapter(ModelSpec(name="x", forward=f"{HERE}:swap_adapter"))
    assert adapter is swap_adapter
    assert adapter(lambda first, second: first - second, {"a": 1, "b": 5}) == 4


def test_forward_adapter_refuses_a_non_callable() -> None:
    with pytest.raises(RegistryError, match="not callable"):
        forward_adapter(ModelSpec(name="x", forward=f"{HERE}:NOT_CALLABLE"))


def test_tapped_model_crops_pick_the_wrapper() -> None:
    net, spec = nn.Linear(2, 3), ModelSpec(source="import", name="x", forward=f"{HERE}:swap_adapter")
    every = tapped_model(net, spec, {}, lambda out: {"embedding": out}, crops="all")
    globals_only = tapped_model(net, spec, {}, lambda out: {"embedding": out}, crops="global")
    plain = tapped_model(net, spec, {}, lambda out: {"embedding": out})
    assert isinstance(every, MultiCropModel) and every.with_locals
    assert isinstance(globals_only, MultiCropModel) and not globals_only.with_locals
    assert type(plain) is TappedModel and plain.adapter is swap_adapter and every.adapter is swap_adapter


def test_headless_loading_skips_only_the_classifier_keys(tmp_path: Path) -> None:
    """A deeper model's checkpoint holds every key of the shallower one (same shapes) and more: it stays an error;
    only keys under the removed classifier are skipped."""
    _, path = _classifier_checkpoint(ModelSpec(source="torchvision", name="resnet34"), tmp_path)
    with pytest.raises(KDForgeError, match="unexpected keys: layer1.2"):
        build_model(ModelSpec(source="torchvision", name="resnet18", checkpoint=path), num_classes=0)
