"""Relational distillation terms: match relations between the samples of a batch, not the features.

Every term flattens its inputs to (B, -1), so student and teacher widths, maps or token counts may
differ freely and no adapter is needed. The math runs with autocast off: under bf16 autocast the matrix
products would otherwise run (and round) in bf16.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from kdforge.core.errors import ConfigError
from kdforge.distill.losses import TERMS
from kdforge.distill.losses.base import DistillTerm, Outputs, pick
from kdforge.models.taps import tap_key


class _BatchRelation(DistillTerm):
    """Reads the two taps as (B, -1) float32 matrices (float64 if given); subclasses define ``relate(s, t)``."""

    name = ""
    min_batch = 1

    def __init__(self, student: str, teacher: str) -> None:
        super().__init__()
        self.student_key, self.teacher_key = tap_key(student), tap_key(teacher)

    def forward(self, student: Outputs, teacher: Outputs, batch: dict[str, Any]) -> torch.Tensor:
        s = pick(student, self.student_key, "student").flatten(1)  # (B, D_s)
        t = pick(teacher, self.teacher_key, "teacher").flatten(1)  # (B, D_t)
        if s.shape[0] != t.shape[0]:
            raise ConfigError(
                f"{self.name}: student and teacher batches differ ({s.shape[0]} vs {t.shape[0]} samples); "
                "relations are between the samples of one batch, so both must see the same samples."
            )
        if s.shape[0] < self.min_batch:
            raise ConfigError(f"{self.name} needs at least {self.min_batch} samples per batch, got {s.shape[0]}.")
        with torch.autocast(s.device.type, enabled=False):
            return self.relate(s, t)

    def relate(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@TERMS.register("sp")
class SimilarityPreserving(_BatchRelation):
    """Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019.

    ``G = normalize_rows(f f^T)`` for ``f`` the (B, -1) flattened feature, and
    ``loss = ||G_s - G_t||_F^2 / B^2``, as in RepDistiller's ``Similarity`` (verified there by the
    authors). RepDistiller trains it with a term weight of 3000 (``-b 3000``).

    Args:
        student: tap name of the student feature (any shape with the batch first).
        teacher: tap name of the teacher feature.
    """

    inputs = "any features (taps), compared within the batch"

    name = "sp"

    def relate(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        g_s = F.normalize(s @ s.T, dim=1)  # (B, B)
        g_t = F.normalize(t @ t.T, dim=1)
        return (g_s - g_t).pow(2).sum() / s.shape[0] ** 2


@TERMS.register("rkd")
class RelationalKD(_BatchRelation):
    """Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019.

    Distance-wise: ``psi_D(i, j) = ||e_i - e_j|| / mu`` with ``mu`` the mean over the pairs with non-zero
    distance; angle-wise: ``psi_A(i, j, k) = <(e_i - e_j)/||e_i - e_j||, (e_k - e_j)/||e_k - e_j||>`` over
    all (B, B, B) triplets (0 where two samples coincide). Then
    ``loss = w_d * smooth_l1(psi_D^s, psi_D^t) + w_a * smooth_l1(psi_A^s, psi_A^t)`` (beta 1, mean), with
    the teacher's relations computed without gradient. Defaults w_d = 25, w_a = 50 from the authors' code
    and RepDistiller's ``RKDLoss`` (trained there with a term weight of 1). Embeddings are flattened to
    (B, -1); tap the pooled embedding, as the paper does. The angle term costs O(B^2 D) memory.

    Args:
        student: tap name of the student embedding.
        teacher: tap name of the teacher embedding.
        distance_weight: w_d, weight of the distance-wise term.
        angle_weight: w_a, weight of the angle-wise term.
    """

    inputs = "embeddings (taps), compared within the batch"
    schedulable = ("distance_weight", "angle_weight")

    name = "rkd"
    min_batch = 2  # one sample has no pair, so no distance to normalise by

    def __init__(self, student: str, teacher: str, distance_weight: float = 25.0, angle_weight: float = 50.0) -> None:
        super().__init__(student, teacher)
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)

    def relate(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_dist, t_angle = _distances(t), _angles(t)
        loss_d = F.smooth_l1_loss(_distances(s), t_dist)
        loss_a = F.smooth_l1_loss(_angles(s), t_angle)
        return self.distance_weight * loss_d + self.angle_weight * loss_a


def _distances(e: torch.Tensor) -> torch.Tensor:
    """(B, B) Euclidean distances of the rows of `e`, divided by their mean over non-zero pairs."""
    squared = e.pow(2).sum(1)
    # The Gram form, clamped before the square root (its gradient at 0 is infinite); diagonal set to 0.
    d = (squared[:, None] + squared[None, :] - 2 * e @ e.T).clamp(min=1e-12).sqrt()
    d = d.masked_fill(torch.eye(len(e), dtype=torch.bool, device=e.device), 0.0)
    return d / (d.sum() / (d > 0).sum())  # = d[d > 0].mean(), without a data-dependent shape


def _angles(e: torch.Tensor) -> torch.Tensor:
    """(B*B*B,) cosines of the angle at e_j between e_i and e_k."""
    diff = F.normalize(e[None, :, :] - e[:, None, :], dim=2)  # (B, B, D): [j, i] = e_i - e_j, unit length
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()  # (B, B, B)


@TERMS.register("pkt")
class ProbabilisticKT(_BatchRelation):
    """Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer", ECCV 2018.

    Cosine-similarity kernel ``K_ij = (1 + cos(f_i, f_j)) / 2`` on (B, -1) features (each row divided by
    its norm + eps), rows normalised to probabilities ``P_ij = K_ij / sum_j K_ij``, and
    ``loss = mean_ij P^t_ij log((P^t_ij + eps) / (P^s_ij + eps))``: KL(teacher || student) per row,
    reduced by the mean over all B^2 entries as in the authors' code (passalis/probabilistic_kt, copied in
    RepDistiller's ``PKT``; trained there with a term weight of 30000). Default eps = 1e-7.

    Args:
        student: tap name of the student feature.
        teacher: tap name of the teacher feature.
        eps: added to norms and probabilities, as in the authors' code.
    """

    inputs = "embeddings (taps), compared within the batch"

    name = "pkt"

    def __init__(self, student: str, teacher: str, eps: float = 1e-7) -> None:
        super().__init__(student, teacher)
        if eps <= 0:
            raise ConfigError(f"pkt eps must be > 0, got {eps}.")
        self.eps = float(eps)

    def relate(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        p_s, p_t = self._probabilities(s), self._probabilities(t)
        return (p_t * torch.log((p_t + self.eps) / (p_s + self.eps))).mean()

    def _probabilities(self, f: torch.Tensor) -> torch.Tensor:
        f = f / (f.norm(dim=1, keepdim=True) + self.eps)  # (B, D)
        kernel = (f @ f.T + 1.0) / 2.0  # (B, B), in [0, 1]
        return kernel / kernel.sum(1, keepdim=True)
