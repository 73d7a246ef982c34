"""Run logging: a rich progress bar, ``metrics.jsonl`` and TensorBoard scalars."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


class RunLogger:
    """Writes every record to ``metrics.jsonl`` (and TensorBoard); shows one progress bar per epoch.

    Args:
        run_dir: where ``metrics.jsonl`` and ``tb/`` go; None logs nowhere (e.g. in tests).
        tensorboard: also write TensorBoard scalars.
        progress: show the progress bar.
        verbose: print per-evaluation lines (warnings are always printed).
    """

    def __init__(
        self, run_dir: Path | None, tensorboard: bool = True, progress: bool = True, verbose: bool = True
    ) -> None:
        self.run_dir = run_dir
        self._jsonl = (run_dir / "metrics.jsonl").open("a") if run_dir else None
        self._tb = _summary_writer(run_dir / "tb") if run_dir and tensorboard else None
        self._progress: Progress | None = None
        self._task_id: Any = None
        self._show = progress
        self.verbose = verbose

    def start_epoch(self, epoch: int, epochs: int, total_steps: int, done_steps: int = 0) -> None:
        if not self._show:
            return
        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("<"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=False,
        )
        self._progress.start()
        self._task_id = self._progress.add_task(
            "train", total=total_steps, completed=done_steps, epoch=epoch + 1, epochs=epochs, info=""
        )

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task_id, advance=1)

    def set_info(self, info: str) -> None:
        """The text after the bar: loss parts, throughput, where the step's time goes."""
        if self._progress is not None:
            self._progress.update(self._task_id, info=info)

    def end_epoch(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """One record: ``{"kind": ..., "step": ..., **values}`` in metrics.jsonl, scalars in TensorBoard."""
        record = {"kind": kind, "step": step, **{k: _plain(v) for k, v in values.items()}}
        if self._jsonl:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._tb:
            for key, value in values.items():
                if isinstance(value, (int, float)) and key not in ("epoch",):
                    self._tb.add_scalar(key if "/" in key else f"{kind}/{key}", value, step)

    def message(self, text: str) -> None:
        if self.verbose:
            console.print(text)

    def warning(self, text: str) -> None:
        console.print(f"[yellow]{text}")

    def close(self) -> None:
        self.end_epoch()
        if self._jsonl:
            self._jsonl.close()
            self._jsonl = None
        if self._tb:
            self._tb.close()
            self._tb = None


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _summary_writer(path: Path) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(path))
