"""Contrastive representation distillation (CRD)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.core.errors import ConfigError, DataError
from kdforge.distill.losses import TERMS
from kdforge.distill.losses.base import DistillTerm, Outputs, built, pick
from kdforge.models.taps import tap_key

EPS = 1e-7  # RepDistiller's crd/criterion.py


@TERMS.register("crd")
class CRD(DistillTerm):
    """Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020.

    Follows the authors' RepDistiller code (``crd/criterion.py``, ``crd/memory.py``). Features are
    flattened and embedded, ``v_s = normalize(W_s f_s + b_s)``, ``v_t = normalize(W_t f_t + b_t)`` (128-d).
    Two memory banks of N rows (the training-set size), ``M_s`` and ``M_t``, start uniform in
    ``[-stdv, stdv]``, ``stdv = 1 / sqrt(feat_dim / 3)``. For sample i, ``c_i = [i, n_1 .. n_K]``: the
    positive, then K negatives drawn at random (with replacement) from samples of other classes
    (``negatives_from_other_classes``; unlabelled samples count as other; an unlabelled sample, or a set
    without labels, draws from all other samples), never i itself; K is capped at N - 1.
    Scores and the NCE loss, ``Pn = 1 / N``::

        out_s = exp(M_t[c] . v_s / T) / Z_s        out_t = exp(M_s[c] . v_t / T) / Z_t     # (B, K+1)
        L(P) = -sum_b [log(P_0 / (P_0 + K Pn + eps)) + sum_{k>=1} log(K Pn / (P_k + K Pn + eps))] / B
        loss = L(out_s) + L(out_t)

    ``Z = mean(exp(...)) * N`` is estimated once, on the first batch, and kept. After the loss, the
    banks move towards the batch's embeddings at its indices: ``M[i] = normalize(m M[i] + (1 - m) v_i)``.
    Banks, labels and Z are buffers: they follow ``.to(device)`` and are checkpointed. The embeddings are
    built in ``setup`` and trained with the student (never exported).

    Deviation from RepDistiller, which updates the banks at the end of its forward: the update runs when
    the loss is back-propagated (a hook on the loss), so a forward that is not trained on, or is repeated,
    leaves the banks unchanged. Negatives are drawn with replacement (RepDistiller's dataset draws them
    without replacement when there are enough), which keeps sampling O(B K) on the device.

    Defaults are RepDistiller's ``train_student.py`` (``--feat_dim 128 --nce_k 16384 --nce_t 0.07
    --nce_m 0.5``, ``--mode exact``); its recipe taps the penultimate pooled features and weights this
    term 0.8 next to cross-entropy.

    Args:
        student: tap name of the student feature, (B, ...) flattened to (B, D_s).
        teacher: tap name of the teacher feature, (B, ...) flattened to (B, D_t).
        feat_dim: embedding size.
        num_negatives: K, negatives per sample (capped at N - 1).
        temperature: NCE temperature T.
        momentum: bank momentum m.
        negatives_from_other_classes: draw negatives from other classes when labels exist.
    """

    inputs = "features (taps), sample index and labels"
    schedulable = ("momentum",)  # not temperature: Z is estimated once, at the starting temperature

    needs_dataset = True

    def __init__(
        self,
        student: str,
        teacher: str,
        feat_dim: int = 128,
        num_negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
        negatives_from_other_classes: bool = True,
    ) -> None:
        super().__init__()
        _check(feat_dim >= 1 and num_negatives >= 1, "feat_dim and num_negatives must be >= 1")
        _check(temperature > 0 and 0 <= momentum < 1, "temperature must be > 0 and momentum in [0, 1)")
        self.student_key, self.teacher_key = tap_key(student), tap_key(teacher)
        self.feat_dim, self.num_negatives = int(feat_dim), int(num_negatives)
        self.temperature, self.momentum = float(temperature), float(momentum)
        self.other_classes = bool(negatives_from_other_classes)
        self.embed_s: nn.Linear | None = None
        self.embed_t: nn.Linear | None = None
        self.num_samples, self.k, self._index_checked = 0, 0, False
        for name in ("memory_s", "memory_t", "labels"):  # created by bind_dataset
            self.register_buffer(name, None)
        for name in ("order", "excl_start", "excl_len"):  # derived from the labels, not checkpointed
            self.register_buffer(name, None, persistent=False)
        self.register_buffer("z_s", torch.tensor(-1.0))  # < 0: not yet estimated
        self.register_buffer("z_t", torch.tensor(-1.0))

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        s = pick(student, self.student_key, "student").flatten(1)
        t = pick(teacher, self.teacher_key, "teacher").flatten(1)
        self.embed_s = nn.Linear(s.shape[1], self.feat_dim).to(s.device)
        self.embed_t = nn.Linear(t.shape[1], self.feat_dim).to(s.device)

    def bind_dataset(self, targets: Sequence[int]) -> None:
        labels = torch.as_tensor(targets, dtype=torch.long).flatten()
        n = len(labels)
        if n < 2:
            raise DataError(f"crd needs a training set of at least 2 samples to draw negatives from, got {n}.")
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)
        self.memory_s = torch.rand(n, self.feat_dim) * (2 * stdv) - stdv  # (N, F)
        self.memory_t = torch.rand(n, self.feat_dim) * (2 * stdv) - stdv
        self.labels = labels
        self.order, self.excl_start, self.excl_len = _exclusion_blocks(labels, self.other_classes)
        self.num_samples, self.k = n, min(self.num_negatives, n - 1)

    def sample_negatives(self, index: torch.Tensor) -> torch.Tensor:
        """(B,) sample indices -> (B, K) random negatives, drawn outside each sample's excluded block.

        Samples sorted by label (``order``) put each class in one block; a sample's negatives are uniform
        over ``order`` minus its block (its class, or just itself): draw r in [0, N - len), skip the block.
        """
        start, length = self.excl_start[index, None], self.excl_len[index, None]  # (B, 1)
        r = torch.randint(0, 2**62, (len(index), self.k), device=index.device) % (self.num_samples - length)
        return self.order[r + (r >= start) * length]  # (B, K)

    def forward(self, student: Outputs, teacher: Outputs, batch: dict[str, Any]) -> torch.Tensor:
        built(self.embed_s, "crd")
        built(self.memory_s, "crd", "bind_dataset(targets)")
        index = self._batch_index(batch)
        s = pick(student, self.student_key, "student").flatten(1)  # (B, D_s)
        t = pick(teacher, self.teacher_key, "teacher").flatten(1)  # (B, D_t)
        with torch.autocast(s.device.type, enabled=False):  # exp(score / 0.07) needs float32
            v_s = F.normalize(self.embed_s(s), dim=1)  # (B, F)
            v_t = F.normalize(self.embed_t(t), dim=1)
            contrast = torch.cat([index[:, None], self.sample_negatives(index)], dim=1)  # (B, K+1), positive first
            out_s = self._scores(self.memory_t, contrast, v_s, self.z_s)  # student anchored on the teacher bank
            out_t = self._scores(self.memory_s, contrast, v_t, self.z_t)
            loss = contrast_loss(out_s, self.num_samples) + contrast_loss(out_t, self.num_samples)
        if loss.requires_grad:
            loss.register_hook(self._bank_update_hook(index, v_s.detach(), v_t.detach()))
        return loss

    def _batch_index(self, batch: dict[str, Any]) -> torch.Tensor:
        if "index" not in batch:
            raise DataError(
                f"crd needs batch['index'] (each sample's position in the training set) to address its memory "
                f"banks; the batch has only {sorted(batch)}. kdforge's datasets add it: wrap a custom dataset so "
                "each sample is a dict with 'index'."
            )
        index = torch.as_tensor(batch["index"], dtype=torch.long, device=self.memory_s.device).flatten()
        if not self._index_checked:  # one host sync per run: an out-of-range index is a device assert on GPU
            low, high = int(index.min()), int(index.max())
            if low < 0 or high >= self.num_samples:
                raise DataError(
                    f"crd got sample indices in [{low}, {high}] but was bound to a training set of "
                    f"{self.num_samples}; bind_dataset must get the labels of the dataset the batches come from."
                )
            self._index_checked = True
        return index

    def _scores(self, bank: torch.Tensor, contrast: torch.Tensor, v: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``exp(bank[contrast] . v / T) / Z`` (B, K+1); Z is estimated on the first call and kept."""
        weight = bank[contrast]  # (B, K+1, F), a copy: the bank itself is never saved for backward
        out = torch.exp(torch.bmm(weight, v[:, :, None]).squeeze(2) / self.temperature)  # (B, K+1)
        z_now = torch.where(z > 0, z, out.detach().mean() * self.num_samples)  # no host sync
        z.copy_(z_now)
        return out / z_now

    def _bank_update_hook(self, index: torch.Tensor, v_s: torch.Tensor, v_t: torch.Tensor) -> Any:
        done = False

        def hook(_grad: torch.Tensor) -> None:
            nonlocal done
            if not done:  # a second backward through a retained graph does not move the banks again
                done = True
                self.update_banks(index, v_s, v_t)

        return hook

    @torch.no_grad()
    def update_banks(self, index: torch.Tensor, v_s: torch.Tensor, v_t: torch.Tensor) -> None:
        """``M[i] = normalize(m M[i] + (1 - m) v_i)`` at the batch's indices, for both banks.

        Rows whose new value is not finite keep their old value: a NaN batch (which the trainer skips)
        must not poison the banks, and the trainer does not snapshot term buffers (banks can be GBs).
        """
        # Under torchrun every process's batch moves every bank.
        index, v_s, v_t = self.world.gather_rows(index, v_s, v_t)
        for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
            old = bank[index]
            pos = F.normalize(old * self.momentum + v.to(bank.dtype) * (1 - self.momentum), dim=1)  # (B, F)
            bank.index_copy_(0, index, torch.where(torch.isfinite(pos).all(1, keepdim=True), pos, old))


def contrast_loss(x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """RepDistiller's ContrastLoss on (B, K+1) normalised scores, positive in column 0, ``Pn = 1/N``."""
    k_pn = (x.shape[1] - 1) / num_samples
    log_d1 = torch.log(x[:, 0] / (x[:, 0] + k_pn + EPS))  # (B,)
    log_d0 = torch.log(k_pn / (x[:, 1:] + k_pn + EPS))  # (B, K)
    return -(log_d1.sum() + log_d0.sum()) / x.shape[0]


def _exclusion_blocks(labels: torch.Tensor, other_classes: bool) -> tuple[torch.Tensor, ...]:
    """``order`` (samples sorted by label) and, per sample, the start and length of its block there.

    The block is the sample's class when drawing from other classes (labelled samples whose class is not
    the whole set), otherwise the sample itself.
    """
    n = len(labels)
    order = torch.argsort(labels, stable=True)  # (N,)
    start = torch.empty_like(order)
    start[order] = torch.arange(n)  # each sample's own position in `order`
    length = torch.ones_like(order)
    if other_classes:
        classes, counts = torch.unique_consecutive(labels[order], return_counts=True)
        cls = torch.searchsorted(classes, labels)  # (N,) position of each sample's class
        use = (labels >= 0) & (counts[cls] < n)
        start = torch.where(use, (counts.cumsum(0) - counts)[cls], start)
        length = torch.where(use, counts[cls], length)
    return order, start, length


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(f"crd: {message}.")
