"""Model building from timm, torchvision and ``pkg.mod:factory`` (num_classes, kwargs, name errors)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdforge.core.config import ModelSpec
from kdforge.core.errors import KDForgeError, RegistryError
from kdforge.models.build import build_model, count_parameters
from kdforge.models.zoo import SimpleCNN

CNN = "kdforge.models.zoo:cnn"


def test_build_timm_model_with_num_classes() -> None:
    model = build_model(ModelSpec(source="timm", name="test_resnet"), num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_build_torchvision_model_with_num_classes() -> None:
    model = build_model(ModelSpec(source="torchvision", name="resnet18"), num_classes=7)
    assert model.fc.out_features == 7


def test_build_import_model_passes_kwargs_and_num_classes() -> None:
    model = build_model(ModelSpec(source="import", name=CNN, kwargs={"widths": [4, 8], "in_chans": 1}), num_classes=5)
    assert isinstance(model, SimpleCNN)
    assert model.head.out_features == 5
    assert model.stages[0][0].in_channels == 1
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 5)


def test_spec_num_classes_wins_over_argument() -> None:
    model = build_model(ModelSpec(source="import", name=CNN, kwargs={"widths": [4]}, num_classes=2), num_classes=9)
    assert model.head.out_features == 2


def test_kwargs_num_classes_wins_over_argument() -> None:
    model = build_model(ModelSpec(source="import", name=CNN, kwargs={"widths": [4], "num_classes": 3}), num_classes=9)
    assert model.head.out_features == 3


def test_count_parameters() -> None:
    model = nn.Linear(3, 2)
    assert count_parameters(model) == 8


def test_unknown_timm_model_suggests_a_name() -> None:
    with pytest.raises(RegistryError) as info:
        build_model(ModelSpec(source="timm", name="resnet18x"))
    message = str(info.value)
    assert "timm has no model 'resnet18x'" in message
    assert "'resnet18'" in message


def test_unknown_torchvision_model_suggests_a_name() -> None:
    with pytest.raises(RegistryError, match="torchvision has no model 'resnet181'.*'resnet18'"):
        build_model(ModelSpec(source="torchvision", name="resnet181"))


def test_unknown_model_source_lists_sources() -> None:
    with pytest.raises(RegistryError, match="unknown model source 'timmm'.*Did you mean 'timm'.*Available:"):
        build_model(ModelSpec(source="timmm", name="x"))


def test_import_factory_bad_path() -> None:
    with pytest.raises(RegistryError, match="has no attribute 'cnnn'.*'cnn'"):
        build_model(ModelSpec(source="import", name="kdforge.models.zoo:cnnn"))


def test_import_factory_that_returns_no_module() -> None:
    with pytest.raises(KDForgeError, match="returned dict, not a torch nn.Module"):
        build_model(ModelSpec(source="import", name="builtins:dict"))


def test_bad_factory_kwargs_name_the_model() -> None:
    with pytest.raises(KDForgeError, match=r"cannot build student 'kdforge.models.zoo:cnn' from import.*depth"):
        build_model(ModelSpec(source="import", name=CNN, kwargs={"depth": 3}), role="student")


def test_smp_models_never_download_and_bad_arguments_are_named():
    from kdforge.core.config import ModelSpec
    from kdforge.core.errors import KDForgeError
    from kdforge.models.build import build_model

    with pytest.raises(KDForgeError, match="never downloads weights"):
        build_model(
            ModelSpec(source="smp", name="Unet", kwargs={"encoder_name": "resnet18", "encoder_weights": "imagenet"}), 3
        )
    with pytest.raises(KDForgeError, match="cannot build student 'Unet' from smp"):
        build_model(
            ModelSpec(source="smp", name="Unet", kwargs={"encoder_name": "resnet18", "encoder_depth": 7}), 3, "student"
        )
