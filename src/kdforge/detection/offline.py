"""Ultralytics without a network: nothing may fetch fonts, weights, hub files or send telemetry.

Ultralytics reads ``YOLO_OFFLINE``, ``YOLO_CONFIG_DIR`` and ``YOLO_AUTOINSTALL`` once, when it is first imported,
so `configure_ultralytics` runs before that (``kdforge.detection`` calls it on import). Its settings file goes to
a kdforge-owned folder (never the user's working directory), and the fonts its plots and dataset checks ask
for are provided there from matplotlib's bundled DejaVu Sans, so even ``plots=True`` needs no download.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path

FONTS = ("Arial.ttf", "Arial.Unicode.ttf")  # the names Ultralytics' check_font looks for


def config_dir() -> Path:
    """``$KDFORGE_CACHE`` or ``~/.cache/kdforge`` (``$XDG_CACHE_HOME`` respected): Ultralytics keeps its settings
    in an ``Ultralytics/`` folder inside."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("KDFORGE_CACHE") or Path(cache) / "kdforge")


def configure_ultralytics() -> Path:
    """Set Ultralytics' offline environment (values a user already set win) and provide its fonts; returns the
    settings folder. Warns when ultralytics was imported earlier, since it would not see these values."""
    folder = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir())))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    if "ultralytics" in sys.modules:
        warnings.warn(
            "ultralytics was imported before kdforge.detection: it may use its default settings folder and go "
            "online. Import kdforge.detection first.",
            stacklevel=2,
        )
    try:
        (folder / "Ultralytics").mkdir(parents=True, exist_ok=True)
        _provide_fonts(folder / "Ultralytics")
    except OSError:  # read-only home: Ultralytics falls back to a temp folder, and fonts are only for plots
        pass
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
