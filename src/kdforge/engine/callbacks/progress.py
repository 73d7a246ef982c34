"""What a person watches: the records in metrics.jsonl and the loggers, a progress bar, a line per evaluation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from kdforge.engine.callbacks.base import Callback
from kdforge.engine.loggers import console
from kdforge.engine.timing import progress_info

if TYPE_CHECKING:
    from kdforge.engine.trainer import Trainer


class ProgressLog(Callback):
    """Logs the ``train`` records (every ``log.every_steps`` steps and each epoch's last), the ``val`` records and
    the epoch's loss-weight schedule; shows one progress bar per epoch (when `show`) whose text is the last
    record's losses, throughput and time split."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self._bar: Progress | None = None
        self._task: Any = None

    def on_epoch_start(self, trainer: Trainer) -> None:
        state = trainer.state
        settings = trainer.epoch_settings
        if settings is not None and settings.weights:
            trainer.log.log("schedule", state.global_step, {"epoch": state.epoch + 1, **settings.as_log()})
            trainer.log.message(f"epoch {state.epoch + 1} loss weights: {settings.describe()}")
        if self.show:
            self._bar = _new_bar()
            self._bar.start()
            self._task = self._bar.add_task(
                "train",
                total=trainer.steps_per_epoch,
                completed=state.step_in_epoch,
                epoch=state.epoch + 1,
                epochs=trainer.config.train.epochs,
                info="",
            )

    def on_step_end(self, trainer: Trainer, applied: bool, record: dict[str, float] | None) -> None:
        if record is not None:
            trainer.log.log("train", trainer.state.global_step, record)
        if self._bar is not None:
            info = {"info": progress_info(record)} if record is not None else {}
            self._bar.update(self._task, completed=trainer.state.step_in_epoch, **info)
            if trainer.state.step_in_epoch == trainer.steps_per_epoch:
                self._close()  # before the evaluation's lines

    def on_evaluation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        state = trainer.state
        trainer.log.log("val", state.global_step, {"epoch": state.epoch, **metrics})
        shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        trainer.log.message(f"epoch {state.epoch}/{trainer.config.train.epochs}: {shown}")

    def on_epoch_end(self, trainer: Trainer) -> None:
        self._close()

    def on_fit_end(self, trainer: Trainer) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _new_bar() -> Progress:
    return Progress(
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
