"""`KDDetectionTrainer`: Ultralytics' ``DetectionTrainer`` with kdforge's loss, clipping, guard and fitness.

What it changes, and nothing else:
- the student's loss criterion becomes `DistillationCriterion` (after Ultralytics made the EMA copy, so the EMA,
  the checkpoints and the validator only ever see a plain student);
- the projectors of the feature term join the optimizer as their own parameter group (warm-up and schedule apply);
- an optimizer step clips to ``detect.clip_grad_norm``, records the gradient norm, and skips a non-finite step
  (NaN/Inf loss or gradients), stopping after ``detect.max_nonfinite_steps`` of them in a row;
- fitness weighs P, R, mAP50 and mAP50-95 as ``detect.fitness`` says (best model and early stopping follow it);
- ``detect.ema: false`` makes the EMA copy follow the live weights (decay 0), as the validator reads the EMA;
- kdforge's own state (projector weights, step counters) is saved next to ``last.pt`` and read back on resume
  and on Ultralytics' NaN recovery, which also re-applies the criterion and the EMA setting it would drop;
- Ultralytics' AMP self-check is skipped: it downloads ``yolo26n.pt``, and kdforge never goes online.
Without a teacher it is Ultralytics' own training of the student: the fair baseline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import ultralytics.engine.trainer as ultralytics_trainer
from torch import nn
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils.torch_utils import unwrap_model

from kdforge.app.detection.criterion import DistillationCriterion, build_projectors
from kdforge.app.detection.teacher import check_pair, load_teacher
from kdforge.core.atomic import atomic_write
from kdforge.core.config.data import ModelSpec
from kdforge.core.config.detection import DetectConfig
from kdforge.core.errors import CheckpointError, DataError, NonFiniteLossError

STATE_FILE = "kdforge_state.pt"  # next to last.pt: projector weights and step counters (plain data)

METRIC_KEYS = {  # Ultralytics' validator keys -> kdforge's names
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
    "metrics/mAP50(B)": "mAP50",
    "metrics/mAP50-95(B)": "mAP50-95",
}


@dataclass
class StepStats:
    """What the logging callbacks read after each batch and epoch."""

    grad_norm: float = float("nan")
    nonfinite_run: int = 0
    nonfinite_total: int = 0
    batches: int = 0
    final: bool = False  # set while Ultralytics validates best.pt after training
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)


def fitness_of(metrics: dict[str, float], detect: DetectConfig) -> float:
    """The configured weighted sum of P, R, mAP50 and mAP50-95 (Ultralytics' validator key names)."""
    w = detect.fitness
    weights = (w.precision, w.recall, w.map50, w.map50_95)
    return float(sum(weight * float(metrics.get(key, 0.0)) for weight, key in zip(weights, METRIC_KEYS, strict=True)))


class KDDetectionTrainer(DetectionTrainer):
    """Ultralytics' detection trainer distilling from `teacher` (None: the student alone)."""

    def __init__(self, detect: DetectConfig, teacher: ModelSpec | None, overrides: dict[str, Any]) -> None:
        super().__init__(overrides=overrides)
        self.kd = detect
        self.stats = StepStats()
        self.teacher = load_teacher(teacher, self.data["nc"], self.device) if teacher is not None else None
        self.projectors: nn.ModuleList | None = None
        self.add_callback("on_model_save", save_kd_state)
        if self.resume:
            self._resume_stats()

    def get_dataset(self) -> dict[str, Any]:
        """Ultralytics' dataset check; its failures (a RuntimeError wrapping anything) become a `DataError`."""
        try:
            return super().get_dataset()
        except RuntimeError as exc:
            raise DataError(f"Ultralytics could not read the dataset {str(self.args.data)!r}: {exc}") from exc

    def _setup_train(self) -> None:
        with _no_amp_check():
            super()._setup_train()
        self._apply_kd()

    def _apply_kd(self) -> None:
        """The EMA setting and the distillation criterion; Ultralytics drops both when it rebuilds the EMA (resume,
        NaN recovery), so this runs again after each rebuild."""
        if not self.kd.ema:
            self.ema.decay = lambda updates: 0.0  # the "EMA" copies the weights at every step
        if self.teacher is not None:
            student = unwrap_model(self.model)
            check_pair(self.teacher, student)
            student.criterion = DistillationCriterion(student, self.teacher, self.kd.distill, self.projectors)

    def _load_checkpoint_state(self, ckpt: dict[str, Any]) -> None:
        """Ultralytics' optimizer/EMA restore (resume and NaN recovery), plus kdforge's projectors."""
        super()._load_checkpoint_state(ckpt)
        if self.projectors is not None:
            self.projectors.load_state_dict(self._read_state(ckpt.get("epoch"))["projectors"])
        self._apply_kd()

    def _resume_stats(self) -> None:
        """Continue the step counters, so resumed records never reuse a step number."""
        state = self._read_state(None, required=self.teacher is not None and self.kd.distill.feature_weight > 0)
        self.stats.batches = state.get("batches", 0)
        self.stats.nonfinite_total = state.get("nonfinite_total", 0)

    def _read_state(self, epoch: int | None, required: bool = True) -> dict[str, Any]:
        """The state saved with last.pt; `epoch` (last.pt's) must match, else the two files are from different
        epochs (a crash between the two writes)."""
        path = self.wdir / STATE_FILE
        if not path.is_file():
            if required:
                raise CheckpointError(
                    f"{str(path)!r} (the feature projectors saved with last.pt) is missing, so this run cannot be "
                    f"resumed exactly. Start a new run with student.name: {str(self.last)!r} "
                    "(student.trust_checkpoint: true) to continue from its weights."
                )
            return {}
        state = torch.load(path, map_location=self.device, weights_only=True)
        if epoch is not None and state["epoch"] != epoch:
            raise CheckpointError(
                f"{str(path)!r} is from epoch {state['epoch'] + 1} but last.pt from epoch {epoch + 1}: start a new run "
                f"with student.name: {str(self.last)!r} (student.trust_checkpoint: true)."
            )
        return state

    def build_optimizer(self, model: nn.Module, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        """Ultralytics' optimizer, plus the projectors as their own group (on resume its saved state, momentum
        included, is loaded after this, and the projector weights with it: `_load_checkpoint_state`)."""
        optimizer = super().build_optimizer(model, *args, **kwargs)
        if self.teacher is not None and self.kd.distill.feature_weight > 0:
            self.projectors = build_projectors(unwrap_model(model), self.teacher).to(self.device)
            optimizer.add_param_group({"params": list(self.projectors.parameters()), "param_group": "projector"})
        return optimizer

    def optimizer_step(self) -> None:
        """Clip, step, update the EMA; a non-finite loss or gradient skips the step (the scaler's own skips under
        AMP are left to it)."""
        self.scaler.unscale_(self.optimizer)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=self.kd.clip_grad_norm)
        finite_loss = self.loss is None or bool(torch.isfinite(self.loss))
        finite = finite_loss and (bool(torch.isfinite(norm)) or self.scaler.is_enabled())
        if finite:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        self.stats.grad_norm = float(norm)
        if finite:
            self.stats.nonfinite_run = 0
            if self.ema:
                self.ema.update(self.model)
        else:
            self._count_nonfinite()

    def _count_nonfinite(self) -> None:
        self.stats.nonfinite_run += 1
        self.stats.nonfinite_total += 1
        if self.stats.nonfinite_run >= self.kd.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{self.stats.nonfinite_run} optimizer steps in a row had a NaN/Inf loss or gradient (epoch "
                f"{self.epoch + 1}). Lower detect.optimizer.lr0, the distillation lambdas or detect.clip_grad_norm, "
                "or check the labels and the teacher."
            )

    def validate(self) -> tuple[dict[str, float] | None, float | None]:
        """Ultralytics' validation, with fitness as ``detect.fitness`` weighs it."""
        best = self.best_fitness
        metrics, _ = super().validate()
        if metrics is None:
            return None, None
        fitness = fitness_of(metrics, self.kd)
        self.best_fitness = fitness if best is None else max(best, fitness)
        return metrics, fitness

    def final_eval(self) -> None:
        """Ultralytics validates best.pt; kdforge keeps its per-class results."""
        self.stats.final = True
        super().final_eval()
        self.stats.per_class = per_class_metrics(self.validator.metrics, self.data["names"])
        self.stats.final = False


def save_kd_state(trainer: KDDetectionTrainer) -> None:
    """``on_model_save``: kdforge's state next to the last.pt Ultralytics just wrote (state dicts, plain numbers)."""
    state = {
        "epoch": trainer.epoch,
        "batches": trainer.stats.batches,
        "nonfinite_total": trainer.stats.nonfinite_total,
        "projectors": None if trainer.projectors is None else trainer.projectors.state_dict(),
    }
    atomic_write(trainer.wdir / STATE_FILE, lambda tmp: torch.save(state, tmp))


@contextlib.contextmanager
def _no_amp_check() -> Iterator[None]:
    """Ultralytics' ``check_amp`` compares a downloaded ``yolo26n.pt`` in fp16 and fp32 (it tries the network
    before it checks for one); kdforge trusts AMP as configured (``detect.amp: false`` turns it off)."""
    original = ultralytics_trainer.check_amp
    ultralytics_trainer.check_amp = lambda model: True
    try:
        yield
    finally:
        ultralytics_trainer.check_amp = original


def per_class_metrics(metrics: Any, names: dict[int, str]) -> dict[str, dict[str, float]]:
    """``{class name: {precision, recall, mAP50, mAP50-95}}`` from Ultralytics' ``DetMetrics``."""
    if metrics is None or not len(getattr(metrics, "ap_class_index", [])):
        return {}
    result = {}
    for i, cls in enumerate(metrics.ap_class_index):
        values = metrics.box.class_result(i)  # (P, R, mAP50, mAP50-95)
        result[names[int(cls)]] = dict(zip(METRIC_KEYS.values(), map(float, values), strict=True))
    return result
