"""kdforge: knowledge distillation for PyTorch vision models. The Python API (`fit`, `evaluate`, `export`,
`load_config`) is loaded on first use, so ``import kdforge`` stays light."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["RunResult", "__version__", "evaluate", "export", "fit", "load_config"]


def __getattr__(name: str) -> Any:
    if name in ("evaluate", "export", "fit", "load_config", "RunResult"):
        from kdforge.app import api

        return getattr(api, name)
    raise AttributeError(f"module 'kdforge' has no attribute {name!r}")
