"""kdforge's ``detect:`` config as Ultralytics train arguments (one place, so the mapping reads as a table)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kdforge.core.config.detection import suggest_arg
from kdforge.core.config.schema import RunConfig
from kdforge.core.errors import ConfigError

YOLO_DIR = "yolo"  # Ultralytics' own run folder inside the kdforge run directory (weights/, results.csv)


def ultralytics_args(config: RunConfig, data_yaml: Path, run_dir: Path) -> dict[str, Any]:
    """The overrides for Ultralytics' ``DetectionTrainer``; ``plots`` off (no fonts, no matplotlib work)."""
    detect = config.detect
    args = {
        "model": config.student.name,
        "data": str(data_yaml),
        "task": "detect",
        "epochs": detect.epochs,
        "batch": detect.batch,
        "imgsz": detect.imgsz,
        "workers": detect.workers,
        "patience": detect.patience,
        "freeze": detect.freeze or None,
        "seed": config.seed,
        "deterministic": True,
        "device": device_arg(config.device),
        "amp": detect.amp,
        "cache": detect.cache,
        "optimizer": detect.optimizer.name,
        **detect.optimizer.model_dump(exclude={"name"}),
        **detect.augment.model_dump(),
        "project": str(run_dir.resolve()),
        "name": YOLO_DIR,
        "exist_ok": True,
        "plots": False,
        "verbose": config.log.verbose,
    }
    return {**args, **checked_extra(detect.extra)}


def check_single_process() -> None:
    """Detection trains on one device: under torchrun (or with several devices) Ultralytics re-launches its own
    DDP trainer in a subprocess, which cannot carry kdforge's trainer subclass, criterion and logging."""
    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1:
        raise ConfigError(
            f"task: detection runs on a single device, but WORLD_SIZE={world} (torchrun): start it as one process "
            "(kdforge train -c CONFIG --device cuda:0)."
        )


def device_arg(device: str) -> str:
    """kdforge's device names (auto, cpu, cuda, cuda:N) in Ultralytics' spelling ('' auto, 'cpu', '0');
    several devices (``cuda:0,1``) are refused, see `check_single_process`."""
    if "," in device:
        raise ConfigError(
            f"device {device!r} names several devices; task: detection trains on one (e.g. cuda:0): Ultralytics' "
            "multi-GPU path re-creates its trainer in a subprocess without kdforge's distillation."
        )
    if device == "auto":
        import torch

        return "0" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return "0"
    if device.startswith("cuda:"):
        return device.split(":", 1)[1]
    if device in ("cpu", "mps"):
        return device
    raise ConfigError(f"device {device!r} is not one task: detection understands (auto, cpu, cuda, cuda:N, mps).")


def checked_extra(extra: dict[str, Any]) -> dict[str, Any]:
    """``detect.extra``: any Ultralytics train argument, by its exact name."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    known = sorted(DEFAULT_CFG_DICT)
    for name in extra:
        if name not in DEFAULT_CFG_DICT:
            raise ConfigError(suggest_arg(name, known))
    return dict(extra)
