"""Checkpoints: ``last.pt`` (resume reads it), the best, and numbered ones every N epochs or steps."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdforge.core import runfiles
from kdforge.core.config import CheckpointConfig
from kdforge.engine.callbacks.base import Callback
from kdforge.engine.checkpoint import prune_numbered
from kdforge.engine.progress import metric, track_best

if TYPE_CHECKING:
    from kdforge.engine.trainer import Trainer


class Checkpointing(Callback):
    """Writes ``checkpoints/``: the best by ``best_metric`` after each evaluation, ``epoch_name`` every
    ``every_epochs`` epochs, ``step_name`` (and ``last.pt``) every ``every_steps`` steps, each numbered kind pruned
    to its newest ``keep_last``, and ``last.pt`` at every epoch's end. Every file is written atomically."""

    def __init__(self, config: CheckpointConfig, reported: dict[str, float]) -> None:
        metric(reported, config.best_metric)  # a typo fails now, not after the first epoch
        self.cfg = config

    def on_step_end(self, trainer: Trainer, applied: bool, record: dict[str, float] | None) -> None:
        step = trainer.state.global_step
        if self.cfg.every_steps and step % self.cfg.every_steps == 0:
            self._numbered(trainer, self.cfg.step_name.format(step=step), self.cfg.step_name, "step")
            trainer.save_checkpoint(runfiles.LAST)

    def on_evaluation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if track_best(trainer.state, metrics, self.cfg):
            trainer.save_checkpoint(self.cfg.best_name)

    def on_epoch_end(self, trainer: Trainer) -> None:
        epoch = trainer.state.epoch
        if self.cfg.every_epochs and epoch % self.cfg.every_epochs == 0:
            self._numbered(trainer, self.cfg.epoch_name.format(epoch=epoch), self.cfg.epoch_name, "epoch")
        trainer.save_checkpoint(runfiles.LAST)

    def _numbered(self, trainer: Trainer, name: str, pattern: str, field: str) -> None:
        path = trainer.save_checkpoint(name)
        if path is not None:
            prune_numbered(path.parent, pattern, field, self.cfg.keep_last)
