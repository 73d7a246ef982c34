"""The model registry: ``<dir>/<name>/latest/model.pt`` plus a numbered copy ``<dir>/<name>/vN/model.pt``, each
with ``metadata.json`` (teacher, data, metrics, config). ``model.pt`` is Ultralytics' own ``best.pt`` (optimizer
stripped), so ``ultralytics.YOLO(path)`` loads it for predict, val and export.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from kdforge.atomic import atomic_write
from kdforge.config.detection import RegistryConfig

MODEL_FILE, METADATA_FILE = "model.pt", "metadata.json"


def next_version(base: Path) -> int:
    """One more than the highest ``vN`` folder under `base` (1 for a new registry entry)."""
    found = [int(m.group(1)) for p in base.glob("v*") if (m := re.fullmatch(r"v(\d+)", p.name)) and p.is_dir()]
    return max(found, default=0) + 1


def export_to_registry(model: Path, registry: RegistryConfig, metadata: dict[str, Any]) -> Path:
    """Copy `model` into a new version folder and over ``latest``; returns ``latest/model.pt``.

    Each file is written to a temporary sibling and renamed, so a reader of ``latest`` never sees half a model.
    """
    base = Path(registry.dir) / registry.name
    version = f"v{next_version(base)}"
    record = {"version": version, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": MODEL_FILE, **metadata}
    for folder in (base / version, base / "latest"):
        _write(folder, model, record)
    return base / "latest" / MODEL_FILE


def _write(folder: Path, model: Path, record: dict[str, Any]) -> None:
    atomic_write(folder / MODEL_FILE, lambda tmp: shutil.copyfile(model, tmp))
    text = json.dumps(record, indent=2, default=str)
    atomic_write(folder / METADATA_FILE, lambda tmp: Path(tmp).write_text(text))
