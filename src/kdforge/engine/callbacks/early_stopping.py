"""Early stopping on a validation metric."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdforge.core.config import EarlyStoppingConfig
from kdforge.engine.callbacks.base import Callback
from kdforge.engine.progress import metric, track_early_stopping

if TYPE_CHECKING:
    from kdforge.engine.trainer import Trainer


class EarlyStopping(Callback):
    """Stops the run when ``metric`` has not improved by ``min_delta`` for ``patience`` evaluations (its counters
    live in the trainer's state, so a resumed run keeps counting)."""

    def __init__(self, config: EarlyStoppingConfig, reported: dict[str, float]) -> None:
        metric(reported, config.metric)  # a typo fails now, not after the first epoch
        self.cfg = config

    def on_evaluation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        reason = track_early_stopping(trainer.state, metrics, self.cfg)
        if reason is not None:
            trainer.request_stop(reason)
