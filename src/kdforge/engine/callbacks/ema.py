"""An exponential moving average of the student's weights, evaluated and exported in its place."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdforge.core.config import EMAConfig
from kdforge.engine.callbacks.base import Callback
from kdforge.engine.ema import ModelEma

if TYPE_CHECKING:
    from kdforge.engine.trainer import Trainer


class EMA(Callback):
    """Keeps `ModelEma` of the student (updated after every applied step) and makes it the trainer's
    ``eval_network``. Its state goes into checkpoints under ``ema``, where `evaluated_weights` finds it. Made after
    DDP has given every process rank 0's weights; a resume from a checkpoint without one (EMA switched on at
    resume) starts it from the resumed weights, not the initial ones."""

    def __init__(self, config: EMAConfig) -> None:
        self.cfg = config
        self.ema: ModelEma | None = None

    def _start(self, trainer: Trainer) -> ModelEma:
        self.ema = ModelEma(trainer.student, self.cfg.decay, self.cfg.warmup)
        trainer.eval_network = self.ema.module
        return self.ema

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.ema is None:
            self._start(trainer)

    def on_step_end(self, trainer: Trainer, applied: bool, record: dict[str, float] | None) -> None:
        if applied:
            self.ema.update(trainer.student)

    def on_save_checkpoint(self, trainer: Trainer, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, trainer: Trainer, checkpoint: dict[str, Any]) -> None:
        ema = self._start(trainer)
        if checkpoint.get("ema"):
            ema.load_state_dict(checkpoint["ema"])
