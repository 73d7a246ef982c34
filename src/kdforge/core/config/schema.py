"""The run config schema: one pydantic model per section, defaults that make plain Hinton KD a config of a
few lines, and validators that name what is wrong."""

from __future__ import annotations

import warnings
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from kdforge.core import runfiles
from kdforge.core.config.base import Strict
from kdforge.core.config.data import DataConfig, ModelSpec
from kdforge.core.config.detection import DetectConfig, check_detection_run
from kdforge.core.config.distill import DistillConfig
from kdforge.core.errors import ConfigError, did_you_mean


class PluginSpec(Strict):
    """A plug-in (a logger backend, a callback): a registered name or an import path ``package.module:Name``,
    and the keyword arguments it is built with. A bare string is the name alone: ``loggers: [tensorboard]``."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class OptimizerConfig(Strict):
    name: str = "adamw"  # a name in kdforge.engine.optim.OPTIMIZERS (checked when the run is resolved)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.999)

    @field_validator("betas")
    @classmethod
    def _betas_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError("betas must both lie in [0, 1)")
        return value


class ScheduleConfig(Strict):
    """Learning-rate schedule, stepped once per optimizer step."""

    name: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0.0)
    warmup_lr_ratio: float = Field(0.01, ge=0.0, le=1.0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)


class EMAConfig(Strict):
    decay: float = Field(0.9998, gt=0.0, lt=1.0)
    warmup: bool = True


class EarlyStoppingConfig(Strict):
    metric: str = "fitness"
    mode: Literal["max", "min"] = "max"
    patience: int = Field(10, ge=1)
    min_delta: float = Field(0.0, ge=0.0)


class CheckpointConfig(Strict):
    """Which checkpoints are kept and their file names in ``checkpoints/`` (``last.pt`` is always written: resume
    reads it). Names may follow another project's layout: ``best_name: best_distillation_model.pth``,
    ``epoch_name: distillation_epoch_{epoch}.pth``."""

    every_epochs: int = Field(0, ge=0)
    every_steps: int = Field(0, ge=0)
    keep_last: int = Field(3, ge=1)
    best_metric: str = "fitness"
    best_mode: Literal["max", "min"] = "max"
    best_name: str = "best.pt"
    epoch_name: str = "epoch_{epoch}.pt"
    step_name: str = "step_{step}.pt"

    @model_validator(mode="after")
    def _names_fit(self) -> CheckpointConfig:
        for field, needed in (("epoch_name", "{epoch}"), ("step_name", "{step}")):
            name = getattr(self, field)
            if name.count(needed) != 1 or name.replace(needed, "").count("{"):
                raise ValueError(f"{field} must hold {needed} once (and no other braces), got {name!r}")
        names = [self.best_name, self.epoch_name, self.step_name]
        if any("/" in name or name in ("", runfiles.LAST) for name in names):
            raise ValueError(f"checkpoint names must be plain file names other than {runfiles.LAST}, got {names}")
        return self


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1)
    max_steps_per_epoch: int | None = Field(None, gt=0)
    grad_accum: int = Field(1, ge=1)
    clip_grad_norm: float | None = Field(None, gt=0.0)
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    ema: EMAConfig | None = None
    early_stopping: EarlyStoppingConfig | None = None
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    max_nonfinite_steps: int = Field(5, ge=1)
    compile_student: bool = False
    channels_last: bool = False  # student weights and 4-D inputs in channels-last memory format (faster convs on GPU)
    eval_every_epochs: int = Field(1, ge=1)
    # Hooks into the loop (kdforge.engine.callbacks.Callback subclasses by import path), after the built-in ones.
    callbacks: list[PluginSpec] = Field(default_factory=list)

    @field_validator("amp", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML 1.1 reads a bare `off` as false


class TeacherRuntimeConfig(Strict):
    """How the frozen teachers run: their own device (e.g. ``cpu`` while the student trains on ``cuda``),
    weight precision, ``torch.compile`` for inference, channels-last memory format."""

    device: str | None = None  # None: the run's device
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: fp32 weights (autocast still applies)
    compile: bool = False
    channels_last: bool = False


class CacheConfig(Strict):
    """Teacher-output cache: the teacher runs once over the training set, training reads its outputs.

    Stores fp16 (or fp32) features at the teacher's taps and the top-``logits_topk`` logits (all of them
    with ``full_logits``). A random augmentation pipeline needs ``views``: that many augmented views per
    sample are cached with their augmentation parameters, and each epoch replays one of them per sample.
    """

    enabled: bool = False
    dir: str = "cache"
    logits_topk: int = Field(32, ge=1)
    full_logits: bool = False
    dtype: Literal["fp16", "fp32"] = "fp16"
    views: int | None = Field(None, ge=1)  # None: 1 view for a deterministic pipeline, refused for a random one
    batch_size: int | None = Field(None, gt=0)  # for building; default data.batch_size
    seed: int = 0  # seeds the cached views' augmentation parameters


class FeaturesConfig(Strict):
    """``task: features``: how the student's embedding is judged without a labelled loss. k-NN (DINO's weighted
    vote over cosine similarities) classifies each val sample from the labelled ``knn_memory`` split: ``train``
    read with the evaluation transform, or ``val`` itself leaving each sample out. ``linear_probe`` also fits a
    logistic regression on the memory's embeddings. ``fitness`` picks which accuracy early stopping and the best
    checkpoint follow."""

    knn_k: int = Field(20, ge=1)
    knn_temperature: float = Field(0.07, gt=0.0)
    knn_memory: Literal["train", "val"] = "train"
    knn_memory_limit: int | None = Field(None, ge=1)  # embed at most this many memory samples (seeded choice)
    linear_probe: bool = False
    fitness: Literal["knn", "linear"] = "knn"

    @model_validator(mode="after")
    def _probe_for_fitness(self) -> FeaturesConfig:
        if self.fitness == "linear" and not self.linear_probe:
            raise ValueError("fitness 'linear' needs linear_probe: true")
        return self


class OutputConfig(Strict):
    dir: str = "runs"
    name: str | None = None
    exist_ok: bool = False


class LogConfig(Strict):
    """Where records go: ``metrics.jsonl`` always (the report reads it), and each of ``loggers`` (tensorboard,
    csv, wandb, mlflow, or an import path), only from the main process. ``log_checkpoint`` also sends the best
    checkpoint to the loggers that keep files (wandb, mlflow)."""

    loggers: list[PluginSpec] = Field(default_factory=lambda: [PluginSpec(name="tensorboard")])
    log_checkpoint: bool = False
    every_steps: int = Field(20, ge=1)
    progress: bool = True
    verbose: bool = True  # one line per evaluation and the final table
    diagnostics_every_steps: int = Field(100, ge=0)  # each loss part's gradient share (one extra backward); 0: off
    teacher_agreement: bool = True  # teacher-student top-1 agreement and KL at every evaluation (live teacher)
    report: bool = True  # report.html at the end (with the models' size, MACs and CPU latency)

    @model_validator(mode="before")
    @classmethod
    def _tensorboard_moved(cls, value: Any) -> Any:
        """Runs written before loggers were plug-ins say ``tensorboard: true/false``: read as the loggers list, so
        they still resume, evaluate and export."""
        if not (isinstance(value, dict) and "tensorboard" in value):
            return value
        value = dict(value)
        on = value.pop("tensorboard")
        if "loggers" in value:
            raise ConfigError("log.tensorboard and log.loggers are both set; keep log.loggers ([tensorboard] or []).")
        warnings.warn(
            f"log.tensorboard: {on} is read as log.loggers: {'[tensorboard]' if on else '[]'}; write that instead.",
            FutureWarning,
            stacklevel=2,
        )
        return {**value, "loggers": ["tensorboard"] if on else []}


class RunConfig(Strict):
    """Everything one run needs. Defaults make plain Hinton KD a config of a few lines."""

    task: str = "classification"
    seed: int = 0
    device: str = "auto"
    threads: int | None = Field(None, ge=1)
    teacher: ModelSpec | None = None
    teachers: dict[str, ModelSpec] = Field(default_factory=dict)
    student: ModelSpec
    data: DataConfig = Field(default_factory=DataConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    teacher_runtime: TeacherRuntimeConfig = Field(default_factory=TeacherRuntimeConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    detect: DetectConfig | None = None  # task: detection (YOLO through Ultralytics)

    @field_validator("teacher", mode="before")
    @classmethod
    def _teacher_none(cls, value: Any) -> Any:
        return None if value in ("null", "none", "None", "") else value

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def teacher_specs(self) -> dict[str, ModelSpec]:
        """Every teacher by name: ``teacher`` is the one called "teacher"; ``teachers`` names several."""
        return {"teacher": self.teacher} if self.teacher is not None else dict(self.teachers)

    @model_validator(mode="after")
    def _teachers_fit_terms(self) -> RunConfig:
        if self.teacher is not None and self.teachers:
            raise ConfigError("set either teacher (one) or teachers (several, by name), not both.")
        check_detection_run(self)
        names = list(self.teacher_specs())
        if self.distill.terms and not names:
            raise ConfigError("distill.terms are set but there is no teacher; set teacher or remove the terms.")
        if self.cache.enabled and not names:
            raise ConfigError(
                "cache.enabled stores a teacher's outputs, but there is no teacher: set one or disable it."
            )
        if self.teachers and self.distill.taps.teacher:
            raise ConfigError(
                "distill.taps.teacher applies to a single `teacher`; with `teachers`, put each one's taps on its "
                "spec: teachers: {name: {..., taps: {tap_name: module.path}}}."
            )
        for term in self.distill.terms:
            for name in term.teachers or []:
                if name not in names:
                    raise ConfigError(
                        f"distillation loss {term.loss!r} reads teacher {name!r}, which does not exist."
                        f"{did_you_mean(name, names)} Teachers: {', '.join(names) or 'none'}."
                    )
        return self
