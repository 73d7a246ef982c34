"""Semantic segmentation: pixel cross-entropy, a confusion matrix for mIoU / pixel accuracy, fitness = mIoU.

Batches carry ``target`` masks (B, H, W) of class indices, with ``data.ignore_index`` on unlabelled pixels.
Models may predict at a lower resolution (e.g. 1/4): their logits are upsampled to the mask's size for the
loss and the metrics alike.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from kdforge.core.errors import DataError
from kdforge.tasks.base import Metrics, Outputs, Task


def to_mask_size(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`logits` (B, C, h, w) upsampled bilinearly to the mask's (H, W); unchanged when the sizes match."""
    if logits.shape[-2:] == mask.shape[-2:]:
        return logits
    return F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)


def pixel_cross_entropy(logits: torch.Tensor, mask: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean cross-entropy over labelled pixels; 0 (in the graph) when none is labelled (``mean`` would give NaN)."""
    logits = to_mask_size(logits.float(), mask)  # log-softmax of fp16 logits overflows under autocast
    mask = mask.long()
    loss_sum = F.cross_entropy(logits, mask, ignore_index=ignore_index, reduction="sum")
    return loss_sum / (mask != ignore_index).sum().clamp_min(1)


class SegmentationTask(Task):
    name = "segmentation"
    logit_keys = ("logits",)

    def datasets(self) -> tuple[Dataset, Dataset]:
        cfg = self.config.data
        if cfg.labelled_fraction < 1.0 or cfg.labelled_per_class is not None:
            raise DataError(
                "data.labelled_fraction / data.labelled_per_class hide image labels by class (classification only); "
                "for segmentation remove them and mark unlabelled pixels with data.ignore_index instead."
            )
        return super().datasets()

    def loss(self, outputs: Outputs, batch: dict[str, Any]) -> torch.Tensor:
        return pixel_cross_entropy(outputs["logits"], batch["target"], self.config.data.ignore_index)

    def check_outputs(self, outputs: Outputs, role: str) -> None:
        self.check_logits(
            outputs,
            role,
            ("batch", "classes", "height", "width"),
            "Use a segmentation model (e.g. source 'smp') or task 'classification'.",
        )

    def metrics(self) -> Metrics:
        return SegmentationMetrics(self.num_classes or 1, self.config.data.ignore_index, self.class_names)


class SegmentationMetrics(Metrics):
    """A confusion matrix over labelled pixels (rows: label, columns: prediction) and the summed pixel loss.

    IoU is in percent. A class with an empty union (neither in the labels nor predicted) has no IoU: it is left
    out of ``val/miou`` and gets no ``val/iou/<name>``, so mIoU is always the mean of the reported per-class
    values. Before any labelled pixel is seen every key is reported (as 0), so metric names can be checked.
    """

    sums = ("confusion", "loss_sum")

    def __init__(self, num_classes: int, ignore_index: int, class_names: list[str]) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.names = [*class_names, *map(str, range(len(class_names), num_classes))]
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.loss_sum = 0.0

    def update(self, outputs: Outputs, batch: dict[str, Any]) -> None:
        mask = batch["target"].long()  # (B, H, W)
        logits = to_mask_size(outputs["logits"].float(), mask)  # (B, C, H, W)
        labelled = mask != self.ignore_index
        labels, preds = mask[labelled], logits.argmax(dim=1)[labelled]  # (N,) each
        self._check_labels(labels)
        n = self.num_classes
        counts = torch.bincount(labels * n + preds, minlength=n * n).reshape(n, n)
        self.confusion = self.confusion.to(counts.device) + counts
        self.loss_sum += F.cross_entropy(logits, mask, ignore_index=self.ignore_index, reduction="sum").item()

    def _check_labels(self, labels: torch.Tensor) -> None:
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.numel():
            raise DataError(
                f"mask value {int(bad[0])} is neither a class (0..{self.num_classes - 1}) nor "
                f"data.ignore_index={self.ignore_index}; set data.ignore_index / data.num_classes to fit the masks."
            )

    def compute(self) -> dict[str, float]:
        confusion = self.confusion.double().cpu()
        pixels = confusion.sum().item()
        hits = confusion.diag()  # (C,)
        union = confusion.sum(0) + confusion.sum(1) - hits
        iou = 100.0 * hits / union.clamp_min(1)
        shown = union > 0 if pixels else torch.ones_like(union, dtype=torch.bool)
        miou = iou[shown].mean().item()
        return {
            "val/miou": miou,
            "val/pixel_acc": 100.0 * hits.sum().item() / max(pixels, 1),
            "val/loss": self.loss_sum / max(pixels, 1),
            **{f"val/iou/{self.names[c]}": iou[c].item() for c in range(self.num_classes) if shown[c]},
            "fitness": miou,
        }
