"""Logit distillation terms."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from kdforge.core.errors import ConfigError
from kdforge.distill.losses import TERMS
from kdforge.distill.losses.base import DistillTerm, Outputs, pick, softened_kl


def kd_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` averaged over the batch (``batchmean``).

    Logits have shape (B, C) or (B, C, ...) for dense outputs, where the class axis is 1 and every
    other position counts as a sample.
    """
    return softened_kl(student_logits, teacher_logits, temperature, dim=1).mean() * temperature**2


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

    inputs = "logits (B, C) or dense logits (B, C, H, W)"
    ensemble = True
    schedulable = ("temperature",)

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


def _binary_log_probs(z: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """log [p(target), p(non-target)] of softmax(z), computed in log space so neither is ever -inf.

    Args:
        z: (N, C) scaled logits.
        gt: (N, C) boolean one-hot of each row's target class.
    """
    log_total = z.logsumexp(1, keepdim=True)  # (N, 1)
    log_target = z.masked_fill(~gt, float("-inf")).logsumexp(1, keepdim=True)
    log_other = z.masked_fill(gt, float("-inf")).logsumexp(1, keepdim=True)
    return torch.cat([log_target, log_other], dim=1) - log_total  # (N, 2)


@TERMS.register("dkd")
class DKD(DistillTerm):
    """Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022 (authors' code: megvii-research/mdistiller).

    With ``b = [p_gt, 1 - p_gt]`` the binary target/non-target split of ``p = softmax(z / T)`` and
    ``q = softmax(z / T - 1000 * onehot(gt))`` the distribution among non-target classes (the target
    logit masked exactly as in mdistiller's ``dkd_loss``), per labelled sample::

        TCKD = T^2 * KL(b_t || b_s)      NCKD = T^2 * KL(q_t || q_s)
        loss = min((epoch + 1) / warmup, 1) * mean_labelled(alpha * TCKD + beta * NCKD)

    mdistiller divides the summed KL by the batch size; here by the number of labelled samples
    (``batch["target"] >= 0``), which is the batch size on fully labelled data. Unlabelled samples
    contribute nothing; a batch without labels gives 0. Both KLs take log-probabilities of the teacher
    too (same value as mdistiller's ``log(cat_mask(softmax))`` and ``softmax`` targets, but finite when
    a probability underflows, and exactly 0 when student and teacher agree).
    The warm-up is mdistiller's ``min(epoch / warmup, 1)`` with its 1-based epochs; ``set_epoch``
    gets 0-based ones. The cross-entropy of DKD is the task loss, weighted by ``distill.task_weight``.

    Defaults are mdistiller's CIFAR-100 config (``CFG.DKD``): alpha 1, beta 8, T 4, warm-up 20 epochs
    (a few CIFAR pairs override beta, e.g. 6 for VGG13 -> MobileNetV2; ImageNet uses beta 0.5, T 1,
    warm-up 1).

    Args:
        alpha: weight of TCKD (>= 0).
        beta: weight of NCKD (>= 0).
        temperature: softening temperature T > 0.
        warmup: epochs of linear warm-up (>= 0; 0 disables it).
        student: key of the student's (B, C) logits in its outputs.
        teacher: key of the teacher's (B, C) logits in its outputs.
    """

    inputs = "logits (B, C) and labels"
    ensemble = True
    schedulable = ("alpha", "beta", "temperature")

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup: int = 20,
        student: str = "logits",
        teacher: str = "logits",
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"dkd temperature must be > 0, got {temperature}.")
        if alpha < 0 or beta < 0:
            raise ValueError(f"dkd alpha and beta must be >= 0, got alpha={alpha}, beta={beta}.")
        if warmup < 0:
            raise ValueError(f"dkd warmup must be >= 0 epochs (0 disables it), got {warmup}.")
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)
        self.warmup = int(warmup)
        self.student_key, self.teacher_key = student, teacher
        self.epoch = 0  # set_epoch runs at every epoch start, resumes included, so no buffer is needed

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def warmup_factor(self) -> float:
        """``min((epoch + 1) / warmup, 1)`` for the current 0-based epoch."""
        return 1.0 if self.warmup == 0 else min((self.epoch + 1) / self.warmup, 1.0)

    def forward(self, student: Outputs, teacher: Outputs, batch: dict[str, Any]) -> torch.Tensor:
        s = pick(student, self.student_key, "student")  # (B, C)
        t = pick(teacher, self.teacher_key, "teacher")
        target = _labels(batch, s)  # (B,)
        labelled = target >= 0
        gt = F.one_hot(target.clamp(min=0), s.shape[1]).bool()  # (B, C); unlabelled rows are masked below
        s, t = s / self.temperature, t / self.temperature
        tckd = F.kl_div(_binary_log_probs(s, gt), _binary_log_probs(t, gt), reduction="none", log_target=True)
        log_q_s = F.log_softmax(s - 1000.0 * gt, dim=1)  # (B, C); the target's entry is about -1000
        log_q_t = F.log_softmax(t - 1000.0 * gt, dim=1)
        nckd = F.kl_div(log_q_s, log_q_t, reduction="none", log_target=True)
        per_sample = self.alpha * tckd.sum(1) + self.beta * nckd.sum(1)  # (B,)
        # A mask, not indexing: no host sync, and unlabelled rows get an exact zero gradient.
        total = (per_sample * labelled).sum() / labelled.sum().clamp(min=1)
        return self.warmup_factor() * self.temperature**2 * total


def _labels(batch: dict[str, Any], logits: torch.Tensor) -> torch.Tensor:
    """``batch["target"]`` as (B,) class indices matching (B, C) `logits`, with clear errors."""
    if "target" not in batch:
        raise ConfigError(f"dkd needs the ground-truth labels in batch['target']; the batch has {sorted(batch)}.")
    target = torch.as_tensor(batch["target"], device=logits.device).long()
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(
            f"dkd needs (B, C) logits and (B,) targets, got {tuple(logits.shape)} and {tuple(target.shape)}; "
            "point student/teacher at classification logits."
        )
    return target


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row pair of (N, D) `a` and `b`, as in the DIST code: (N,)."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


@TERMS.register("dist")
class DIST(DistillTerm):
    """Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022 (code: hunto/DIST_KD).

    With ``Y = softmax(z / tau)`` row-wise, of shape (N, C), and ``rho`` the Pearson correlation
    (cosine similarity of mean-centred vectors, eps 1e-8 in the denominator)::

        inter = 1 - mean_i rho(Y_s[i, :], Y_t[i, :])     (each sample's class distribution)
        intra = 1 - mean_j rho(Y_s[:, j], Y_t[:, j])     (each class's scores over the batch)
        loss  = tau^2 * (beta * inter + gamma * intra)

    Dense logits (B, C, H, W) count every position as a row, as the authors' segmentation code does.
    The intra-class part needs more than one row: with one, every column is constant and it is 1.
    Defaults beta = gamma = tau = 1 are those of the authors' classification ``DIST`` loss.

    Args:
        beta: weight of the inter-class relation (>= 0).
        gamma: weight of the intra-class relation (>= 0).
        temperature: tau > 0.
        student: key of the student's logits in its outputs.
        teacher: key of the teacher's logits in its outputs.
    """

    inputs = "logits (B, C) or dense logits"
    ensemble = True
    schedulable = ("beta", "gamma", "temperature")

    def __init__(
        self,
        beta: float = 1.0,
        gamma: float = 1.0,
        temperature: float = 1.0,
        student: str = "logits",
        teacher: str = "logits",
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"dist temperature must be > 0, got {temperature}.")
        if beta < 0 or gamma < 0:
            raise ValueError(f"dist beta and gamma must be >= 0, got beta={beta}, gamma={gamma}.")
        self.beta, self.gamma, self.temperature = float(beta), float(gamma), float(temperature)
        self.student_key, self.teacher_key = student, teacher

    def forward(self, student: Outputs, teacher: Outputs, batch: dict[str, Any]) -> torch.Tensor:
        s = pick(student, self.student_key, "student")
        t = pick(teacher, self.teacher_key, "teacher")
        if s.dim() > 2:  # (B, C, H, W) -> (B*H*W, C)
            s, t = s.movedim(1, -1).flatten(0, -2), t.movedim(1, -1).flatten(0, -2)
        y_s = F.softmax(s / self.temperature, dim=1)  # (N, C)
        y_t = F.softmax(t / self.temperature, dim=1)
        inter = 1 - _pearson_rows(y_s, y_t).mean()
        intra = 1 - _pearson_rows(y_s.T, y_t.T).mean()
        return self.temperature**2 * (self.beta * inter + self.gamma * intra)
