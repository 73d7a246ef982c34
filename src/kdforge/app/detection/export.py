"""The model registry: ``<dir>/<name>/vN/`` holds ``model.pt`` and ``metadata.json`` (teacher, data, metrics,
config), and ``<dir>/<name>/latest`` is a symbolic link to the newest ``vN``. ``model.pt`` is Ultralytics' own
``best.pt`` (optimizer stripped), so ``ultralytics.YOLO(path)`` loads it for predict, val and export.

Concurrent exports are safe: a version is claimed with an exclusive ``mkdir`` (two runs never share a ``vN``),
and ``latest`` is switched with one ``os.replace`` of a link, so a reader sees the old or the new model and its
metadata together, never a mix or a half-written file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from kdforge.core.atomic import atomic_write
from kdforge.core.config.detection import RegistryConfig

MODEL_FILE, METADATA_FILE, LATEST = "model.pt", "metadata.json", "latest"


def next_version(base: Path) -> int:
    """One more than the highest ``vN`` folder under `base` (1 for a new registry entry)."""
    found = [int(m.group(1)) for p in base.glob("v*") if (m := re.fullmatch(r"v(\d+)", p.name)) and p.is_dir()]
    return max(found, default=0) + 1


def export_to_registry(model: Path, registry: RegistryConfig, metadata: dict[str, Any]) -> Path:
    """Copy `model` into a new version folder and point ``latest`` at it; returns ``latest/model.pt``."""
    base = Path(registry.dir) / registry.name
    folder = claim_version(base)
    record = {"version": folder.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": MODEL_FILE, **metadata}
    atomic_write(folder / MODEL_FILE, lambda tmp: shutil.copyfile(model, tmp))
    text = json.dumps(record, indent=2, default=str)
    atomic_write(folder / METADATA_FILE, lambda tmp: Path(tmp).write_text(text))
    point_latest(base, folder.name)
    return base / LATEST / MODEL_FILE


def claim_version(base: Path) -> Path:
    """Create the next free ``vN`` folder; ``mkdir`` without ``exist_ok`` is the lock (another export that took
    the same number first makes this one try the next)."""
    base.mkdir(parents=True, exist_ok=True)
    number = next_version(base)
    while True:
        folder = base / f"v{number}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            number += 1


def point_latest(base: Path, version: str) -> None:
    """Make ``base/latest`` a link to ``base/<version>`` in one rename (a temporary link replaces the old one)."""
    latest = base / LATEST
    if latest.is_dir() and not latest.is_symlink():  # a registry written before ``latest`` became a link
        old = base / f".{LATEST}-old-{uuid.uuid4().hex[:8]}"
        latest.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    tmp = base / f".{LATEST}-{uuid.uuid4().hex[:8]}"
    os.symlink(version, tmp, target_is_directory=True)  # relative: the registry folder can move
    try:
        os.replace(tmp, latest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
