"""Feature distillation terms."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from kdforge.distill.adapters import FeatureAdapter
from kdforge.distill.losses import TERMS
from kdforge.distill.losses.base import DistillTerm, Outputs, pick
from kdforge.models.taps import tap_key


@TERMS.register("fitnet")
class FitNet(DistillTerm):
    """Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.

    ``loss = mean((r(f_s) - f_t)^2)`` where ``r`` is a learned regressor (1x1 conv for maps, linear for
    vectors, plus bilinear resize) built only when the shapes differ.

    Args:
        student: tap name of the student feature (``distill.taps.student``).
        teacher: tap name of the teacher feature (``distill.taps.teacher``).
    """

    def __init__(self, student: str, teacher: str) -> None:
        super().__init__()
        self.student_key, self.teacher_key = tap_key(student), tap_key(teacher)
        self.adapter: FeatureAdapter | None = None

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        s = pick(student, self.student_key, "student")
        t = pick(teacher, self.teacher_key, "teacher")
        self.adapter = FeatureAdapter(s.shape, t.shape).to(s.device)

    def forward(self, student: Outputs, teacher: Outputs, batch: dict[str, Any]) -> torch.Tensor:
        if self.adapter is None:
            raise RuntimeError("fitnet term used before setup(); the Distiller calls it on the first batch.")
        s = self.adapter(pick(student, self.student_key, "student"))
        return F.mse_loss(s.float(), pick(teacher, self.teacher_key, "teacher"))
