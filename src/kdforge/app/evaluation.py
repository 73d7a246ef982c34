"""``kdforge eval`` and ``kdforge export``: a student rebuilt from a config and a checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from kdforge.app.build import build_task
from kdforge.app.checks import task_class
from kdforge.app.export import export_all
from kdforge.app.report.summary import print_summary
from kdforge.core import runfiles
from kdforge.core.config import RunConfig, load_config
from kdforge.core.context import setup_process
from kdforge.core.errors import CheckpointError, ConfigError
from kdforge.engine.checkpoint import FORMAT
from kdforge.engine.evaluate import evaluate
from kdforge.models.build import build_model, count_parameters, tapped_model
from kdforge.models.checkpoint import check_state_dict, evaluated_weights, read_state_dict


def run_config(run_dir: Path, overrides: list[str] | None = None) -> RunConfig:
    if not (run_dir / runfiles.CONFIG).is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a kdforge run directory (no config.yaml inside).")
    return load_config([run_dir / runfiles.CONFIG], overrides)


def checkpoint_path(run_dir: Path | None, checkpoint: str) -> Path:
    """``best``/``last`` name a run's checkpoints (best under the run's ``checkpoint.best_name``); anything else
    is a file path."""
    if checkpoint in ("best", "last"):
        if run_dir is None:
            raise ConfigError(f"--checkpoint {checkpoint} needs a run directory; give a file path instead.")
        name = run_config(run_dir).train.checkpoint.best_name if checkpoint == "best" else runfiles.LAST
        return runfiles.checkpoint(run_dir, name)
    return Path(checkpoint)


def student_weights(path: Path) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """The student's weights in `path` (the EMA's when a kdforge checkpoint has one) and its class names."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; use best, last or a file path.")
    ckpt = _kdforge_checkpoint(path)
    if ckpt is not None:
        return dict(evaluated_weights(ckpt)), ckpt.get("classes")
    return read_state_dict(path), None


def _kdforge_checkpoint(path: Path) -> dict | None:
    """The file's contents when it is a kdforge training checkpoint (read once), else None."""
    if path.suffix != ".pt":
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not ours; read_state_dict gives the precise error
        return None
    return obj if isinstance(obj, dict) and obj.get("format") == FORMAT else None


def load_student(config: RunConfig, num_classes: int | None, state: dict[str, torch.Tensor], what: str) -> nn.Module:
    net = build_model(config.student.model_copy(update={"checkpoint": None}), num_classes, "student")
    check_state_dict(net, state, what)
    net.load_state_dict(state)
    return net.eval()


def evaluate_checkpoint(config: RunConfig, path: Path) -> dict[str, float]:
    """Metrics of the student in `path` on the validation split of `config`'s data (no train split needed)."""
    device = setup_process(config).device
    task = build_task(config)
    val_set = task.eval_dataset()
    state, _ = student_weights(path)
    net = load_student(config, task.model_classes, state, f"checkpoint {str(path)!r}").to(device)
    loader = DataLoader(
        val_set, batch_size=config.data.val_batch_size or config.data.batch_size, num_workers=config.data.num_workers
    )
    metrics = evaluate(tapped_model(net, config.student, {}, task.to_outputs), loader, task, device)
    print_summary(
        {
            "task": config.task,
            "student": {"name": config.student.name, "metrics": metrics, "params": count_parameters(net)},
        }
    )
    return metrics


def export_run(run_dir: Path, checkpoint: str, formats: list[str], out: Path | None = None) -> list[Path]:
    """Write the run's student in each format into `out` (default: the run directory).

    The class count comes from the checkpoint, so the training data need not be present any more.
    """
    config = run_config(run_dir)
    setup_process(config.model_copy(update={"device": "cpu"}))
    path = checkpoint_path(run_dir, checkpoint)
    state, classes = student_weights(path)
    if task_class(config.task).embeds_only:
        model_classes = 0  # a backbone: no class count, no dataset needed
    else:
        if classes is None:
            task = build_task(config)
            task.eval_dataset()
            classes = task.class_names
        model_classes = config.data.num_classes or len(classes)
    net = load_student(config, model_classes, state, f"checkpoint {str(path)!r}")
    size = config.data.image_size
    example = torch.randn(2, config.data.in_chans, size, size)  # batch 2: batch 1 would be specialised away
    written, failed = export_all(net, example, out or run_dir, formats)
    for reason in failed:
        print(f"kdforge: warning: not exported: {reason}")
    return written
