"""Ultralytics without a network: nothing may fetch fonts, weights, hub files or send telemetry.

Ultralytics reads ``YOLO_OFFLINE``, ``YOLO_CONFIG_DIR`` and ``YOLO_AUTOINSTALL`` once, when it is first imported,
so `configure_ultralytics` runs before that (``kdforge.app.detection`` calls it on import). Its settings file goes to
a kdforge-owned folder (never the user's working directory), and the fonts its plots and dataset checks ask
for are provided there from matplotlib's bundled DejaVu Sans, so even ``plots=True`` needs no download.

Ultralytics' settings default its ``runs_dir``, ``weights_dir`` and ``datasets_dir`` to the git root (of the
working directory) or the working directory itself; kdforge seeds them under its cache folder, so a stray
Ultralytics default never writes into the user's checkout.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

from kdforge.core.atomic import atomic_write

FONTS = ("Arial.ttf", "Arial.Unicode.ttf")  # the names Ultralytics' check_font looks for
SETTINGS_DIRS = ("runs_dir", "weights_dir", "datasets_dir")  # Ultralytics settings that name folders


def config_dir() -> Path:
    """``$KDFORGE_CACHE`` or ``~/.cache/kdforge`` (``$XDG_CACHE_HOME`` respected): Ultralytics keeps its settings
    in an ``Ultralytics/`` folder inside."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("KDFORGE_CACHE") or Path(cache) / "kdforge")


def configure_ultralytics() -> Path:
    """Set Ultralytics' offline environment (values a user already set win) and provide its fonts; returns the
    settings folder. Warns when ultralytics was imported earlier, since it would not see these values. A settings
    folder the user chose (``YOLO_CONFIG_DIR``) keeps its settings; kdforge's own has its folders seeded."""
    own = "YOLO_CONFIG_DIR" not in os.environ
    folder = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir())))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    if "ultralytics" in sys.modules:
        warnings.warn(
            "ultralytics was imported before kdforge.app.detection: it may use its default settings folder and go "
            "online. Import kdforge.app.detection first.",
            stacklevel=2,
        )
    # A read-only home is no error: Ultralytics falls back to a temp folder, and fonts are only for plots.
    with contextlib.suppress(OSError):
        (folder / "Ultralytics").mkdir(parents=True, exist_ok=True)
        _provide_fonts(folder / "Ultralytics")
        if own:
            seed_settings(folder / "Ultralytics")
    return folder


def _provide_fonts(folder: Path) -> None:
    """Copy matplotlib's DejaVu Sans under the font names Ultralytics would otherwise download."""
    missing = [name for name in FONTS if not (folder / name).is_file()]
    if not missing:
        return
    try:
        import matplotlib  # an ultralytics dependency; absent only when the extra is not installed
    except ImportError:
        return
    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if source.is_file():
        for name in missing:
            shutil.copyfile(source, folder / name)


def seed_settings(folder: Path) -> None:
    """Point Ultralytics' folder settings into `folder` (its ``settings.json``, written before ultralytics reads
    it; a new file gets only these keys and Ultralytics adds its defaults, with a one-time schema notice)."""
    path = folder / "settings.json"
    wanted = {key: str(folder / key.removesuffix("_dir")) for key in SETTINGS_DIRS}
    try:
        current = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:  # a corrupt file: Ultralytics would reset it anyway
        current = {}
    current = current if isinstance(current, dict) else {}
    if any(current.get(key) != value for key, value in wanted.items()):
        text = json.dumps({**current, **wanted}, indent=2)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
