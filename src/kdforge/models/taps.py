"""Forward hooks by module name that put intermediate tensors into a model's output dict."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from kdforge.core.errors import ConfigError, closest
from kdforge.data.inputs import ForwardAdapter, Inputs, call_model

TAP_PREFIX = "feat:"


def tap_key(name: str) -> str:
    """The output-dict key of tap `name` (``feat:<name>``)."""
    return f"{TAP_PREFIX}{name}"


class TappedModel(nn.Module):
    """Wraps a model so its forward returns ``{**task outputs, "feat:<tap>": tensor, ...}``.

    The hooks write into a dict that the forward creates and returns, so the wrapper compiles with
    ``torch.compile`` (Dynamo traces the hooks as part of the graph) and stays thread-safe per call.

    Args:
        model: the network.
        taps: ``{tap_name: "dotted.module.path"}``.
        to_outputs: turns the network's raw output into a dict of named tensors (the task's job).
        adapter: calls the network on a batch's input (``adapter(model, inputs)``); by default a dict of inputs is
            passed by keyword and a tensor positionally.
    """

    def __init__(
        self,
        model: nn.Module,
        taps: dict[str, str] | None = None,
        to_outputs: Callable[[Any], dict[str, torch.Tensor]] | None = None,
        adapter: ForwardAdapter | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.adapter = adapter
        self.taps = dict(taps or {})
        self._to_outputs = to_outputs or (lambda out: {"logits": out})
        self._store: dict[str, torch.Tensor] | None = None
        modules = dict(model.named_modules())
        for tap, path in self.taps.items():
            if path not in modules:
                raise ConfigError(_unknown_module(path, modules))
            modules[path].register_forward_hook(self._hook(tap))

    def _hook(self, tap: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if self._store is not None:
                tensor = output[0] if isinstance(output, (tuple, list)) else output
                # A clone: a following in-place op (ReLU(inplace=True)) would otherwise rewrite the tap.
                self._store[tap_key(tap)] = tensor.clone()

        return hook

    def token_layout(self) -> tuple[int, int, int] | None:
        """(prefix tokens, grid height, grid width) of a timm ViT-like model, else None."""
        grid = getattr(getattr(self.model, "patch_embed", None), "grid_size", None)
        prefix = getattr(self.model, "num_prefix_tokens", None)
        if grid is None or prefix is None:
            return None
        return (int(prefix), int(grid[0]), int(grid[1]))

    def forward(self, inputs: Inputs) -> dict[str, torch.Tensor]:
        self._store = {}
        try:
            outputs = dict(self._to_outputs(call_model(self.model, inputs, self.adapter)))
            outputs.update(self._store)
        finally:
            self._store = None
        return outputs


def _unknown_module(path: str, modules: dict[str, nn.Module]) -> str:
    names = [n for n in modules if n]
    near = closest(path, names, n=5)
    hint = (
        f" Closest names: {', '.join(near)}."
        if near
        else f" Top-level modules: {', '.join(n for n in names if '.' not in n)}."
    )
    return f"tap module {path!r} does not exist in the model.{hint} List all with: kdforge modules <model>."
