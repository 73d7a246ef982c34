"""The task-agnostic training loop.

Epochs capped by ``max_steps_per_epoch``, gradient accumulation, AMP, clipping, a NaN/Inf guard, EMA,
per-iteration schedule, early stopping, checkpoints (best, every N epochs, every N steps, last), exact
resume (also from inside an epoch), several processes under torchrun, and a clean stop on a signal.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import signal
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from kdforge.app.runtime import seed_everything
from kdforge.core.config import RunConfig
from kdforge.core.distributed import average_buffers, barrier, current_world, min_across, sum_across, wrap
from kdforge.core.errors import CheckpointError, NonFiniteLossError
from kdforge.data.inputs import batch_size
from kdforge.distill.distiller import Distiller
from kdforge.engine.buffers import BufferSnapshot
from kdforge.engine.checkpoint import (
    FORMAT,
    VERSION,
    atomic_save,
    load_checkpoint,
    prune_numbered,
    rng_state,
    set_rng_state,
)
from kdforge.engine.diagnostics import Diagnosis, gradient_shares, teacher_agreement
from kdforge.engine.ema import ModelEma
from kdforge.engine.evaluate import autocast_context, evaluate, resolve_amp, to_device
from kdforge.engine.logger import RunLogger
from kdforge.engine.meter import StepMeter
from kdforge.engine.optim import build_optimizer, build_scheduler
from kdforge.engine.preemption import PREEMPTED_MARKER, Preempted, StopSignals
from kdforge.engine.progress import TrainState, metric, track_best, track_early_stopping
from kdforge.engine.timing import StepTimer, progress_info
from kdforge.models.taps import TappedModel
from kdforge.tasks.base import Task


class Trainer:
    """Trains the distiller's student (and adapters); the teacher is never touched.

    Args:
        config: the validated run config (``train``, ``log`` and ``seed`` are read).
        distiller: student + frozen teacher + terms, already on `device` and set up.
        task: the task (metrics, outputs).
        train_loader: its sampler must have ``set_epoch(epoch, start)`` (`ResumableSampler`).
        val_loader: evaluated after every ``eval_every_epochs`` epochs.
        device: where the batches go.
        run_dir: checkpoints and logs go here; None writes nothing.
        logger: a `RunLogger` (a silent one is made when None).
    """

    def __init__(
        self,
        config: RunConfig,
        distiller: Distiller,
        task: Task,
        train_loader: DataLoader,
        val_loader: DataLoader,
        device: torch.device,
        run_dir: Path | None = None,
        logger: RunLogger | None = None,
    ) -> None:
        self.cfg, self.train_cfg = config, config.train
        self.distiller, self.task, self.device = distiller, task, device
        self.train_loader, self.val_loader = train_loader, val_loader
        self.run_dir = run_dir
        self.logger = logger or RunLogger(None, tensorboard=False, progress=False)
        self._check_metric_names()
        self.student_net: nn.Module = distiller.student.model  # the bare network: checkpoints, EMA, export
        if self.train_cfg.channels_last:  # before the optimizer and the EMA copy, which keep the format
            distiller.student.to(memory_format=torch.channels_last)  # 4-D weights only
        self.amp = resolve_amp(self.train_cfg.amp, device)
        self.autocast = autocast_context(device, self.amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == "fp16")
        self.steps_per_epoch = min(len(train_loader), self.train_cfg.max_steps_per_epoch or len(train_loader))
        self.optimizer_steps_per_epoch = math.ceil(self.steps_per_epoch / self.train_cfg.grad_accum)
        self.params = list(distiller.trainable_parameters())
        self.optimizer = build_optimizer(distiller.trainable_modules().values(), self.train_cfg.optimizer)
        self.scheduler = build_scheduler(
            self.optimizer,
            self.train_cfg.schedule,
            self.train_cfg.epochs * self.optimizer_steps_per_epoch,
            self.optimizer_steps_per_epoch,
        )
        self.buffers = BufferSnapshot([distiller.student])  # BN statistics; term state guards itself
        self.meter = StepMeter()
        self.timer = StepTimer(device)
        distiller.time_section = self.timer.section
        self.state = TrainState()
        self.last_metrics: dict[str, float] = {}
        if self.train_cfg.compile_student:
            distiller.student = torch.compile(distiller.student)
        self.world = current_world()
        self.model = wrap(distiller, device)  # DistributedDataParallel under torchrun, else the distiller
        self.ema = self._new_ema()  # after wrap: DDP has given every process rank 0's weights
        self.stop = StopSignals()
        self.diagnosis = Diagnosis()
        self._shares: dict[str, float] = {}  # the last diagnostic micro-step's gradient shares, logged after its step

    def _new_ema(self) -> ModelEma | None:
        ema = self.train_cfg.ema
        return ModelEma(self.student_net, ema.decay, ema.warmup) if ema else None

    def _check_metric_names(self) -> None:
        """Fail before training, not after the first epoch, on a metric name the task does not report."""
        reported = self.task.metrics().compute()
        for name in {self.train_cfg.checkpoint.best_metric} | (
            {self.train_cfg.early_stopping.metric} if self.train_cfg.early_stopping else set()
        ):
            metric(reported, name)

    # ---------------------------------------------------------------- loop
    def fit(self) -> dict[str, float]:
        """Train until ``epochs`` or early stopping; returns the last evaluation's metrics.

        Raises:
            Preempted: a stop signal arrived; ``last.pt`` holds the finished steps.
        """
        try:
            with self.stop:
                if self._stop_agreed():  # the signal came before the first step (e.g. in the teacher's evaluation)
                    self._preempted()
                while self.state.epoch < self.train_cfg.epochs and not self.state.stopped_early:
                    self._train_epoch()
                    self._end_epoch()
                    if self._stop_agreed():
                        self._preempted(saved=True)  # _end_epoch has just written last.pt
        finally:
            self.logger.end_epoch()
        if self.run_dir is not None:
            (self.run_dir / PREEMPTED_MARKER).unlink(missing_ok=True)
        return self.last_metrics

    def _stop_agreed(self) -> bool:
        """Whether any process received a stop signal (so that all stop after the same step)."""
        if not self.world.distributed:
            return self.stop.requested
        return min_across(self._keep_going()).item() == 0

    def _keep_going(self) -> torch.Tensor:
        return torch.tensor([0.0 if self.stop.requested else 1.0], device=self.device)

    def _preempted(self, saved: bool = False) -> None:
        """Write ``last.pt`` (unless it was just `saved`) and the marker that makes the same command resume, then
        stop."""
        if not saved:
            self.save("last.pt")
        if self.run_dir is not None:
            (self.run_dir / PREEMPTED_MARKER).write_text(f"{self.state.global_step}\n")
        barrier()  # the launcher kills the others once one process exits: let rank 0 finish writing first
        state, name = self.state, signal.Signals(self.stop.received or signal.SIGTERM).name
        where = (
            f"epoch {state.epoch + 1}, batch {state.step_in_epoch}"
            if state.step_in_epoch
            else f"end of epoch {state.epoch}"
        )
        raise Preempted(
            f"stopped by {name} after optimizer step {state.global_step} ({where}); last.pt holds it. Run the same "
            f"command again to continue" + (f" (or kdforge train --resume {self.run_dir})." if self.run_dir else "."),
            self.stop.received or signal.SIGTERM,
        )

    def _train_epoch(self) -> None:
        state, accum, steps = self.state, self.train_cfg.grad_accum, self.steps_per_epoch
        start = state.step_in_epoch
        self.train_loader.sampler.set_epoch(state.epoch, start=start * self.train_loader.batch_size)
        if self.train_loader.generator is not None:  # workers' seeds come from here, not the global RNG
            self.train_loader.generator.manual_seed(self.cfg.seed * 1_000_003 + state.epoch * 7919 + self.world.rank)
        self.distiller.train()
        settings = self.distiller.set_epoch(state.epoch)
        if settings is not None and settings.weights:
            self.logger.log("schedule", state.global_step, {"epoch": state.epoch + 1, **settings.as_log()})
            self.logger.message(f"epoch {state.epoch + 1} loss weights: {settings.describe()}")
        self.logger.start_epoch(state.epoch, self.train_cfg.epochs, steps, start)
        # Every epoch's last step logs, so these only drop setup, evaluation and checkpoint time from the clocks.
        self.meter.reset()
        self.timer.reset()
        batches = itertools.islice(self.train_loader, steps - start)
        while (batch := self._next_batch(batches)) is not None:
            index = state.step_in_epoch
            window_start = index - index % accum
            window_len = min(accum, steps - window_start)  # the epoch's last window may be shorter
            window_end = index + 1 == window_start + window_len
            with self.timer.section("micro_step"):
                self._micro_step(batch, index == window_start, window_len, window_end)
            state.step_in_epoch += 1
            if window_end:
                with self.timer.section("optimizer"):
                    stop = self._optimizer_step()
                self._after_optimizer_step()
                if stop:
                    self.logger.end_epoch()
                    self._preempted()
            self.logger.advance()
        self.logger.end_epoch()

    def _next_batch(self, batches: Iterator[dict[str, Any]]) -> dict[str, Any] | None:
        """The next batch on the device (None at the end); waiting for it and copying it is the step's data time."""
        with self.timer.section("data"):
            batch = next(batches, None)
            return None if batch is None else to_device(batch, self.device, self.train_cfg.channels_last)

    def _micro_step(self, batch: dict[str, Any], window_start: bool, window_len: int, window_end: bool) -> None:
        if window_start:
            self.buffers.snapshot()
        # Under DDP, gradients are averaged across processes once per window: on its last micro-step.
        sync = contextlib.nullcontext() if window_end or not self.world.distributed else self.model.no_sync()
        with sync:
            with self.autocast():
                out = self.model(batch)
            if window_start and self._diagnostics_due():
                self._shares = self._gradient_shares(out["parts"])
            self.scaler.scale(out["loss"] / window_len).backward()
        self.meter.add(out["loss"], out["parts"], batch_size(batch["input"]))

    def _diagnostics_due(self) -> bool:
        every = self.cfg.log.diagnostics_every_steps
        return bool(every and self.distiller.term_names and (self.state.global_step + 1) % every == 0)

    def _gradient_shares(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        """Each weighted loss part's gradient norm and share of the update (one extra backward per part).

        Parts are scaled like the loss, so fp16 gradients do not underflow; the norms are unscaled after."""
        weights = self._weights()
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        weighted = {name: self.scaler.scale(weights[name] * value) for name, value in parts.items() if weights[name]}
        values = gradient_shares(weighted, self.params)
        return {k: v / scale if k.startswith("grad_norm/") else v for k, v in values.items()}

    def _weights(self) -> dict[str, float]:
        return {
            "task": self.distiller.task_weight,
            **dict(zip(self.distiller.term_names, self.distiller.term_weights, strict=True)),
        }

    def _warn(self, warnings: list[str]) -> None:
        """Diagnosis warnings: advice, so on the console only when verbose; always in metrics.jsonl (the report)."""
        for text in warnings:
            self.logger.message(f"[yellow]{text}")
            self.logger.log("warning", self.state.global_step, {"message": text})

    def _optimizer_step(self) -> bool:
        """Apply the window's gradients, or skip them when the loss or the gradients are not finite; returns
        whether a stop signal asks to end here.

        The finiteness check is the step's one host-device sync (and, under torchrun, its one collective
        besides the gradients': every process decides alike).
        """
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        flags = torch.stack([self.meter.pending_loss_finite(), torch.isfinite(norm)]).float()
        if self.world.distributed:
            flags = min_across(torch.cat([flags, self._keep_going()]))
        loss_ok, grads_ok, *keep_going = (bool(flag) for flag in flags.tolist())
        if loss_ok and (grads_ok or self.amp == "fp16"):  # fp16 overflow: the scaler skips and lowers its scale
            self._apply_gradients(norm if grads_ok else None)
        else:
            self.buffers.restore()
            self.meter.discard()
            self._nonfinite("loss" if not loss_ok else "gradient norm")
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state.global_step += 1
        return not keep_going[0] if keep_going else self.stop.requested

    def _apply_gradients(self, norm: torch.Tensor | None) -> None:
        if self.train_cfg.clip_grad_norm and norm is not None:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.train_cfg.clip_grad_norm, norm)
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.meter.commit()
        if self.scaler.get_scale() < scale:  # the fp16 scaler skipped this step
            return
        self.state.nonfinite_streak = 0
        if self.ema is not None:
            self.ema.update(self.student_net)

    def _nonfinite(self, what: str) -> None:
        self.state.nonfinite_total += 1
        self.state.nonfinite_streak += 1
        self.logger.warning(
            f"step {self.state.global_step}: the {what} is not finite; step skipped "
            f"({self.state.nonfinite_total} skipped in total)"
        )
        if self.state.nonfinite_streak >= self.train_cfg.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{self.state.nonfinite_streak} steps in a row gave a non-finite loss or gradients (last: {what}). "
                "Lower the learning rate, enable clip_grad_norm, use amp: bf16 instead of fp16, or check the data "
                "for NaN/Inf values. Checkpoints written so far hold only finite weights."
            )

    # ---------------------------------------------------------------- logging
    def _after_optimizer_step(self) -> None:
        step = self.state.global_step
        if self._shares:
            self.logger.log("diagnostics", step, self._shares)
            self._warn(self.diagnosis.train_record(self._shares))
            self._shares = {}
        if step % self.cfg.log.every_steps == 0 or self.state.step_in_epoch == self.steps_per_epoch:
            self._log_train()
        every_steps = self.train_cfg.checkpoint.every_steps
        if every_steps and step % every_steps == 0:
            self.save(self.train_cfg.checkpoint.step_name.format(step=step))
            self._prune(self.train_cfg.checkpoint.step_name, "step")
            self.save("last.pt")

    def _log_train(self) -> None:
        means = self._across_processes(self.meter.means())
        weights = self._weights()
        values: dict[str, Any] = {
            "epoch": self.state.epoch + self.state.step_in_epoch / self.steps_per_epoch,
            **means,
            **{
                f"wloss/{k[5:]}": v * weights[k[5:]]
                for k, v in means.items()
                if k[5:] in weights and k.startswith("loss/")
            },
            "lr": self.optimizer.param_groups[0]["lr"],
            "nonfinite_total": self.state.nonfinite_total,
            **self.timer.step_ms(),
        }
        self.logger.log("train", self.state.global_step, values)
        self.logger.set_info(progress_info(values))
        self._warn(self.diagnosis.train_record(values))
        self.meter.reset()

    def _across_processes(self, means: dict[str, float]) -> dict[str, float]:
        """Under torchrun: losses averaged and throughput summed over the processes (one collective per log)."""
        if not self.world.distributed:
            return means
        keys = sorted(means)
        totals = sum_across(torch.tensor([means[k] for k in keys], dtype=torch.float64, device=self.device))
        summed = dict(zip(keys, totals.tolist(), strict=True))
        return {k: v if k == "samples_per_s" else v / self.world.size for k, v in summed.items()}

    # ---------------------------------------------------------------- epoch end
    def eval_model(self) -> nn.Module:
        """What is evaluated and exported: the EMA student when EMA is on, else the student."""
        if self.ema is None:
            return self.distiller.student
        return TappedModel(self.ema.module, {}, self.task.to_outputs, self.distiller.student.adapter)

    def evaluate(self) -> dict[str, float]:
        """The task's metrics of `eval_model` on the validation loader."""
        return evaluate(
            self.eval_model(), self.val_loader, self.task, self.device, self.amp, self.train_cfg.channels_last
        )

    def _end_epoch(self) -> None:
        state, cfg = self.state, self.train_cfg
        state.epoch += 1
        state.step_in_epoch = 0
        for module in (self.student_net, *([self.ema.module] if self.ema else [])):
            average_buffers(module)  # each process's BN statistics saw only its share of the data
        if state.epoch % cfg.eval_every_epochs == 0 or state.epoch == cfg.epochs:
            self._evaluate_and_track()
        if cfg.checkpoint.every_epochs and state.epoch % cfg.checkpoint.every_epochs == 0:
            self.save(cfg.checkpoint.epoch_name.format(epoch=state.epoch))
            self._prune(cfg.checkpoint.epoch_name, "epoch")
        self.save("last.pt")

    def _evaluate_and_track(self) -> None:
        state, ck = self.state, self.train_cfg.checkpoint
        self.last_metrics = metrics = self.evaluate()
        self.logger.log("val", state.global_step, {"epoch": state.epoch, **metrics})
        self.logger.message(
            f"epoch {state.epoch}/{self.train_cfg.epochs}: " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        )
        if track_best(state, metrics, ck):
            self.save(ck.best_name)
        stop = track_early_stopping(state, metrics, self.train_cfg.early_stopping)
        if stop:
            self.logger.message(stop)
        self._diagnose_val(metrics)

    def _diagnose_val(self, metrics: dict[str, float]) -> None:
        """How closely the student follows the (live, first) teacher on the val set; stall warnings."""
        teacher, keys = self.distiller.teacher, self.task.logit_keys
        if self.cfg.log.teacher_agreement and teacher is not None and keys:
            name = self.distiller.teacher_names[0]
            stack = nn.Sequential(self.distiller.teacher_inputs[name], teacher)
            values = teacher_agreement(
                self.eval_model(),
                stack,
                self.val_loader,
                self.device,
                self.amp,
                keys[0],
                self.train_cfg.channels_last,
                self.cfg.data.ignore_index,
            )
            self.logger.log("diagnostics", self.state.global_step, {"epoch": self.state.epoch, **values})
        self._warn(self.diagnosis.val_record(metrics))

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_state(self) -> dict[str, Any]:
        """Everything resume needs, as state dicts and plain data (loadable with ``weights_only=True``)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "student": self.student_net.state_dict(),
            "terms": self.distiller.terms.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "state": asdict(self.state),
            "metrics": dict(self.last_metrics),
            "classes": list(self.task.class_names),
            "config": self.cfg.to_dict(),
        }

    def save(self, name: str) -> Path | None:
        """Write ``checkpoints/<name>`` atomically (nothing without a run directory)."""
        if self.run_dir is None:
            return None
        path = self.run_dir / "checkpoints" / name
        atomic_save(self.checkpoint_state(), path)
        return path

    def _prune(self, pattern: str, field: str) -> None:
        if self.run_dir is not None:
            prune_numbered(self.run_dir / "checkpoints", pattern, field, self.train_cfg.checkpoint.keep_last)

    def resume(self, path: str | Path) -> None:
        """Restore everything a checkpoint holds, so training continues exactly where it stopped."""
        ckpt = load_checkpoint(path)
        try:
            self.student_net.load_state_dict(ckpt["student"])
            self.distiller.terms.load_state_dict(ckpt["terms"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError) as exc:
            raise CheckpointError(
                f"cannot resume from {str(path)!r}: it was written for other models or settings ({exc}). "
                "Resume with the run's own config (its config.yaml)."
            ) from exc
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            if ckpt["ema"] is not None:
                self.ema.load_state_dict(ckpt["ema"])
            else:  # EMA switched on at resume: start it from the resumed weights, not the initial ones
                self.ema = self._new_ema()
        self.state = TrainState(**ckpt["state"])
        self.last_metrics = dict(ckpt.get("metrics") or {})
        set_rng_state(ckpt["rng"])  # rank 0's: other processes draw their own again
        if self.world.rank:
            seed_everything(self.cfg.seed + 1_000_003 * self.world.rank + self.state.global_step)
        self.logger.message(
            f"resumed from {path}: epoch {self.state.epoch}, step {self.state.global_step}"
            + (f" ({self.state.step_in_epoch} batches into the epoch)" if self.state.step_in_epoch else "")
        )
