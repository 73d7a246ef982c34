"""``kdforge eval`` and ``kdforge export``: a run's student, rebuilt from its config and a checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kdforge.config import RunConfig, load_config
from kdforge.engine.checkpoint import FORMAT, load_checkpoint
from kdforge.engine.evaluate import evaluate
from kdforge.errors import CheckpointError, ConfigError
from kdforge.export import EXPORTERS, export_student
from kdforge.models.build import build_model
from kdforge.models.checkpoint import check_state_dict, read_state_dict
from kdforge.models.taps import TappedModel
from kdforge.pipeline import build_loaders, build_task
from kdforge.report.summary import print_summary
from kdforge.runtime import setup_process
from kdforge.tasks.base import Task

EXPORT_NAMES = {"torchscript": "student.torchscript.pt", "onnx": "student.onnx"}


def run_config(run_dir: Path, overrides: list[str] | None = None) -> RunConfig:
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a kdforge run directory (no config.yaml inside).")
    return load_config([run_dir / "config.yaml"], overrides)


def student_weights(run_dir: Path, checkpoint: str) -> dict[str, torch.Tensor]:
    """``best``/``last`` or a path: the student's weights (the EMA's when the checkpoint has one)."""
    path = run_dir / "checkpoints" / f"{checkpoint}.pt" if checkpoint in ("best", "last") else Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; use best, last or a file path.")
    if path.suffix == ".pt" and _is_kdforge(path):
        ckpt = load_checkpoint(path)
        return ckpt["ema"]["module"] if ckpt.get("ema") else ckpt["student"]
    return read_state_dict(path)


def _is_kdforge(path: Path) -> bool:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not ours; read_state_dict gives the precise error
        return False
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load_student(config: RunConfig, task: Task, run_dir: Path, checkpoint: str) -> nn.Module:
    net = build_model(config.student.model_copy(update={"checkpoint": None}), task.num_classes, "student")
    state = student_weights(run_dir, checkpoint)
    check_state_dict(net, state, f"checkpoint {checkpoint!r}")
    net.load_state_dict(state)
    return net.eval()


def evaluate_run(run_dir: Path, checkpoint: str = "best", overrides: list[str] | None = None) -> dict[str, float]:
    config = run_config(run_dir, overrides)
    device = setup_process(config)
    task = build_task(config)
    train_set, val_set = task.datasets()
    _, val_loader = build_loaders(config, train_set, val_set, device)
    net = load_student(config, task, run_dir, checkpoint).to(device)
    metrics = evaluate(TappedModel(net, {}, task.to_outputs), val_loader, task, device)
    print_summary(
        {
            "task": config.task,
            "student": {
                "name": config.student.name,
                "metrics": metrics,
                "params": sum(p.numel() for p in net.parameters()),
            },
        }
    )
    return metrics


def export_run(
    run_dir: Path, checkpoint: str = "best", formats: list[str] | None = None, out: Path | None = None
) -> list[Path]:
    """Write the student in each format into `out` (default: the run directory); returns the paths."""
    config = run_config(run_dir)
    setup_process(config.model_copy(update={"device": "cpu"}))
    task = build_task(config)
    task.datasets()  # class count and names
    net = load_student(config, task, run_dir, checkpoint)
    out = out or run_dir
    example = torch.zeros(1, config.data.in_chans, config.data.image_size, config.data.image_size)
    paths = []
    for fmt in formats or ["safetensors"]:
        if fmt == "safetensors":
            paths.append(export_student(net, out / "student.safetensors"))
        else:
            paths.append(EXPORTERS[fmt](net, example, out / EXPORT_NAMES[fmt]))
    return paths
