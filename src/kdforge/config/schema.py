"""The run config schema: one pydantic model per section, defaults that make plain Hinton KD a config of a
few lines, and validators that name what is wrong."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kdforge.config.detection import DetectConfig, check_detection_run
from kdforge.config.messages import describe_error
from kdforge.errors import ConfigError, RegistryError, did_you_mean

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class InputSpec(_Strict):
    """What a model expects as input, when it differs from the data pipeline (e.g. a teacher at 224)."""

    size: int | tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


class ModelSpec(_Strict):
    """How to build one model: ``source`` is ``timm``, ``torchvision``, ``smp`` (segmentation-models-pytorch) or
    ``import`` (``pkg.mod:factory``)."""

    source: str = "timm"
    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    num_classes: int | None = None
    checkpoint: str | None = None
    checkpoint_key: str | None = None
    trust_checkpoint: bool = False
    input: InputSpec | None = None
    taps: dict[str, str] = Field(default_factory=dict)  # {tap_name: module.path}, merged with distill.taps
    forward: str | None = None  # "pkg.mod:fn" called as fn(model, inputs); default: a dict input by keyword


class AugmentConfig(_Strict):
    """timm-style training augmentation for image folders."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = Field(0.5, ge=0.0, le=1.0)
    color_jitter: float | None = Field(0.4, ge=0.0)
    auto_augment: str | None = None
    interpolation: Literal["bilinear", "bicubic", "nearest", "random"] = "bilinear"
    crop_pct: float = Field(0.875, gt=0.0, le=1.0)

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        return _check_scale(value, "scale")

    @field_validator("ratio")
    @classmethod
    def _ratio_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < value[0] <= value[1]:
            raise ValueError("ratio must be (min, max) aspect ratios with 0 < min <= max")
        return value


def _check_scale(value: tuple[float, float], name: str) -> tuple[float, float]:
    if not 0.0 < value[0] <= value[1] <= 1.0:
        raise ValueError(f"{name} must be (min, max) with 0 < min <= max <= 1")
    return value


class MultiCropConfig(_Strict):
    """DINO-style multi-crop for feature distillation: ``global_crops`` large crops (the teacher sees these) and
    ``local_crops`` small ones (the student only), each a random resized crop of the image at its own scale.
    ``simple`` keeps crop and flip only (fast); otherwise colour jitter, grayscale, blur and solarize as DINO."""

    global_crops: int = Field(2, ge=1)
    global_size: int | None = Field(None, gt=0)  # None: data.image_size
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_crops: int = Field(6, ge=0)
    local_size: int | None = Field(None, gt=0)  # None: 3/7 of the global size (96 at 224)
    local_scale: tuple[float, float] = (0.05, 0.32)
    use_local_crops: bool = True
    simple: bool = False

    @field_validator("global_scale", "local_scale")
    @classmethod
    def _scale_range(cls, value: tuple[float, float], info: Any) -> tuple[float, float]:
        return _check_scale(value, info.field_name)

    @property
    def locals(self) -> int:
        """How many local crops each sample gets (0 with ``use_local_crops: false``)."""
        return self.local_crops if self.use_local_crops else 0


class DataConfig(_Strict):
    """Where the data comes from and how it is batched."""

    dataset: str = "imagefolder"
    root: str | None = None
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    num_classes: int | None = None
    class_names: list[str] | None = None  # segmentation: the classes' names, index = the mask value
    ignore_index: int = 255  # segmentation: mask value of pixels without a label
    image_size: int = Field(224, gt=0)
    in_chans: int = Field(3, gt=0)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    multicrop: MultiCropConfig | None = None  # training views as several crops (task: features)
    batch_size: int = Field(64, gt=0)
    val_batch_size: int | None = Field(None, gt=0)
    num_workers: int = Field(2, ge=0)
    pin_memory: bool = True
    persistent_workers: bool = True  # keep workers alive between epochs (with num_workers > 0)
    prefetch_factor: int | None = Field(None, ge=1)  # batches each worker loads ahead (torch default: 2)
    labelled_fraction: float = Field(1.0, gt=0.0, le=1.0)
    labelled_per_class: int | None = Field(None, gt=0)
    split_seed: int = 0

    @model_validator(mode="after")
    def _normalization_fits_channels(self) -> DataConfig:
        if len(self.mean) != len(self.std) or len(self.mean) not in (1, self.in_chans):
            raise ValueError(
                f"mean ({len(self.mean)} values) and std ({len(self.std)} values) need one value per input "
                f"channel (in_chans={self.in_chans}) or a single value"
            )
        return self


class ScheduledValue(_Strict):
    """A value that changes over epochs: ``{start: 6.0, end: 3.0, schedule: linear}``.

    The change begins at ``start_epoch`` (1-based; e.g. the first epoch after a task-only phase) and spans
    ``epochs`` epochs (default: to the end of the run); before it the value is ``start``, after it ``end``.
    """

    start: float
    end: float
    schedule: Literal["constant", "linear", "cosine"] = "linear"
    epochs: int | None = Field(None, ge=1)
    start_epoch: int = Field(1, ge=1)


def _term_class(loss: str) -> Any:
    from kdforge.distill.losses import TERMS  # the registry imports models, which import us

    return TERMS.get(loss)


def _check_weight(value: float | ScheduledValue) -> float | ScheduledValue:
    values = (value.start, value.end) if isinstance(value, ScheduledValue) else (value,)
    if any(v < 0 for v in values):
        raise ValueError("loss weights must be >= 0")
    return value


def _is_schedule(value: Any) -> bool:
    """Any mapping given as a parameter value is meant as a schedule (so a typo in one is reported)."""
    return isinstance(value, (dict, ScheduledValue))


def _schedule_of(param: str, value: Any) -> ScheduledValue:
    try:
        return ScheduledValue.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(describe_error(err, value, ScheduledValue) for err in exc.errors())
        raise ConfigError(
            f"{param}: {problems} A schedule looks like {{start: 6.0, end: 3.0, schedule: linear}} "
            "(schedule: constant, linear or cosine; optional epochs, start_epoch)."
        ) from None


class TermConfig(BaseModel):
    """One distillation term: ``{loss: kd, weight: 0.7, temperature: 4}``.

    Keys other than ``loss``, ``weight`` and ``name`` go to the term's constructor, which checks them.
    The weight and any numeric parameter may be scheduled: ``temperature: {start: 6, end: 3}``.
    ``name`` is what the term is logged as and what phases refer to (default: the loss name, made unique).
    """

    model_config = ConfigDict(extra="allow")

    loss: str
    weight: float | ScheduledValue = 1.0
    name: str | None = None
    teachers: list[str] | None = None  # which teachers it reads (several: their ensemble); default: the first

    @field_validator("teachers", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("weight")
    @classmethod
    def _non_negative(cls, value: float | ScheduledValue) -> float | ScheduledValue:
        return _check_weight(value)

    def params(self) -> dict[str, Any]:
        """Constructor parameters; a scheduled parameter is given its start value."""
        return {k: (self.scheduled_params()[k].start if _is_schedule(v) else v) for k, v in self.extra().items()}

    def scheduled_params(self) -> dict[str, ScheduledValue]:
        return {k: _schedule_of(k, v) for k, v in self.extra().items() if _is_schedule(v)}

    def extra(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _known_loss_and_params(self) -> TermConfig:
        from kdforge.distill.losses import build_term  # the registry imports models, which import us

        try:
            build_term(self.loss, self.params())
            ends = {k: v.end for k, v in self.scheduled_params().items()}
            if ends:
                term = build_term(self.loss, {**self.params(), **ends})
                fixed = sorted(set(ends) - set(term.schedulable))
                if fixed:
                    raise ConfigError(
                        f"distillation loss {self.loss!r} cannot schedule {', '.join(fixed)} (fixed when it is "
                        f"built); schedulable: {', '.join(term.schedulable) or 'none'} (and its weight)."
                    )
        except ConfigError:
            raise
        except RegistryError as exc:
            raise ConfigError(str(exc)) from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"distillation loss {self.loss!r}: {exc}") from None
        return self


class TapsConfig(_Strict):
    """Named forward hooks: ``{feature_name: module.path}`` for each model."""

    teacher: dict[str, str] = Field(default_factory=dict)
    student: dict[str, str] = Field(default_factory=dict)


class PhaseConfig(_Strict):
    """Settings for the epochs before ``until_epoch`` (1-based: ``until_epoch: 5`` covers epochs 1-5).

    ``task_weight`` replaces the task weight; ``scale_terms`` multiplies every term weight (0 = task
    only); ``weights`` sets single terms by name. After the last phase the base settings apply.
    """

    until_epoch: int = Field(ge=1)
    task_weight: float | None = Field(None, ge=0.0)
    scale_terms: float | None = Field(None, ge=0.0)
    weights: dict[str, float] = Field(default_factory=dict)

    @field_validator("weights")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for weight in value.values():
            _check_weight(weight)
        return value


class DistillConfig(_Strict):
    task_weight: float | ScheduledValue = Field(1.0, union_mode="left_to_right")
    terms: list[TermConfig] = Field(default_factory=list)
    taps: TapsConfig = Field(default_factory=TapsConfig)
    phases: list[PhaseConfig] = Field(default_factory=list)

    @field_validator("task_weight")
    @classmethod
    def _non_negative(cls, value: float | ScheduledValue) -> float | ScheduledValue:
        return _check_weight(value)

    def term_names(self) -> list[str]:
        """Each term's log name: its ``name``, else its loss made unique (``fitnet``, ``fitnet_1``)."""
        seen: dict[str, int] = {}
        names = []
        for term in self.terms:
            count = seen.get(term.loss, 0)
            seen[term.loss] = count + 1
            names.append(term.name or (term.loss if count == 0 else f"{term.loss}_{count}"))
        return names

    @model_validator(mode="after")
    def _phases_fit_terms(self) -> DistillConfig:
        names = self.term_names()
        if len(set(names)) != len(names):
            raise ConfigError(f"distillation terms need distinct names, got {names}; set name: on the duplicates.")
        ends = [phase.until_epoch for phase in self.phases]
        if ends != sorted(set(ends)):
            raise ConfigError(f"phases must have increasing until_epoch values, got {ends}.")
        for phase in self.phases:
            for name in phase.weights:
                if name not in names:
                    raise ConfigError(
                        f"phase weight for unknown term {name!r}.{did_you_mean(name, names)} Terms: {names}."
                    )
        return self


class OptimizerConfig(_Strict):
    name: str = "adamw"  # a name in kdforge.engine.optim.OPTIMIZERS
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.999)

    @field_validator("name")
    @classmethod
    def _registered(cls, value: str) -> str:
        from kdforge.engine.optim import OPTIMIZERS  # the engine imports this module

        if value not in OPTIMIZERS:
            raise ConfigError(
                f"unknown optimizer {value!r}.{did_you_mean(value, OPTIMIZERS)} Available: "
                f"{', '.join(OPTIMIZERS.names())}."
            )
        return value

    @field_validator("betas")
    @classmethod
    def _betas_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError("betas must both lie in [0, 1)")
        return value


class ScheduleConfig(_Strict):
    """Learning-rate schedule, stepped once per optimizer step."""

    name: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0.0)
    warmup_lr_ratio: float = Field(0.01, ge=0.0, le=1.0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)


class EMAConfig(_Strict):
    decay: float = Field(0.9998, gt=0.0, lt=1.0)
    warmup: bool = True


class EarlyStoppingConfig(_Strict):
    metric: str = "fitness"
    mode: Literal["max", "min"] = "max"
    patience: int = Field(10, ge=1)
    min_delta: float = Field(0.0, ge=0.0)


class CheckpointConfig(_Strict):
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
        if any("/" in name or name in ("", "last.pt") for name in names):
            raise ValueError(f"checkpoint names must be plain file names other than last.pt, got {names}")
        return self


class TrainConfig(_Strict):
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

    @field_validator("amp", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML 1.1 reads a bare `off` as false


class TeacherRuntimeConfig(_Strict):
    """How the frozen teachers run: their own device (e.g. ``cpu`` while the student trains on ``cuda``),
    weight precision, ``torch.compile`` for inference, channels-last memory format."""

    device: str | None = None  # None: the run's device
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: fp32 weights (autocast still applies)
    compile: bool = False
    channels_last: bool = False


class CacheConfig(_Strict):
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


class FeaturesConfig(_Strict):
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


class OutputConfig(_Strict):
    dir: str = "runs"
    name: str | None = None
    exist_ok: bool = False


class LogConfig(_Strict):
    tensorboard: bool = True
    every_steps: int = Field(20, ge=1)
    progress: bool = True
    verbose: bool = True  # one line per evaluation and the final table
    diagnostics_every_steps: int = Field(100, ge=0)  # each loss part's gradient share (one extra backward); 0: off
    teacher_agreement: bool = True  # teacher-student top-1 agreement and KL at every evaluation (live teacher)
    report: bool = True  # report.html at the end (with the models' size, MACs and CPU latency)


class RunConfig(_Strict):
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
    def _features_task_is_label_free(self) -> RunConfig:
        """The features task has no labelled loss: its task weight is 0 unless set (and then it must be 0)."""
        if self.data.multicrop is not None and self.task != "features":
            raise ConfigError(
                f"data.multicrop is for task: features (the student's crops are matched with the teacher's "
                f"embeddings); task {self.task!r} trains on one view per sample: remove data.multicrop."
            )
        if self.task != "features":
            return self
        explicit = [self.distill.task_weight] if "task_weight" in self.distill.model_fields_set else []
        if any(w not in (0, None) for w in [*explicit, *(p.task_weight for p in self.distill.phases)]):
            raise ConfigError(
                "task: features has no labelled loss, so distill.task_weight (and phase task weights) must be 0; "
                "remove them (labels are only read by the k-NN evaluation)."
            )
        self.distill.task_weight = 0.0
        if not self.distill.terms:
            raise ConfigError(
                "task: features learns from the teacher only: add distill.terms (e.g. cosine on embedding)."
            )
        for role, spec in {"student": self.student, **self.teacher_specs()}.items():
            classes = spec.num_classes if spec.num_classes is not None else spec.kwargs.get("num_classes")
            if classes not in (None, 0):
                raise ConfigError(
                    f"task: features distils embeddings, but {role} sets num_classes={classes} (a classifier "
                    "head): remove it, so the model is built as a backbone returning its pooled embedding."
                )
        per_sample = [t.loss for t in self.distill.terms if _term_class(t.loss).needs_dataset]
        if self.data.multicrop is not None and per_sample:
            raise ConfigError(
                f"{', '.join(per_sample)} keeps one memory row per sample, but data.multicrop gives several crops per "
                "sample; use cosine / smooth_l1 with multi-crop, or drop data.multicrop for CRD."
            )
        return self

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
            if len(term.teachers or []) > 1 and not _term_class(term.loss).ensemble:
                raise ConfigError(
                    f"distillation loss {term.loss!r} cannot read an ensemble of teachers {term.teachers}: only logit "
                    "terms (kd, dkd, dist, pixel_kl) can. Give it one teacher, or one term per teacher."
                )
            for name in term.teachers or []:
                if name not in names:
                    raise ConfigError(
                        f"distillation loss {term.loss!r} reads teacher {name!r}, which does not exist."
                        f"{did_you_mean(name, names)} Teachers: {', '.join(names) or 'none'}."
                    )
        return self
