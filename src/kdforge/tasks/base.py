"""The Task interface: what the task-agnostic Trainer asks of a problem type."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from kdforge.config import RunConfig
from kdforge.registry import Registry

Outputs = dict[str, torch.Tensor]


class Metrics:
    """Accumulates over evaluation batches; ``compute()`` returns ``{"val/...": x, "fitness": x}``.

    ``sums`` names the attributes (numbers or tensors, e.g. a confusion matrix) that are plain sums over
    samples: under torchrun they are summed over the processes (each evaluates its share of the val set)
    before ``compute()``.
    """

    sums: tuple[str, ...] = ()

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

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.num_classes: int | None = None
        self.class_names: list[str] = []

    def datasets(self) -> tuple[Dataset, Dataset]:
        """(train, val) datasets yielding dicts with at least ``input``."""
        raise NotImplementedError

    def eval_dataset(self) -> Dataset:
        """The validation split alone (for ``kdforge eval``: no training data needed)."""
        raise NotImplementedError

    def to_outputs(self, raw: Any) -> Outputs:
        raise NotImplementedError

    def loss(self, outputs: Outputs, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def check_outputs(self, outputs: Outputs, role: str) -> None:
        """Raise a named error when a model's outputs do not fit the data (e.g. class count)."""

    def metrics(self) -> Metrics:
        raise NotImplementedError


TASKS: Registry[type[Task]] = Registry("task")
TASKS.register("classification", "kdforge.tasks.classification:ClassificationTask")
TASKS.register("segmentation", "kdforge.tasks.segmentation:SegmentationTask")
