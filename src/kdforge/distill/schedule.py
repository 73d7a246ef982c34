"""Per-epoch loss settings: phases and scheduled values (temperatures, weights), as small pure functions.

The Distiller reads them at every epoch start; the trainer logs them, so the run shows when each phase
began and how each scheduled value moved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from kdforge.core.config import DistillConfig, ScheduledValue


def schedule_value(value: float | ScheduledValue, epoch: int, total_epochs: int) -> float:
    """The value at 0-based `epoch`: constant, or ``start -> end`` linearly / by half a cosine over its span."""
    if not isinstance(value, ScheduledValue):
        return float(value)
    if value.schedule == "constant":
        return value.start
    first = value.start_epoch - 1  # 0-based epoch where the change begins
    span = value.epochs or max(1, total_epochs - first)
    progress = min(1.0, max(0.0, (epoch - first) / max(1, span - 1)))
    if value.schedule == "linear":
        return value.start + (value.end - value.start) * progress
    return value.end + (value.start - value.end) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class EpochSettings:
    """What the loss uses during one epoch."""

    task_weight: float
    weights: dict[str, float]
    params: dict[str, dict[str, float]] = field(default_factory=dict)
    phase: int | None = None  # index of the active phase, None after the last one

    def describe(self) -> str:
        """``task 0.6, kd 0.3 (temperature 4), fitnet 0.1`` for the console."""
        terms = [
            f"{name} {w:.3g}" + "".join(f" ({p} {v:.3g})" for p, v in self.params.get(name, {}).items())
            for name, w in self.weights.items()
        ]
        phase = f" [phase {self.phase + 1}]" if self.phase is not None else ""
        return ", ".join([f"task {self.task_weight:.3g}", *terms]) + phase

    def as_log(self) -> dict[str, float]:
        values = {"task_weight": self.task_weight, "phase": -1 if self.phase is None else self.phase}
        values.update({f"weight/{name}": w for name, w in self.weights.items()})
        for name, params in self.params.items():
            values.update({f"{name}/{param}": v for param, v in params.items()})
        return values


def epoch_settings(cfg: DistillConfig, epoch: int, total_epochs: int) -> EpochSettings:
    """Base (possibly scheduled) weights and parameters at `epoch`, with the active phase applied."""
    names = cfg.term_names()
    task_weight = schedule_value(cfg.task_weight, epoch, total_epochs)
    weights = {n: schedule_value(t.weight, epoch, total_epochs) for n, t in zip(names, cfg.terms, strict=True)}
    params = {
        n: {p: schedule_value(v, epoch, total_epochs) for p, v in t.scheduled_params().items()}
        for n, t in zip(names, cfg.terms, strict=True)
    }
    index = next((i for i, phase in enumerate(cfg.phases) if epoch < phase.until_epoch), None)
    if index is not None:
        phase = cfg.phases[index]
        scale = 1.0 if phase.scale_terms is None else phase.scale_terms
        task_weight = task_weight if phase.task_weight is None else phase.task_weight
        weights = {n: phase.weights.get(n, w * scale) for n, w in weights.items()}
    return EpochSettings(task_weight, weights, {n: p for n, p in params.items() if p}, index)
