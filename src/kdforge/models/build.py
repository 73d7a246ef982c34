"""Build a model from a `ModelSpec`: a timm name, a torchvision name, or any ``pkg.mod:factory``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from torch import nn

from kdforge.core.config import ModelSpec
from kdforge.core.errors import KDForgeError, RegistryError, did_you_mean
from kdforge.core.registry import Registry, import_object
from kdforge.data.inputs import ForwardAdapter
from kdforge.models.checkpoint import load_weights
from kdforge.models.taps import TappedModel

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


SMP_ARCHITECTURES = (
    "Unet",
    "UnetPlusPlus",
    "FPN",
    "PSPNet",
    "DeepLabV3",
    "DeepLabV3Plus",
    "Linknet",
    "MAnet",
    "PAN",
    "UPerNet",
    "Segformer",
    "DPT",
)


@MODEL_SOURCES.register("smp")
def _smp(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """segmentation-models-pytorch: ``name`` is the architecture (``Segformer``, ``Unet``, ``FPN``,
    ``DeepLabV3Plus``...), ``kwargs`` its arguments (``encoder_name: mit_b0``); ``num_classes`` becomes smp's
    ``classes``, and encoder weights are never downloaded (``encoder_weights: null``)."""
    try:
        import segmentation_models_pytorch as smp
    except ImportError as exc:
        raise KDForgeError("source 'smp' needs segmentation-models-pytorch: pip install 'kdforge[seg]'.") from exc
    names = [n for n in SMP_ARCHITECTURES if hasattr(smp, n)]
    if name not in names:
        raise RegistryError(f"segmentation-models-pytorch has no architecture {name!r}.{did_you_mean(name, names)}")
    if kwargs.get("encoder_weights") is not None:
        raise KDForgeError(
            f"kdforge never downloads weights, so encoder_weights must be null (got {kwargs['encoder_weights']!r}); "
            "load trained weights with checkpoint: PATH instead."
        )
    kwargs = {**kwargs, "encoder_weights": None}
    if "num_classes" in kwargs:
        kwargs["classes"] = kwargs.pop("num_classes")
    encoder = kwargs.get("encoder_name")
    if encoder is not None and encoder not in smp.encoders.get_encoder_names() and not encoder.startswith("tu-"):
        raise RegistryError(
            f"segmentation-models-pytorch has no encoder {encoder!r}."
            f"{did_you_mean(encoder, smp.encoders.get_encoder_names())} timm encoders are named 'tu-<timm name>'."
        )
    return getattr(smp, name)(**kwargs)


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
    """Build the model and load its checkpoint; `num_classes` is passed through unless the spec sets it.

    ``num_classes=0`` asks for a backbone returning its pooled embedding: timm's own ``num_classes=0``, a
    torchvision model with its last linear layer replaced by identity; an ``import`` factory gets no
    ``num_classes`` then (it returns what it returns)."""
    kwargs = dict(spec.kwargs)
    classes = spec.num_classes if spec.num_classes is not None else num_classes
    headless = classes == 0 and spec.source in ("torchvision", "import")
    if classes is not None and "num_classes" not in kwargs and not headless:
        kwargs["num_classes"] = classes
    factory = MODEL_SOURCES.get(spec.source)
    try:
        model = factory(spec.name, kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:  # the library's own check of its arguments
        raise KDForgeError(f"cannot build {role} {spec.name!r} from {spec.source} with {kwargs}: {exc}") from exc
    removed_head: tuple[str, ...] = ()
    if headless and spec.source == "torchvision":
        removed_head = (_drop_linear_head(model, role),)
    elif classes == 0 and spec.source == "timm":
        removed_head = _timm_classifier(model)
    if spec.checkpoint:
        trust, key = spec.trust_checkpoint, spec.checkpoint_key
        load_weights(model, spec.checkpoint, key=key, trust=trust, role=role, removed_head=removed_head)
    return model


_HEADS = ("fc", "head", "heads", "classifier")  # where torchvision keeps a classifier


def _drop_linear_head(model: nn.Module, role: str) -> str:
    """Replace a torchvision classifier's last linear layer with identity, so the model returns its embedding;
    returns the replaced module's name."""
    for name in _HEADS:
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            setattr(model, name, nn.Identity())
            return name
        if isinstance(head, nn.Sequential) and isinstance(head[-1], nn.Linear):
            head[-1] = nn.Identity()
            return f"{name}.{len(head) - 1}"
    raise KDForgeError(
        f"cannot find the classifier of {role} {type(model).__name__} (looked for a linear {'/'.join(_HEADS)}) to "
        "return its embedding; use a timm model or an import factory that returns the pooled features."
    )


def _timm_classifier(model: nn.Module) -> tuple[str, ...]:
    """The module name(s) of a timm model's classifier (``fc``, ``head.fc``; two for distilled DeiT)."""
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    return (classifier,) if isinstance(classifier, str) else tuple(classifier)


def forward_adapter(spec: ModelSpec) -> ForwardAdapter | None:
    """The spec's ``forward`` adapter (``pkg.mod:fn`` called as ``fn(model, inputs)``), or None."""
    if spec.forward is None:
        return None
    adapter = import_object(spec.forward, "forward adapter")
    if not callable(adapter):
        raise RegistryError(f"forward adapter {spec.forward!r} is not callable; give a function fn(model, inputs).")
    return adapter


def tapped_model(
    net: nn.Module,
    spec: ModelSpec,
    taps: dict[str, str],
    to_outputs: Callable[[Any], dict[str, Any]],
    crops: Literal["global", "all"] | None = None,
) -> TappedModel:
    """`net` returning the task's named outputs plus its taps, called through the spec's forward adapter; with
    `crops` it also takes multi-crop batches, reading the ``global`` crops only or ``all`` of them."""
    if crops is None:
        return TappedModel(net, taps, to_outputs, forward_adapter(spec))
    from kdforge.models.multicrop import MultiCropModel

    return MultiCropModel(net, taps, to_outputs, forward_adapter(spec), with_locals=crops == "all")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
