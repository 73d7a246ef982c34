"""``task: detection`` in the task registry: YOLO on Ultralytics' own trainer, the one task whose loop is not
kdforge's `Trainer` (`kdforge.app.detection.run`). It needs no dataset, loss or metrics of kdforge's: it declares
its own training and how the CLI's short flags map onto its ``detect:`` section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdforge.core.config import RunConfig
from kdforge.core.errors import ConfigError
from kdforge.tasks.base import Task

# Short flags that mean a detect: key for task: detection (the others apply as for every task).
FLAG_KEYS = {
    "epochs": "detect.epochs",
    "batch_size": "detect.batch",
    "lr": "detect.optimizer.lr0",
    "temperature": "detect.distill.temperature",
    "teacher_checkpoint": "teacher.name",
}
REFUSED_FLAGS = {
    "data": "--data is a class-folder root; for task: detection use --set detect.data.root=DIR.",
    "alpha": (
        "--alpha weighs a classification KD term; task: detection has none. Weigh its terms with --set "
        "detect.distill.lambda_detection=... / lambda_distillation=... (see docs/detection.md)."
    ),
}


def _train(config: RunConfig, run_dir: Path | None, resume: bool) -> Any:
    from kdforge.app import detection  # imported here: ultralytics is an optional extra

    return detection.train_detection(config, run_dir=run_dir, resume=resume)


class DetectionTask(Task):
    name = "detection"
    own_training = staticmethod(_train)

    @classmethod
    def command_line(cls, flags: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """``--epochs`` and friends set ``detect.*`` keys; a teacher model file is the teacher's name (no generic
        KD term is added); ``--data`` and ``--alpha`` are refused with what to use."""
        flags = dict(flags)
        for flag, message in REFUSED_FLAGS.items():
            if flags.get(flag) is not None:
                raise ConfigError(message)
        if str(flags.get("teacher")).lower() not in ("none", "null"):
            teacher = flags.pop("teacher")
            flags["teacher_checkpoint"] = flags.get("teacher_checkpoint") or teacher
        moved = [f"{key}={flags.pop(flag)}" for flag, key in FLAG_KEYS.items() if flags.get(flag) is not None]
        return flags, moved
