"""Ultralytics' callbacks into kdforge's logs: ``metrics.jsonl`` records (the format `kdforge.app.report` reads)
and every configured logger (TensorBoard, CSV, W&B, MLflow), through `RunLog`.

Records: ``train`` (loss parts raw as ``loss/*`` and weighted as ``wloss/*``, ``loss/total``, ``grad_norm``,
``lr``) every ``log.every_steps`` batches or once per epoch (``detect.log_every``); ``val`` after each epoch's
validation (``precision``, ``recall``, ``mAP50``, ``mAP50-95``, ``fitness``, validation losses). A non-finite
value (the gradient norm of a skipped NaN step) is left out of its record: JSON has no NaN or Infinity, and the
skipped step is counted in ``nonfinite_total``. Steps count batches, continued across a resume.
"""

from __future__ import annotations

import math
from typing import Any

from kdforge.app.detection.trainer import METRIC_KEYS, KDDetectionTrainer
from kdforge.core.config.schema import RunConfig
from kdforge.engine.loggers import RunLog


def loss_weights(config: RunConfig, distilling: bool) -> dict[str, float]:
    """Each logged loss part's weight in the per-image total (the student alone: Ultralytics' loss as is)."""
    kd = config.detect.distill
    det = kd.lambda_detection if distilling else 1.0
    weights = {"box": det, "cls": det, "dfl": det}
    if distilling:
        weights |= {
            "kd_ciou": kd.lambda_distillation * kd.lambda_dist_ciou,
            "kd_kl": kd.lambda_distillation * kd.lambda_dist_kl,
            "kd_feat": kd.feature_weight,
        }
    return weights


def loss_record(items: dict[str, Any], weights: dict[str, float]) -> dict[str, float]:
    """``loss/<part>``, ``wloss/<part>`` and ``loss/total`` from Ultralytics' loss items (``box_loss`` -> ``box``)."""
    raw = {name.removesuffix("_loss"): float(value) for name, value in items.items()}
    weighted = {name: value * weights.get(name, 1.0) for name, value in raw.items()}
    return {
        "loss/total": sum(weighted.values()),
        **{f"loss/{name}": value for name, value in raw.items()},
        **{f"wloss/{name}": value for name, value in weighted.items()},
    }


class LogBridge:
    """Registered on a `KDDetectionTrainer`; writes through `logger`."""

    def __init__(self, config: RunConfig, logger: RunLog, distilling: bool) -> None:
        self.logger = logger
        self.weights = loss_weights(config, distilling)
        self.per_batch = config.detect.log_every == "batch"
        self.every = config.log.every_steps
        self.last_val: dict[str, float] = {}

    def attach(self, trainer: KDDetectionTrainer) -> None:
        trainer.add_callback("on_train_batch_end", self.on_batch_end)
        trainer.add_callback("on_fit_epoch_end", self.on_epoch_end)

    def on_batch_end(self, trainer: KDDetectionTrainer) -> None:
        trainer.stats.batches += 1
        if self.per_batch and trainer.loss_items and trainer.stats.batches % self.every == 0:
            nb = len(trainer.train_loader)
            epoch = trainer.epoch + ((trainer.stats.batches - 1) % nb + 1) / nb
            self._train_record(trainer, trainer.loss_items, epoch)

    def on_epoch_end(self, trainer: KDDetectionTrainer) -> None:
        if trainer.stats.final or not trainer.metrics:
            return  # the validation of best.pt after training: its results go to summary.json
        if not self.per_batch and trainer.tloss:
            self._train_record(trainer, trainer.tloss, trainer.epoch + 1)
        self.last_val = finite(val_record(trainer.metrics, trainer.fitness))
        self.logger.log("val", trainer.stats.batches, {"epoch": trainer.epoch + 1, **self.last_val})
        shown = "  ".join(f"{k} {v:.4g}" for k, v in self.last_val.items() if "/" not in k)
        self.logger.message(f"epoch {trainer.epoch + 1}/{trainer.epochs}: {shown}")

    def _train_record(self, trainer: KDDetectionTrainer, items: dict[str, Any], epoch: float) -> None:
        values = {
            "epoch": epoch,
            **loss_record(items, self.weights),
            "grad_norm": trainer.stats.grad_norm,
            "lr": trainer.optimizer.param_groups[0]["lr"],
            "nonfinite_total": trainer.stats.nonfinite_total,
        }
        self.logger.log("train", trainer.stats.batches, finite(values))


def finite(values: dict[str, Any]) -> dict[str, Any]:
    """`values` without NaN/Inf floats (they would be written as non-standard JSON)."""
    return {k: v for k, v in values.items() if not (isinstance(v, float) and not math.isfinite(v))}


def val_record(metrics: dict[str, Any], fitness: float | None) -> dict[str, float]:
    """Validation metrics under kdforge's names, validation losses as ``loss/<part>``."""
    record = {name: float(metrics[key]) for key, name in METRIC_KEYS.items() if key in metrics}
    record["fitness"] = float(fitness) if fitness is not None else math.nan
    for key, value in metrics.items():
        if key.startswith("val/") and not key.startswith("val/kd_"):  # distillation terms are not computed on val
            record[f"loss/{key[4:].removesuffix('_loss')}"] = float(value)
    return record
