"""TensorBoard scalars under ``tb/`` (``tensorboard --logdir runs``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdforge.engine.loggers.base import Logger, RunInfo, scalars


class TensorBoardLogger(Logger):
    """Every numeric value as a scalar (``train/loss``, ``loss/kd``, ``val/acc1`` ...) at its optimizer step.

    Args:
        log_dir: where the event files go (default: ``tb/`` in the run directory).
    """

    requires = ("tensorboard",)

    def __init__(self, log_dir: str | None = None) -> None:
        self.log_dir = log_dir
        self._writer: Any = None

    def start(self, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(Path(self.log_dir) if self.log_dir else run.run_dir / "tb"))

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        for name, value in scalars(kind, values).items():
            self._writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
