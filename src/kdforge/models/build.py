"""Build a model from a `ModelSpec`: a timm name, a torchvision name, or any ``pkg.mod:factory``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from kdforge.config import ModelSpec
from kdforge.errors import KDForgeError, RegistryError, did_you_mean
from kdforge.models.checkpoint import load_weights
from kdforge.registry import Registry, import_object

ModelFactory = Callable[[str, dict[str, Any]], nn.Module]
MODEL_SOURCES: Registry[ModelFactory] = Registry("model source")


@MODEL_SOURCES.register("timm")
def _timm(name: str, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise RegistryError(f"timm has no model {name!r}.{did_you_mean(name, timm.list_models())}")
    return timm.create_model(name, pretrained=False, **kwargs)


@MODEL_SOURCES.register("torchvision")
def _torchvision(name: str, kwargs: dict[str, Any]) -> nn.Module:
    import torchvision

    names = torchvision.models.list_models()
    if name not in names:
        raise RegistryError(f"torchvision has no model {name!r}.{did_you_mean(name, names)}")
    return torchvision.models.get_model(name, weights=None, **kwargs)


@MODEL_SOURCES.register("import")
def _import(name: str, kwargs: dict[str, Any]) -> nn.Module:
    factory = import_object(name, "model factory")
    if not callable(factory):
        raise RegistryError(f"model factory {name!r} is not callable.")
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise KDForgeError(f"model factory {name!r} returned {type(model).__name__}, not a torch nn.Module.")
    return model


def build_model(spec: ModelSpec, num_classes: int | None = None, role: str = "model") -> nn.Module:
    """Build the model and load its checkpoint; `num_classes` is passed through unless the spec sets it."""
    kwargs = dict(spec.kwargs)
    classes = spec.num_classes if spec.num_classes is not None else num_classes
    if classes is not None and "num_classes" not in kwargs:
        kwargs["num_classes"] = classes
    factory = MODEL_SOURCES.get(spec.source)
    try:
        model = factory(spec.name, kwargs)
    except TypeError as exc:
        raise KDForgeError(f"cannot build {role} {spec.name!r} from {spec.source} with {kwargs}: {exc}") from exc
    if spec.checkpoint:
        load_weights(model, spec.checkpoint, key=spec.checkpoint_key, trust=spec.trust_checkpoint, role=role)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
