"""Logit distillation terms."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from kdforge.distill.losses import TERMS
from kdforge.distill.losses.base import DistillTerm, Outputs, pick


def kd_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` averaged over the batch (``batchmean``).

    Logits have shape (B, C) or (B, C, ...) for dense outputs, where the class axis is 1 and every
    other position counts as a sample.
    """
    if student_logits.dim() > 2:  # (B, C, H, W) -> (B*H*W, C)
        student_logits = student_logits.movedim(1, -1).flatten(0, -2)
        teacher_logits = teacher_logits.movedim(1, -1).flatten(0, -2)
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


@TERMS.register("kd")
class HintonKD(DistillTerm):
    """Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.

    ``loss = T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``, batchmean. With ``distill.task_weight =
    1 - alpha`` and this term's ``weight = alpha`` the total is the classic
    ``(1 - alpha) * CE + alpha * T^2 * KL``. Default T = 4 (the common choice for CIFAR/ImageNet recipes).

    Args:
        temperature: softening temperature T > 0.
        student: key of the student's logits in its outputs.
        teacher: key of the teacher's logits in its outputs.
    """

    def __init__(self, temperature: float = 4.0, student: str = "logits", teacher: str = "logits") -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"kd temperature must be > 0, got {temperature}.")
        self.temperature = float(temperature)
        self.student_key, self.teacher_key = student, teacher

    def forward(self, student: Outputs, teacher: Outputs, batch: dict[str, Any]) -> torch.Tensor:
        s = pick(student, self.student_key, "student")
        t = pick(teacher, self.teacher_key, "teacher")
        return kd_divergence(s, t, self.temperature)
