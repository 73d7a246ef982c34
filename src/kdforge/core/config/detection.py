"""The ``detect:`` section of a run config (``task: detection``): YOLO distillation through Ultralytics.

Detection is the one task whose loop is Ultralytics' own ``DetectionTrainer`` (see ``kdforge.app.detection``), so
this section holds what that trainer needs, with kdforge's defaults (the wildfire setup: SGD momentum 0.937,
lr0 0.01, lrf 0.01, batch 32, imgsz 640, loss = 2.0 x detection + 1.0 x (CIoU + KL) on the teacher's Top-K
anchors). Nothing here imports ultralytics: the extra is optional and a config must validate without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kdforge.core.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from kdforge.core.config.schema import RunConfig

DETECTION_TASK = "detection"
ULTRALYTICS_SOURCE = "ultralytics"
DEFAULT_REGISTRY_NAME = "distilled"
# Ultralytics arguments kdforge sets itself (`kdforge.app.detection.args`, plus the optimizer and augment sections
# added below the classes); `extra` may not override them: the run would stop being the one its config describes.
_KDFORGE_ARGS = {"model", "data", "project", "name", "exist_ok", "resume", "distill_model", "dis", "plots"}
_MAPPED_ARGS = {"task", "epochs", "batch", "imgsz", "workers", "patience", "freeze", "seed", "deterministic"}
_RUNTIME_ARGS = {"device", "amp", "cache", "optimizer", "verbose", "save_dir", "mode"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DetectDataConfig(_Strict):
    """Where the images and YOLO txt labels are: exactly one of ``root`` or ``yaml``.

    ``root`` holds ``{train,val}/{images,labels}``; kdforge writes the data yaml (absolute paths, ``nc``, ``names``)
    into the run directory. Class names come from ``names``, else ``root/classes.txt`` (one name per line).
    ``yaml`` is an existing Ultralytics data yaml (its ``names`` give the classes).
    """

    root: str | None = None
    yaml: str | None = None
    names: list[str] | None = None
    check_labels: bool = True  # read every label file first: errors name the file and line

    @model_validator(mode="after")
    def _one_source(self) -> DetectDataConfig:
        if (self.root is None) == (self.yaml is None):
            raise ConfigError(
                "detect.data needs exactly one of root (a folder with {train,val}/{images,labels}) or yaml "
                "(an Ultralytics data yaml)."
            )
        if self.names is not None and (not self.names or len(set(self.names)) != len(self.names)):
            raise ConfigError(f"detect.data.names must be distinct class names, got {self.names}.")
        return self


class DetectOptimizerConfig(_Strict):
    """Ultralytics' optimizer arguments (``lrf``: the final lr as a fraction of ``lr0``)."""

    name: Literal["SGD", "Adam", "AdamW", "NAdam", "RAdam", "RMSProp"] = "SGD"
    lr0: float = Field(0.01, gt=0.0)
    lrf: float = Field(0.01, gt=0.0, le=1.0)
    momentum: float = Field(0.937, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    warmup_epochs: float = Field(3.0, ge=0.0)
    warmup_momentum: float = Field(0.8, ge=0.0, lt=1.0)
    warmup_bias_lr: float = Field(0.1, ge=0.0)
    cos_lr: bool = False


class DetectAugmentConfig(_Strict):
    """Ultralytics' training augmentation (its defaults); ``close_mosaic``: last epochs without mosaic."""

    mosaic: float = Field(1.0, ge=0.0, le=1.0)
    close_mosaic: int = Field(10, ge=0)
    mixup: float = Field(0.0, ge=0.0, le=1.0)
    copy_paste: float = Field(0.0, ge=0.0, le=1.0)
    fliplr: float = Field(0.5, ge=0.0, le=1.0)
    flipud: float = Field(0.0, ge=0.0, le=1.0)
    hsv_h: float = Field(0.015, ge=0.0, le=1.0)
    hsv_s: float = Field(0.7, ge=0.0, le=1.0)
    hsv_v: float = Field(0.4, ge=0.0, le=1.0)
    degrees: float = Field(0.0, ge=0.0, le=180.0)
    translate: float = Field(0.1, ge=0.0, le=1.0)
    scale: float = Field(0.5, ge=0.0)
    shear: float = Field(0.0, ge=0.0)
    perspective: float = Field(0.0, ge=0.0, le=0.001)
    multi_scale: float = Field(0.0, ge=0.0, lt=1.0)


class FitnessConfig(_Strict):
    """Weights of P, R, mAP50 and mAP50-95 in the fitness that picks the best model and drives early stopping."""

    precision: float = Field(0.0, ge=0.0)
    recall: float = Field(0.0, ge=0.0)
    map50: float = Field(0.1, ge=0.0)
    map50_95: float = Field(0.9, ge=0.0)

    @model_validator(mode="after")
    def _some_weight(self) -> FitnessConfig:
        if self.precision + self.recall + self.map50 + self.map50_95 <= 0:
            raise ConfigError("detect.fitness needs at least one positive weight (precision, recall, map50, map50_95).")
        return self


class DetectDistillConfig(_Strict):
    """The loss: ``lambda_detection x ultralytics_loss + lambda_distillation x (lambda_dist_ciou x CIoU +
    lambda_dist_kl x KL)`` on the teacher's Top-K anchors, ``+ feature_weight x`` score-weighted neck imitation.

    ``topk``: an int is a count of anchors per image; a float in (0, 1] is a fraction of them (336 anchors at
    imgsz 128, 8400 at 640). ``kl``: ``softmax`` compares the class distributions softmax(logits / T);
    ``sigmoid`` compares each class's Bernoulli sigmoid(logit / T) (as the BCE head predicts; also informative
    with a single class, where the softmax distribution is constant).
    """

    lambda_detection: float = Field(2.0, ge=0.0)
    lambda_distillation: float = Field(1.0, ge=0.0)
    lambda_dist_ciou: float = Field(1.0, ge=0.0)
    lambda_dist_kl: float = Field(1.0, ge=0.0)
    temperature: float = Field(2.0, gt=0.0)
    topk: int | float = 0.0125
    kl: Literal["softmax", "sigmoid"] = "softmax"
    feature_weight: float = Field(0.0, ge=0.0)

    @field_validator("topk")
    @classmethod
    def _topk_range(cls, value: int | float) -> int | float:
        if isinstance(value, bool) or (isinstance(value, int) and value < 1):
            raise ValueError("topk must be a count >= 1 (int) or a fraction of the anchors in (0, 1] (float)")
        if isinstance(value, float) and not 0.0 < value <= 1.0:
            raise ValueError("topk as a float is a fraction of the anchors and must lie in (0, 1]; use an int count")
        return value


class RegistryConfig(_Strict):
    """Where the finished student goes: ``dir/name/vN/{model.pt,metadata.json}``, ``dir/name/latest`` -> ``vN``.

    ``enabled``: unset exports distilled runs only (a run without a teacher is not a distilled model, so it must
    not become ``distilled/latest``); ``true`` exports a teacher-less run too, under a ``name`` set explicitly;
    ``false`` never exports.
    """

    dir: str = "model_registry"
    name: str = DEFAULT_REGISTRY_NAME
    enabled: bool | None = None

    @field_validator("name")
    @classmethod
    def _plain(cls, value: str) -> str:
        if not value or "/" in value or value in (".", ".."):
            raise ValueError(f"registry name must be a plain folder name, got {value!r}")
        return value


class DetectConfig(_Strict):
    """Everything ``task: detection`` needs besides the models (``teacher``/``student`` with ``source: ultralytics``
    and ``name``: a ``.pt`` file or a model ``.yaml`` such as ``yolov8n.yaml``)."""

    data: DetectDataConfig
    epochs: int = Field(100, ge=1)
    batch: int = Field(32, ge=1)
    imgsz: int = Field(640, ge=32)
    workers: int = Field(2, ge=0)
    patience: int = Field(50, ge=1)  # epochs without a better fitness before stopping
    freeze: int | list[int] = 0  # the first N student layers (or these layer indices) stay fixed
    ema: bool = True
    amp: bool = True  # on GPU only; CPU always trains in fp32
    clip_grad_norm: float = Field(10.0, gt=0.0)
    max_nonfinite_steps: int = Field(5, ge=1)  # NaN/Inf steps in a row before the run stops
    val_teacher: bool = True  # validate the teacher once, as the reference line in the report
    allow_random_teacher: bool = False  # a teacher .yaml (random weights) distils noise: for tests only
    log_every: Literal["batch", "epoch"] = "epoch"  # batch: a train record every log.every_steps batches
    cache: Literal[False, "ram", "disk"] = False
    optimizer: DetectOptimizerConfig = Field(default_factory=DetectOptimizerConfig)
    augment: DetectAugmentConfig = Field(default_factory=DetectAugmentConfig)
    fitness: FitnessConfig = Field(default_factory=FitnessConfig)
    distill: DetectDistillConfig = Field(default_factory=DetectDistillConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    extra: dict[str, Any] = Field(default_factory=dict)  # any other Ultralytics train argument, checked by name

    @field_validator("freeze")
    @classmethod
    def _freeze_non_negative(cls, value: int | list[int]) -> int | list[int]:
        values = value if isinstance(value, list) else [value]
        if any(v < 0 for v in values):
            raise ValueError("freeze must be a layer count >= 0 or a list of layer indices >= 0")
        return value

    @field_validator("extra")
    @classmethod
    def _not_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(set(value) & RESERVED_ARGS)
        if taken:
            raise ValueError(f"detect.extra may not set {taken}: kdforge sets them from the rest of the config")
        return value


RESERVED_ARGS = frozenset(
    _KDFORGE_ARGS
    | _MAPPED_ARGS
    | _RUNTIME_ARGS
    | (set(DetectOptimizerConfig.model_fields) - {"name"})
    | set(DetectAugmentConfig.model_fields)
)


def check_detection_run(config: RunConfig) -> None:
    """Refuse settings that ``task: detection`` would silently ignore, and a detection run without its section."""
    if config.task != DETECTION_TASK:
        if config.detect is not None:
            raise ConfigError(f"detect: applies to task: {DETECTION_TASK} only (this config has task: {config.task}).")
        return
    if config.detect is None:
        raise ConfigError("task: detection needs a detect: section, at least detect: {data: {root: DATASET_DIR}}.")
    if config.teachers:
        raise ConfigError("task: detection distils from one teacher: set teacher:, not teachers:.")
    for role, spec in (("student", config.student), ("teacher", config.teacher)):
        if spec is not None and spec.source != ULTRALYTICS_SOURCE:
            raise ConfigError(
                f"task: detection builds {role} models with Ultralytics: set {role}.source: {ULTRALYTICS_SOURCE} "
                f"(got {spec.source!r}) and {role}.name: a .pt file or a model .yaml such as yolov8n.yaml."
            )
    _refuse_ignored(config)
    _check_random_teacher(config)
    _check_registry(config)


def _check_random_teacher(config: RunConfig) -> None:
    """A teacher built from a model .yaml has random weights: distilling it teaches the student noise."""
    teacher = config.teacher
    if teacher is None or not teacher.name.lower().endswith((".yaml", ".yml")) or config.detect.allow_random_teacher:
        return
    raise ConfigError(
        f"teacher.name {teacher.name!r} is a model .yaml: the teacher would have random weights and teach noise. "
        "Train the teacher first (kdforge train -c CONFIG --teacher none --student "
        f"{teacher.name} --name my-teacher) and give its weights (teacher.name: runs/my-teacher/yolo/weights/best.pt)"
        ". Only for tests: detect.allow_random_teacher: true."
    )


def _check_registry(config: RunConfig) -> None:
    """A run without a teacher exports only when asked, under a name of its own (not the distilled model's)."""
    registry = config.detect.registry
    if config.teacher is None and registry.enabled and "name" not in registry.model_fields_set:
        raise ConfigError(
            "detect.registry.enabled: true without a teacher would put a model that was not distilled under "
            f"{registry.dir}/{registry.name}; set detect.registry.name too (e.g. yolov8n-alone)."
        )


def _refuse_ignored(config: RunConfig) -> None:
    """Sections of the generic loop that detection does not read: setting them is a mistake worth naming."""
    moves = {
        "distill.terms": (bool(config.distill.terms), "detect.distill (lambda_dist_ciou, lambda_dist_kl, ...)"),
        "cache.enabled": (config.cache.enabled, "nothing: the teacher runs live (its forward is cheap)"),
        "data.root": (config.data.root is not None, "detect.data.root"),
        "train.early_stopping": (config.train.early_stopping is not None, "detect.patience and detect.fitness"),
        "train.ema": (config.train.ema is not None, "detect.ema"),
    }
    for key, (is_set, instead) in moves.items():
        if is_set:
            raise ConfigError(f"{key} is not read by task: detection; use {instead}.")


def suggest_arg(name: str, known: list[str]) -> str:
    """The error for an unknown Ultralytics argument in ``detect.extra``."""
    return f"detect.extra.{name} is not an Ultralytics train argument.{did_you_mean(name, known)}"
