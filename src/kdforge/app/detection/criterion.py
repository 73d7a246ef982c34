"""The student's loss criterion: Ultralytics' detection loss plus kdforge's distillation terms.

Ultralytics computes a model's loss as ``model.criterion(preds, batch)``; swapping that criterion on the
student (rather than wrapping the student in another module) keeps the trained model, its EMA and every
checkpoint a plain ``DetectionModel`` that ``ultralytics.YOLO()`` loads, and leaves the trainer's validator,
resume and NaN recovery untouched.

Loss, per image (Ultralytics sums over the batch, so the distillation terms are scaled by the batch size too):
``lambda_detection x (box + cls + dfl) + lambda_distillation x (lambda_dist_ciou x CIoU + lambda_dist_kl x KL)
+ feature_weight x feature imitation``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.tal import make_anchors

from kdforge.app.detection.losses import feature_loss, projector, resolve_topk, response_losses, teacher_topk
from kdforge.app.detection.teacher import detect_head, head_outputs, teacher_forward
from kdforge.core.config.detection import DetectDistillConfig
from kdforge.core.errors import ConfigError

KD_PARTS = ("kd_ciou", "kd_kl", "kd_feat")


def build_projectors(student: nn.Module, teacher: nn.Module) -> nn.ModuleList:
    """One projector per neck level, from the channels each Detect head reads (no forward pass needed)."""
    s_head, t_head = detect_head(student, "student"), detect_head(teacher, "teacher")
    pairs = zip(_head_channels(s_head), _head_channels(t_head), strict=True)
    return nn.ModuleList(projector(s, t) for s, t in pairs)


def _head_channels(head: nn.Module) -> list[int]:
    return [branch[0].conv.in_channels for branch in head.cv2]  # the box branch's first Conv at each level


def check_kl_mode(cfg: DetectDistillConfig, nc: int) -> None:
    """With one class the softmax over classes is always [1.0], so ``kl: softmax`` would distil nothing."""
    if nc == 1 and cfg.kl == "softmax" and cfg.lambda_dist_kl > 0 and cfg.lambda_distillation > 0:
        raise ConfigError(
            "the data has one class: the softmax KL of a single class is always 0, so the KL term would teach "
            "nothing. Set detect.distill.kl: sigmoid (each class's Bernoulli, as YOLO's BCE class head predicts), "
            "or lambda_dist_kl: 0."
        )


class DistillationCriterion:
    """Called as Ultralytics calls a criterion: ``(preds, batch) -> (loss vector, loss items)``.

    In training (raw-output dict) it adds the distillation terms; in evaluation (the ``(decoded, raw)`` tuple a
    model returns in eval mode) only the detection loss counts and the distillation items read zero, so the
    items always have the same names.
    """

    def __init__(
        self,
        student: DetectionModel,
        teacher: DetectionModel,
        cfg: DetectDistillConfig,
        projectors: nn.ModuleList | None,
    ) -> None:
        self.detection = student.init_criterion()
        self.teacher = teacher
        self.cfg = cfg
        self.projectors = projectors
        head = detect_head(student, "student")
        check_kl_mode(cfg, head.nc)
        self.stride, self.reg_max = head.stride, (head.reg_max, detect_head(teacher, "teacher").reg_max)
        self.parts = KD_PARTS if projectors is not None else KD_PARTS[:2]
        self._anchors: tuple[tuple, torch.Tensor] | None = None

    def __call__(self, preds: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        detection, items = self.detection(preds, batch)
        training = not isinstance(preds, tuple)
        parts = self.distill_parts(preds, batch["img"]) if training else self._zeros(detection)
        kd = self.weighted(parts)
        items = {**items, **{name: value.detach() for name, value in parts.items()}}
        total = torch.cat([detection * self.cfg.lambda_detection, (kd * batch["img"].shape[0]).view(1)])
        return total, items

    def weighted(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """The distillation part of the per-image loss."""
        cfg = self.cfg
        response = cfg.lambda_dist_ciou * parts["kd_ciou"] + cfg.lambda_dist_kl * parts["kd_kl"]
        return cfg.lambda_distillation * response + cfg.feature_weight * parts.get("kd_feat", 0.0)

    def distill_parts(self, preds: dict[str, Any], images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted distillation losses of one training batch (the teacher sees the student's exact images)."""
        teacher, teacher_feats = head_outputs(teacher_forward(self.teacher, images), self.reg_max[1])
        student, student_feats = head_outputs(preds, self.reg_max[0])
        anchors = self.anchors(student_feats)
        parts: dict[str, torch.Tensor] = {}
        if self.cfg.lambda_distillation > 0:
            top = teacher_topk(teacher, anchors, resolve_topk(self.cfg.topk, anchors.shape[0]))
            parts["kd_ciou"], parts["kd_kl"] = response_losses(student, top, anchors, self.cfg.temperature, self.cfg.kl)
        else:
            parts["kd_ciou"] = parts["kd_kl"] = torch.zeros((), device=images.device)
        if self.projectors is not None:
            parts["kd_feat"] = feature_loss(student_feats, teacher_feats, teacher.scores, self.projectors)
        return parts

    def anchors(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Anchor centres (A, 2) in grid units, cached per input size and device (multi-scale changes the size)."""
        key = (tuple(f.shape[-2:] for f in feats), feats[0].device)
        if self._anchors is None or self._anchors[0] != key:
            points, _ = make_anchors(feats, self.stride.to(feats[0].device), 0.5)
            self._anchors = (key, points)
        return self._anchors[1]

    def _zeros(self, like: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: torch.zeros((), device=like.device) for name in self.parts}

    def __deepcopy__(self, memo: dict[int, Any]) -> None:
        """A deep copy of the student (Ultralytics' ``ModelEMA``, e.g. on NaN recovery) gets no criterion: else it
        would carry a second teacher; the copy builds Ultralytics' plain loss when it needs one."""
        return None

    def update(self) -> None:
        """Ultralytics calls this at each epoch's end for losses with a schedule (end-to-end heads)."""
        if hasattr(self.detection, "update"):
            self.detection.update()
