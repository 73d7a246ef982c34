"""The task-agnostic training loop.

Epochs capped by ``max_steps_per_epoch``, gradient accumulation, AMP, clipping, a NaN/Inf guard, a
per-iteration schedule, exact resume (also from inside an epoch), several processes under torchrun and a clean
stop on a signal. Everything else (checkpoints, early stopping, EMA, diagnostics, records and progress, the user's
own) hangs on the hooks of `kdforge.engine.callbacks.Callback`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from kdforge.core import runfiles
from kdforge.core.config import RunConfig
from kdforge.core.context import Context, seed_everything
from kdforge.core.errors import CheckpointError
from kdforge.data.inputs import batch_size
from kdforge.distill.distiller import Distiller
from kdforge.engine.buffers import BufferSnapshot
from kdforge.engine.callbacks import Callback, CallbackList, standard_callbacks
from kdforge.engine.checkpoint import FORMAT, VERSION, atomic_save, load_checkpoint, rng_state, set_rng_state
from kdforge.engine.evaluate import autocast_context, evaluate, resolve_amp, to_device
from kdforge.engine.loggers import RunLog
from kdforge.engine.meter import StepMeter
from kdforge.engine.optim import build_optimizer, build_scheduler
from kdforge.engine.parallel import distribute
from kdforge.engine.preemption import StopSignals, preempted
from kdforge.engine.progress import TrainState
from kdforge.engine.timing import StepTimer
from kdforge.engine.update import GuardedUpdate
from kdforge.models.taps import TappedModel
from kdforge.tasks.base import Task


class Trainer:
    """Trains the distiller's student (and adapters); the teacher is never touched.

    Args:
        config: the resolved run config (``train``, ``log``, ``data`` and ``seed`` are read).
        distiller: student + frozen teacher + terms, already on the context's device and set up.
        task: the task (metrics, outputs).
        train_loader: its sampler must have ``set_epoch(epoch, start)`` (`ResumableSampler`).
        val_loader: evaluated after every ``eval_every_epochs`` epochs.
        context: the device and the torchrun world (one CPU process by default).
        run_dir: checkpoints go here; None writes nothing.
        log: where records and messages go (a silent `RunLog` when None).
        callbacks: the user's callbacks, run after the built-in ones the config switches on.
    """

    def __init__(
        self,
        config: RunConfig,
        distiller: Distiller,
        task: Task,
        train_loader: DataLoader,
        val_loader: DataLoader,
        context: Context | None = None,
        run_dir: Path | None = None,
        log: RunLog | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.config, cfg = config, config.train
        self.distiller, self.task = distiller, task
        context = context or Context()
        self.device, self.world = context.device, context.world
        self.train_loader, self.val_loader, self.run_dir = train_loader, val_loader, run_dir
        self.log = log or RunLog()
        self.student: nn.Module = distiller.student.model  # the bare network: checkpoints, EMA, export
        if cfg.channels_last:  # before the optimizer and the EMA copy, which keep the format
            distiller.student.to(memory_format=torch.channels_last)  # 4-D weights only
        self.amp = resolve_amp(cfg.amp, self.device)
        self.autocast = autocast_context(self.device, self.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.steps_per_epoch = min(len(train_loader), cfg.max_steps_per_epoch or len(train_loader))
        optimizer_steps = math.ceil(self.steps_per_epoch / cfg.grad_accum)
        self.params = list(distiller.trainable_parameters())
        self.optimizer = build_optimizer(distiller.trainable_modules().values(), cfg.optimizer)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, cfg.epochs * optimizer_steps, optimizer_steps)
        self.buffers = BufferSnapshot([distiller.student])  # BN statistics; term state guards itself
        self.meter, self.timer, self.state = StepMeter(), StepTimer(self.device), TrainState()
        self.last_metrics: dict[str, float] = {}
        self.epoch_settings = None  # the schedule's settings for the current epoch
        if cfg.compile_student:
            distiller.student = torch.compile(distiller.student)
        self.objective = distribute(distiller.objective, self.device, self.world)  # DDP: student and adapters only
        self.eval_network: nn.Module = self.student  # what is evaluated and exported (EMA replaces it)
        self.stop = StopSignals()
        self.update = GuardedUpdate(
            self.optimizer,
            self.scheduler,
            self.scaler,
            self.params,
            self.buffers,
            self.meter,
            cfg,
            self.world,
            self.log.warning,
        )
        show = config.log.progress and self.world.is_main
        reported = task.metrics().compute()
        self.callbacks = CallbackList([*standard_callbacks(config, show, reported), *callbacks])

    # ---------------------------------------------------------------- loop
    def fit(self) -> dict[str, float]:
        """Train until ``epochs`` or a stop request (early stopping); returns the last evaluation's metrics.

        Raises:
            Preempted: a stop signal arrived; ``last.pt`` holds the finished steps.
        """
        try:
            with self.stop:
                self.callbacks.on_fit_start(self)
                if self._signalled():  # the signal came before the first step (e.g. in the teacher's evaluation)
                    self._preempted()
                while self.state.epoch < self.config.train.epochs and not self.state.stopped_early:
                    self._train_epoch()
                    self._end_epoch()
                    if self._signalled():
                        self._preempted(saved=True)  # the epoch's end has just written last.pt
        finally:
            self.callbacks.on_fit_end(self)
        if self.run_dir is not None:
            (self.run_dir / runfiles.PREEMPTED).unlink(missing_ok=True)
        return self.last_metrics

    def _train_epoch(self) -> None:
        state, accum = self.state, self.config.train.grad_accum
        self.train_loader.sampler.set_epoch(state.epoch, start=state.step_in_epoch * self.train_loader.batch_size)
        if self.train_loader.generator is not None:  # workers' seeds come from here, not the global RNG
            seed = self.config.seed * 1_000_003 + state.epoch * 7919 + self.world.rank
            self.train_loader.generator.manual_seed(seed)
        self.distiller.train()
        self.epoch_settings = self.distiller.set_epoch(state.epoch)
        self.callbacks.on_epoch_start(self)
        self.meter.reset()  # every epoch's last step logs: these only drop setup and evaluation time from the clocks
        self.timer.reset()
        batches = itertools.islice(self.train_loader, self.steps_per_epoch - state.step_in_epoch)
        while state.step_in_epoch < self.steps_per_epoch and not state.stopped_early:
            self.train_step(batches, min(accum, self.steps_per_epoch - state.step_in_epoch))  # the last may be shorter

    def train_step(self, batches: Iterator[dict[str, Any]], micro_batches: int) -> None:
        """One optimizer step: each micro-batch's forward (teachers, then the student and the loss) and backward,
        then the update, or a skip when the loss or the gradients are not finite."""
        self.buffers.snapshot()
        for index in range(micro_batches):
            with self.timer.section("data"):
                batch = to_device(next(batches), self.device, self.config.train.channels_last)
            last = index == micro_batches - 1
            # Under DDP, gradients are averaged across processes once per step: on its last micro-batch.
            with self.timer.section("micro_step"), self._gradient_sync(last):
                with self.autocast():
                    with self.timer.section("teacher"):
                        teachers = self.distiller.teacher_outputs(batch, self.distiller.step_teachers())
                    out = self.objective(batch, teachers)
                if index == 0:
                    self.callbacks.on_before_backward(self, out)
                self.scaler.scale(out["loss"] / micro_batches).backward()
            self.meter.add(out["loss"], out["parts"], batch_size(batch["input"]))
            self.state.step_in_epoch += 1
        with self.timer.section("optimizer"):
            applied, keep_going = self.update(self.state, self.stop.requested, self.device)
        self.state.global_step += 1
        self.callbacks.on_step_end(self, applied, self._train_record() if self._log_due() else None)
        if not keep_going:
            self._preempted()

    def _gradient_sync(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if last or not self.world.distributed else self.objective.no_sync()

    def _log_due(self) -> bool:
        return self.state.global_step % self.config.log.every_steps == 0 or (
            self.state.step_in_epoch == self.steps_per_epoch
        )

    def _train_record(self) -> dict[str, float]:
        """The ``train`` record since the last one: mean loss parts (raw and weighted; under torchrun averaged
        over the processes, throughput summed), lr, skipped steps, and where a step's time goes."""
        means = self.meter.means(self.world, self.device)
        weights = self.distiller.loss_weights()
        weighted = {f"wloss/{k[5:]}": v * weights[k[5:]] for k, v in means.items() if k[5:] in weights}
        self.meter.reset()
        return {
            "epoch": self.state.epoch + self.state.step_in_epoch / self.steps_per_epoch,
            **means,
            **weighted,
            "lr": self.optimizer.param_groups[0]["lr"],
            "nonfinite_total": self.state.nonfinite_total,
            **self.timer.step_ms(),
        }

    def _end_epoch(self) -> None:
        state, cfg = self.state, self.config.train
        state.epoch += 1
        state.step_in_epoch = 0
        for module in {id(m): m for m in (self.student, self.eval_network)}.values():
            self.world.average_buffers(module)  # each process's BN statistics saw only its share of the data
        if state.epoch % cfg.eval_every_epochs == 0 or state.epoch == cfg.epochs or state.stopped_early:
            self.last_metrics = self.evaluate()
            self.callbacks.on_evaluation_end(self, self.last_metrics)
        self.callbacks.on_epoch_end(self)

    # ---------------------------------------------------------------- what callbacks call
    def request_stop(self, reason: str) -> None:
        """End the run after the current step (its epoch then ends: evaluation and checkpoints as usual)."""
        self.state.stopped_early = True
        self.log.message(reason)

    def eval_model(self) -> nn.Module:
        """`eval_network` returning the task's outputs dict (the tapped student itself when no EMA replaced it)."""
        if self.eval_network is self.student:
            return self.distiller.student
        return TappedModel(self.eval_network, {}, self.task.to_outputs, self.distiller.student.adapter)

    def evaluate(self) -> dict[str, float]:
        """The task's metrics of `eval_model` on the validation loader."""
        channels_last = self.config.train.channels_last
        return evaluate(self.eval_model(), self.val_loader, self.task, self.device, self.amp, channels_last, self.world)

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything resume needs, as state dicts and plain data (loadable with ``weights_only=True``)."""
        checkpoint = {
            "format": FORMAT,
            "version": VERSION,
            "student": self.student.state_dict(),
            "terms": self.distiller.terms.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "state": asdict(self.state),
            "metrics": dict(self.last_metrics),
            "classes": list(self.task.class_names),
            "config": self.config.to_dict(),
        }
        self.callbacks.on_save_checkpoint(self, checkpoint)
        return checkpoint

    def save_checkpoint(self, name: str) -> Path | None:
        """Write ``checkpoints/<name>`` atomically (nothing without a run directory); returns its path."""
        if self.run_dir is None:
            return None
        path = runfiles.checkpoint(self.run_dir, name)
        atomic_save(self.checkpoint_state(), path)
        return path

    def resume(self, path: str | Path) -> None:
        """Restore everything a checkpoint holds, so training continues exactly where it stopped."""
        checkpoint = load_checkpoint(path)
        try:
            self.student.load_state_dict(checkpoint["student"])
            self.distiller.terms.load_state_dict(checkpoint["terms"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        except (RuntimeError, ValueError) as exc:
            raise CheckpointError(
                f"cannot resume from {str(path)!r}: it was written for other models or settings ({exc}). "
                "Resume with the run's own config (its config.yaml)."
            ) from exc
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.state = TrainState(**checkpoint["state"])
        self.last_metrics = dict(checkpoint.get("metrics") or {})
        self.callbacks.on_load_checkpoint(self, checkpoint)
        set_rng_state(checkpoint["rng"])  # rank 0's: other processes draw their own again
        if self.world.rank:
            seed_everything(self.config.seed + 1_000_003 * self.world.rank + self.state.global_step)
        where = f" ({self.state.step_in_epoch} batches into the epoch)" if self.state.step_in_epoch else ""
        self.log.message(f"resumed from {path}: epoch {self.state.epoch}, step {self.state.global_step}{where}")

    # ---------------------------------------------------------------- stop signals
    def _signalled(self) -> bool:
        """Whether any process received a stop signal (so that all stop after the same step)."""
        if not self.world.distributed:
            return self.stop.requested
        return self.world.min(self._keep_going()).item() == 0

    def _keep_going(self) -> torch.Tensor:
        return torch.tensor([0.0 if self.stop.requested else 1.0], device=self.device)

    def _preempted(self, saved: bool = False) -> None:
        """Write ``last.pt`` (unless it was just `saved`) and the marker that makes the same command resume, then
        stop with `Preempted`."""
        if not saved:
            self.save_checkpoint(runfiles.LAST)
        if self.run_dir is not None:
            (self.run_dir / runfiles.PREEMPTED).write_text(f"{self.state.global_step}\n")
        self.world.barrier()  # the launcher kills the others once one process exits: let rank 0 finish writing
        raise preempted(self.stop.received, self.state, self.run_dir)
