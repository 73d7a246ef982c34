"""The Task interface: what the task-agnostic Trainer asks of a problem type."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from kdforge.core.config import RunConfig
from kdforge.core.errors import ClassCountMismatchError, ConfigError, DataError
from kdforge.core.registry import Registry

Outputs = dict[str, torch.Tensor]


class Metrics:
    """Accumulates over evaluation batches; ``compute()`` returns ``{"val/...": x, "fitness": x}``.

    ``sums`` names the attributes (numbers or tensors, e.g. a confusion matrix) that are plain sums over
    samples: under torchrun they are summed over the processes (each evaluates its share of the val set)
    before ``compute()``.
    """

    sums: tuple[str, ...] = ()
    rows: tuple[str, ...] = ()  # lists of per-sample tensors (e.g. embeddings): gathered from every process

    def update(self, outputs: Outputs, batch: dict[str, Any]) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError


class Task:
    """Turns raw model outputs into named tensors, computes the task loss and evaluates.

    Subclasses set ``num_classes`` and ``class_names`` once their datasets are built.
    """

    name = "task"
    logit_keys: tuple[str, ...] = ()  # outputs holding class scores on axis 1: the teacher cache keeps their top-k
    embeds_only = False  # models are backbones returning their embedding (built with num_classes=0)
    reads_crops = False  # True: the student may see several crops per sample (data.multicrop)
    # A task that trains on a loop of its own (detection: Ultralytics') sets this to a function
    # ``(config, run_dir, resume: bool) -> RunResult`` that runs instead of kdforge's Trainer.
    own_training: Callable[..., Any] | None = None

    @classmethod
    def command_line(cls, flags: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The CLI's short flags (``--epochs``, ``--lr`` ...) as this task reads them: the flags kdforge applies as
        usual, and ``key=value`` overrides for the ones this task keeps elsewhere; a flag it cannot honour raises
        `ConfigError` saying what to use instead. Most tasks take every flag as it is."""
        return flags, []

    @classmethod
    def configure(cls, config: RunConfig) -> None:
        """Refuse settings this task cannot run, and fill in its own defaults; called once when the run is
        resolved, before any data or model is built. Subclasses extend it (call ``super().configure``)."""
        if config.data.multicrop is not None and not cls.reads_crops:
            raise ConfigError(
                f"data.multicrop gives the student several crops per sample, but task {config.task!r} trains on one "
                "view per sample: remove data.multicrop (task: features matches crops with the teacher's embeddings)."
            )

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.num_classes: int | None = None
        self.class_names: list[str] = []

    def datasets(self) -> tuple[Dataset, Dataset]:
        """(train, val) datasets yielding dicts with at least ``input``, from ``data.dataset``; both splits must
        have the same classes."""
        from kdforge.data.datasets import build_dataset, class_names

        train, train_raw = build_dataset(self.config.data, "train")
        val = self.eval_dataset()
        names, val_names = class_names(train_raw, self.config.data), self.class_names
        if names != val_names:
            raise DataError(
                f"train and val splits have different classes ({len(names)} vs {len(val_names)}): "
                f"only in train: {sorted(set(names) - set(val_names))[:10]}, "
                f"only in val: {sorted(set(val_names) - set(names))[:10]}. Give both splits the same classes."
            )
        return train, val

    def eval_dataset(self) -> Dataset:
        """The validation split alone (for ``kdforge eval``: no training data needed); sets the classes."""
        from kdforge.data.datasets import build_dataset, class_names

        val, val_raw = build_dataset(self.config.data, "val")
        self.set_classes(class_names(val_raw, self.config.data))
        return val

    @property
    def model_classes(self) -> int | None:
        """The class count models are built with (0: a backbone returning its embedding)."""
        return 0 if self.embeds_only else self.num_classes

    def to_outputs(self, raw: Any) -> Outputs:
        """A dict is the model's own named outputs; a tuple or list gives its first element (DeiT's (cls, dist)
        heads in train mode, smp's auxiliary head); a tensor is the class logits."""
        if isinstance(raw, dict):
            return raw
        if isinstance(raw, (tuple, list)):
            raw = raw[0]
        return {"logits": raw}

    def set_classes(self, names: list[str]) -> None:
        """Record the data's classes; ``data.num_classes`` may add classes the data does not show, never drop any."""
        wanted = self.config.data.num_classes
        if wanted is not None and wanted < len(names):
            raise DataError(
                f"data.num_classes={wanted} but the dataset has {len(names)} classes "
                f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}); remove data.num_classes or fix it."
            )
        self.class_names = names
        self.num_classes = wanted or len(names)

    def check_logits(self, outputs: Outputs, role: str, layout: tuple[str, ...], hint: str = "") -> None:
        """Raise `ClassCountMismatchError` unless ``outputs["logits"]`` has the `layout` axes and one class per
        dataset class on axis 1."""
        logits = outputs.get("logits")
        if logits is None or logits.dim() != len(layout):
            shape = None if logits is None else tuple(logits.shape)
            raise ClassCountMismatchError(
                f"the {role} must return logits of shape ({', '.join(layout)}); got {shape}. {hint}".strip()
            )
        if logits.shape[1] != self.num_classes:
            raise ClassCountMismatchError(
                f"the {role} predicts {logits.shape[1]} classes but the dataset has {self.num_classes} "
                f"({', '.join(self.class_names[:5])}{', ...' if len(self.class_names) > 5 else ''}). "
                f"Use a {role} built for {self.num_classes} classes (its num_classes / checkpoint) "
                "or the dataset it was trained on."
            )

    def loss(self, outputs: Outputs, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def check_outputs(self, outputs: Outputs, role: str) -> None:
        """Raise a named error when a model's outputs do not fit the data (e.g. class count)."""

    def metrics(self) -> Metrics:
        raise NotImplementedError


TASKS: Registry[type[Task]] = Registry("task")
TASKS.register("classification", "kdforge.tasks.classification:ClassificationTask")
TASKS.register("segmentation", "kdforge.tasks.segmentation:SegmentationTask")
TASKS.register("features", "kdforge.tasks.features:FeaturesTask")
