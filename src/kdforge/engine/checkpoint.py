"""Training checkpoints: state dicts and plain data only, written atomically.

Checkpoints are written atomically (`kdforge.core.atomic`), so a crash never leaves a broken ``last.pt`` and
never replaces a good checkpoint with a partial one.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdforge.core.atomic import atomic_write
from kdforge.core.errors import CheckpointError
from kdforge.models.checkpoint import TRAINING_FORMAT as FORMAT

VERSION = 1


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through `atomic_write`: a crash never leaves a broken checkpoint."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def prune_numbered(folder: Path, pattern: str, field: str, keep: int) -> None:
    """Keep the newest `keep` files in `folder` named by `pattern` (e.g. ``epoch_{epoch}.pt``, `field` "epoch")."""
    head, tail = pattern.split("{" + field + "}")
    numbered = re.compile(re.escape(head) + r"(\d+)" + re.escape(tail) + "$")
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := numbered.match(p.name))]
    for _, old in sorted(found)[:-keep]:
        old.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a kdforge training checkpoint (``weights_only=True``: no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means the file is unusable
        raise CheckpointError(f"checkpoint {str(path)!r} is unreadable: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a kdforge training checkpoint (no '{FORMAT}' marker). "
            "To start from plain weights, set student.checkpoint instead of --resume."
        )
    return ckpt


def rng_state() -> dict[str, Any]:
    """Every RNG the loop touches, as tensors and plain data."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
