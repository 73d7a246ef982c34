"""Where a run stands: its plain progress data (saved in every checkpoint), the best epoch so far and early
stopping, decided from each evaluation's metrics."""

from __future__ import annotations

from dataclasses import dataclass

from kdforge.core.config import CheckpointConfig, EarlyStoppingConfig
from kdforge.core.errors import ConfigError, did_you_mean


@dataclass
class TrainState:
    """Plain progress data, saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # batches consumed in the current epoch
    global_step: int = 0  # optimizer steps taken (skipped ones included)
    nonfinite_total: int = 0
    nonfinite_streak: int = 0
    best: float | None = None
    best_epoch: int | None = None
    stop_best: float | None = None
    bad_epochs: int = 0
    stopped_early: bool = False


def improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether `value` beats `best` by more than `min_delta` in direction `mode` (any value beats None)."""
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


def metric(metrics: dict[str, float], name: str) -> float:
    """``metrics[name]``, or a `ConfigError` naming the reported metrics when the task does not report it."""
    if name not in metrics:
        raise ConfigError(
            f"metric {name!r} (early_stopping.metric / checkpoint.best_metric) is not reported by this task."
            f"{did_you_mean(name, metrics)} Reported: {', '.join(metrics)}."
        )
    return metrics[name]


def track_best(state: TrainState, metrics: dict[str, float], checkpoint: CheckpointConfig) -> bool:
    """Record this evaluation as the best when ``checkpoint.best_metric`` improved; returns whether it did."""
    value = metric(metrics, checkpoint.best_metric)
    if not improved(value, state.best, checkpoint.best_mode):
        return False
    state.best, state.best_epoch = value, state.epoch
    return True


def track_early_stopping(state: TrainState, metrics: dict[str, float], es: EarlyStoppingConfig | None) -> str | None:
    """Count evaluations without improvement of ``es.metric``; at ``es.patience`` mark the run stopped and
    return the message that says why (None otherwise)."""
    if es is None:
        return None
    value = metric(metrics, es.metric)
    if improved(value, state.stop_best, es.mode, es.min_delta):
        state.stop_best, state.bad_epochs = value, 0
        return None
    state.bad_epochs += 1
    if state.bad_epochs < es.patience:
        return None
    state.stopped_early = True
    return (
        f"early stopping at epoch {state.epoch}: {es.metric} has not improved on {state.stop_best:.4g} "
        f"for {es.patience} evaluations"
    )
