"""Model inputs that are one tensor or several by name (``{"camera": ..., "lidar": ...}``, multi-crop views).

Nothing here assumes images: a 1-D signal, a point cloud or a dict of sensors travels the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

Inputs = torch.Tensor | Mapping[str, "Inputs"]
ForwardAdapter = Callable[[nn.Module, Any], Any]


def map_inputs(fn: Callable[[torch.Tensor], torch.Tensor], inputs: Inputs) -> Inputs:
    """`fn` applied to the tensor, or to every tensor of a (nested) dict."""
    if isinstance(inputs, Mapping):
        return {key: map_inputs(fn, value) for key, value in inputs.items()}
    return fn(inputs) if isinstance(inputs, torch.Tensor) else inputs


def first_tensor(inputs: Inputs) -> torch.Tensor:
    """The first tensor in `inputs` (what its batch size and device are read from)."""
    if isinstance(inputs, Mapping):
        for value in inputs.values():
            return first_tensor(value)
        raise ValueError("the input dict is empty")
    return inputs


def batch_size(inputs: Inputs) -> int:
    return len(first_tensor(inputs))


def is_inputs(value: Any) -> bool:
    """Whether `value` is a tensor or a non-empty (nested) dict of tensors."""
    if isinstance(value, Mapping):
        return bool(value) and all(is_inputs(v) for v in value.values())
    return isinstance(value, torch.Tensor)


def inputs_equal(a: Inputs, b: Inputs) -> bool:
    """Whether two inputs hold the same names and equal tensors."""
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        same_keys = isinstance(a, Mapping) and isinstance(b, Mapping) and a.keys() == b.keys()
        return same_keys and all(inputs_equal(a[key], b[key]) for key in a)
    return torch.equal(a, b)


def call_model(model: nn.Module, inputs: Inputs, adapter: ForwardAdapter | None = None) -> Any:
    """``adapter(model, inputs)`` when given; else a dict is passed by keyword (``model(camera=..., lidar=...)``)
    and a tensor positionally."""
    if adapter is not None:
        return adapter(model, inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)
