"""Image classification: cross-entropy on labelled samples, top-1 / top-5 accuracy, fitness = top-1."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from kdforge.data.datasets import UNLABELLED
from kdforge.tasks.base import Metrics, Outputs, Task


def labelled_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over samples whose target is not -1; 0 (in the graph) when none is labelled."""
    logits = logits.float()  # log-softmax of fp16 logits overflows under autocast
    labelled = target != UNLABELLED
    loss_sum = F.cross_entropy(logits, target.clamp_min(0), reduction="none").mul(labelled).sum()
    return loss_sum / labelled.sum().clamp_min(1)


class ClassificationTask(Task):
    name = "classification"
    logit_keys = ("logits",)

    def loss(self, outputs: Outputs, batch: dict[str, Any]) -> torch.Tensor:
        return labelled_cross_entropy(outputs["logits"], batch["target"])

    def check_outputs(self, outputs: Outputs, role: str) -> None:
        self.check_logits(outputs, role, ("batch", "classes"))

    def metrics(self) -> Metrics:
        return ClassificationMetrics(self.num_classes or 1)


class ClassificationMetrics(Metrics):
    sums = ("count", "correct1", "correctk", "loss_sum")

    def __init__(self, num_classes: int) -> None:
        self.k = min(5, num_classes)
        self.count = 0
        self.correct1 = 0.0
        self.correctk = 0.0
        self.loss_sum = 0.0

    def update(self, outputs: Outputs, batch: dict[str, Any]) -> None:
        logits, target = outputs["logits"].float(), batch["target"]
        keep = target != UNLABELLED
        logits, target = logits[keep], target[keep]
        topk = logits.topk(self.k, dim=1).indices  # (B, k)
        hits = topk.eq(target[:, None])
        self.correct1 += hits[:, 0].sum().item()
        self.correctk += hits.any(dim=1).sum().item()
        self.loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        self.count += int(target.numel())

    def compute(self) -> dict[str, float]:
        n = max(self.count, 1)
        acc1 = 100.0 * self.correct1 / n
        return {
            "val/acc1": acc1,
            f"val/acc{self.k}": 100.0 * self.correctk / n,
            "val/loss": self.loss_sum / n,
            "fitness": acc1,
        }
