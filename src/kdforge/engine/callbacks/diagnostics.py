"""Diagnostics during training: each loss part's pull on the student, how closely it follows the teacher, and
plain-language warnings when distillation does not help the task (`kdforge.engine.diagnostics`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from kdforge.engine.callbacks.base import Callback
from kdforge.engine.diagnostics import Diagnosis, gradient_shares, teacher_agreement

if TYPE_CHECKING:
    from kdforge.engine.trainer import Trainer


class Diagnostics(Callback):
    """Every ``every_steps`` optimizer steps, each weighted loss part's gradient norm and share of the update (one
    extra backward per part, on the step's first micro-batch); at every evaluation, the student's agreement with
    the first live teacher (``agreement``); warnings from `Diagnosis` in the console and metrics.jsonl."""

    def __init__(self, every_steps: int, agreement: bool) -> None:
        self.every_steps, self.agreement = every_steps, agreement
        self.diagnosis = Diagnosis()
        self._shares: dict[str, float] = {}  # measured in the step, logged at its end

    def on_before_backward(self, trainer: Trainer, out: dict[str, Any]) -> None:
        due = self.every_steps and (trainer.state.global_step + 1) % self.every_steps == 0
        if due and trainer.distiller.term_names:
            self._shares = self._gradient_shares(trainer, out["parts"])

    @staticmethod
    def _gradient_shares(trainer: Trainer, parts: dict[str, Any]) -> dict[str, float]:
        """Parts are scaled like the loss, so fp16 gradients do not underflow; the norms are unscaled after."""
        weights, scaler = trainer.distiller.loss_weights(), trainer.scaler
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        weighted = {name: scaler.scale(weights[name] * value) for name, value in parts.items() if weights[name]}
        values = gradient_shares(weighted, trainer.params)
        return {k: v / scale if k.startswith("grad_norm/") else v for k, v in values.items()}

    def on_step_end(self, trainer: Trainer, applied: bool, record: dict[str, float] | None) -> None:
        if self._shares:
            trainer.log.log("diagnostics", trainer.state.global_step, self._shares)
            self._warn(trainer, self.diagnosis.train_record(self._shares))
            self._shares = {}
        if record is not None:
            self._warn(trainer, self.diagnosis.train_record(record))

    def on_evaluation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        distiller, keys = trainer.distiller, trainer.task.logit_keys
        if self.agreement and distiller.teacher is not None and keys:
            name = distiller.teacher_names[0]
            teacher = nn.Sequential(distiller.teacher_inputs[name], distiller.teacher)
            values = teacher_agreement(
                trainer.eval_model(),
                teacher,
                trainer.val_loader,
                trainer.device,
                trainer.amp,
                keys[0],
                trainer.config.train.channels_last,
                trainer.config.data.ignore_index,
                trainer.world,
            )
            trainer.log.log("diagnostics", trainer.state.global_step, {"epoch": trainer.state.epoch, **values})
        self._warn(trainer, self.diagnosis.val_record(metrics))

    @staticmethod
    def _warn(trainer: Trainer, warnings: list[str]) -> None:
        """Advice, so on the console only when verbose; always in metrics.jsonl (the report shows it)."""
        for text in warnings:
            trainer.log.message(f"[yellow]{text}")
            trainer.log.log("warning", trainer.state.global_step, {"message": text})
