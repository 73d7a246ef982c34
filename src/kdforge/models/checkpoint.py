"""Load user weights (.pt/.pth/.safetensors, nested, DDP-prefixed) safely into a model.

Files are read with ``weights_only=True``; a file that needs code to unpickle is refused unless the user
marks it trusted. Every key and shape is checked before anything is copied (as nanoGPT's
``from_pretrained`` does), so a mismatch names the keys instead of half-loading a model.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdforge.core.errors import CheckpointError, UntrustedCheckpointError

TRAINING_FORMAT = "kdforge-checkpoint"  # the marker of a kdforge training checkpoint (engine/checkpoint.py)
# Where common trainers nest the weights, in the order they are tried.
NESTED_KEYS = ("model", "state_dict", "model_ema", "student", "ema", "module")
_PREFIXES = ("module.", "_orig_mod.")


def read_state_dict(path: str | Path, key: str | None = None, trust: bool = False) -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` mapping stored in `path`, unwrapped from nesting and prefixes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; check the checkpoint path.")
    obj = _read_file(path, trust)
    state = _unnest(obj, key, path)
    return _strip_prefixes(state)


def _read_file(path: Path, trust: bool) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(f"checkpoint {str(path)!r} is not a valid safetensors file: {exc}") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if trust or not _needs_code(exc):
            raise CheckpointError(
                f"checkpoint {str(path)!r} is unreadable (corrupt or not a torch file): {exc}"
            ) from exc
        raise UntrustedCheckpointError(
            f"checkpoint {str(path)!r} contains pickled Python objects (e.g. a whole model or custom "
            "classes), which can run code when loaded. Re-save it as a state dict "
            "(torch.save(model.state_dict(), path)) or, if you trust its source, set "
            "trust_checkpoint: true on this model."
        ) from None
    except Exception as exc:  # noqa: BLE001 - truncated zips, text files, old formats: all unusable
        raise CheckpointError(f"checkpoint {str(path)!r} is unreadable (truncated or not a torch file): {exc}") from exc


def _needs_code(exc: pickle.UnpicklingError) -> bool:
    """Whether torch refused the file for holding Python objects (as opposed to it being corrupt)."""
    text = str(exc)
    return "Weights only load failed" in text and ("Unsupported global" in text or "GLOBAL" in text)


def _unnest(obj: Any, key: str | None, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state dict.")
    if key is not None:
        if key not in obj:
            raise CheckpointError(f"checkpoint {str(path)!r} has no key {key!r}; its keys: {sorted(obj)[:20]}.")
        return _unnest(obj[key], None, path)
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    if obj.get("format") == TRAINING_FORMAT:
        return _unnest(evaluated_weights(obj), None, path)
    for nested in NESTED_KEYS:
        if isinstance(obj.get(nested), (Mapping, nn.Module)):
            return _unnest(obj[nested], None, path)
    raise CheckpointError(
        f"checkpoint {str(path)!r} has no tensors at its top level nor under {list(NESTED_KEYS)}; "
        f"its keys: {sorted(map(str, obj))[:20]}. Set checkpoint_key to the key that holds the weights."
    )


def evaluated_weights(checkpoint: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
    """The student weights a kdforge training checkpoint evaluated and exported: its EMA's when EMA was on."""
    return checkpoint["ema"]["module"] if checkpoint.get("ema") else checkpoint["student"]


def _strip_prefixes(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Drop a prefix shared by every key (DDP's ``module.``, compile's ``_orig_mod.``)."""
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_weights(
    model: nn.Module,
    path: str | Path,
    key: str | None = None,
    trust: bool = False,
    role: str = "model",
    removed_head: tuple[str, ...] = (),
) -> None:
    """Load `path` into `model` after checking that every key and shape fits. A backbone built without its
    classifier skips the checkpoint's keys under `removed_head` (module names, e.g. ``fc``); any other key that
    does not fit is still an error."""
    state = read_state_dict(path, key, trust)
    if removed_head:
        state = {k: v for k, v in state.items() if not any(k.startswith(f"{head}.") for head in removed_head)}
    check_state_dict(model, state, f"{role} checkpoint {str(path)!r}")
    model.load_state_dict(state, strict=True)


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise a `CheckpointError` listing missing, unexpected and wrong-shape keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if not (missing or unexpected or wrong):
        return
    parts = [f"{what} does not fit the model:"]
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            shown = ", ".join(keys[:10]) + (f" (+{len(keys) - 10} more)" if len(keys) > 10 else "")
            parts.append(f"  {len(keys)} {title} keys: {shown}")
    parts.append(
        "  Check the model name and kwargs match the checkpoint (e.g. num_classes for the head), "
        "or set checkpoint_key if the weights are nested under another key."
    )
    raise CheckpointError("\n".join(parts))
