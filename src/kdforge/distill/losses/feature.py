"""Feature distillation terms."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from kdforge.core.errors import ConfigError
from kdforge.distill.adapters import FeatureAdapter, tokens_to_map
from kdforge.distill.losses import TERMS
from kdforge.distill.losses.base import DistillTerm, Outputs, as_float, built, pick
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

    inputs = "feature maps, embeddings or ViT tokens (taps)"

    def __init__(self, student: str, teacher: str) -> None:
        super().__init__()
        self.student_key, self.teacher_key = tap_key(student), tap_key(teacher)
        self.adapter: FeatureAdapter | None = None

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        s = pick(student, self.student_key, "student")
        t = pick(teacher, self.teacher_key, "teacher")
        self.adapter = FeatureAdapter(s.shape, t.shape).to(s.device)

    def forward(self, student: Outputs, teacher: Outputs, batch: dict[str, Any]) -> torch.Tensor:
        built(self.adapter, "fitnet")
        s = self.adapter(pick(student, self.student_key, "student"))
        return F.mse_loss(as_float(s), self.adapter.teacher_view(pick(teacher, self.teacher_key, "teacher")))


@TERMS.register("at")
class AttentionTransfer(DistillTerm):
    """Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017.

    ``a(F) = normalize(mean_c(|F|^p).view(B, -1))`` (unit L2 norm per sample) and
    ``loss = mean((a(F_s) - a(F_t))^2)`` over batch and positions, as in RepDistiller's ``Attention``
    (the paper's ``|F|^p``; equal to RepDistiller's ``F.pow(p)`` for the default even p = 2). When the
    spatial sizes differ, the larger map is adaptive-avg-pooled to the smaller one (per axis, to
    ``min(H_s, H_t) x min(W_s, W_t)``) before the attention maps are taken. Attention is channel-free, so
    no adapter is needed. RepDistiller trains it with a term weight of 1000 (``-b 1000``).

    Args:
        student: tap name of a student feature map (B, C_s, H_s, W_s).
        teacher: tap name of a teacher feature map (B, C_t, H_t, W_t).
        p: exponent of the activation magnitudes (default 2).
    """

    inputs = "feature maps (taps)"
    schedulable = ("p",)

    def __init__(self, student: str, teacher: str, p: float = 2.0) -> None:
        super().__init__()
        if p <= 0:
            raise ConfigError(f"at exponent p must be > 0, got {p}.")
        self.student_key, self.teacher_key, self.p = tap_key(student), tap_key(teacher), float(p)

    def attention(self, f: torch.Tensor) -> torch.Tensor:
        """The (B, H*W) attention map of a (B, C, H, W) feature map, unit L2 norm per sample."""
        return F.normalize(f.abs().pow(self.p).mean(1).flatten(1), dim=1)

    def forward(self, student: Outputs, teacher: Outputs, batch: dict[str, Any]) -> torch.Tensor:
        s = pick(student, self.student_key, "student")
        t = pick(teacher, self.teacher_key, "teacher")
        _check_maps(s, t)
        size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
        s, t = _pool_to(s, size), _pool_to(t, size)
        return (self.attention(s) - self.attention(t)).pow(2).mean()


def _check_maps(s: torch.Tensor, t: torch.Tensor) -> None:
    if s.dim() != 4 or t.dim() != 4:
        raise ConfigError(
            f"at compares feature maps (B, C, H, W); got student {tuple(s.shape)} and teacher {tuple(t.shape)}. "
            "Tap convolutional stages, or use cosine/smooth_l1 for embeddings and tokens."
        )
    _check_batch("at", s, t)


def _pool_to(f: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return f if tuple(f.shape[2:]) == size else F.adaptive_avg_pool2d(f, size)


def _as_map(f: torch.Tensor) -> torch.Tensor:
    return tokens_to_map(f) if f.dim() == 3 else f


def _check_batch(name: str, s: torch.Tensor, t: torch.Tensor) -> None:
    if s.shape[0] != t.shape[0]:
        raise ConfigError(
            f"{name}: student and teacher batches differ ({s.shape[0]} vs {t.shape[0]} samples); "
            "both must see the same samples."
        )


TOKEN_RULES = ("all", "cls", "mean", "grid")


class _AdaptedMatch(DistillTerm):
    """Shared part of cosine and smooth_l1: the token rule, then the student through a FeatureAdapter.

    Token rule for ViT tokens (B, N, D): ``"all"`` compares token by token and needs equal N; ``"cls"``
    compares the first (class) token; ``"mean"`` the average of all N tokens; ``"grid"`` the patch tokens
    as a (B, D, g, g) map (prefix tokens dropped, student grid resized to the teacher's). Maps and
    embeddings take ``"all"``; a token/map pair is compared as maps under ``"all"`` or ``"grid"``.
    """

    name = ""

    def __init__(self, student: str, teacher: str, tokens: str = "all") -> None:
        super().__init__()
        if tokens not in TOKEN_RULES:
            raise ConfigError(f"{self.name} tokens must be one of {', '.join(TOKEN_RULES)}; got {tokens!r}.")
        self.student_key, self.teacher_key, self.tokens = tap_key(student), tap_key(teacher), tokens
        self.adapter: FeatureAdapter | None = None

    def _pair(self, student: Outputs, teacher: Outputs) -> tuple[torch.Tensor, torch.Tensor]:
        s = pick(student, self.student_key, "student")
        t = pick(teacher, self.teacher_key, "teacher")
        _check_batch(self.name, s, t)
        if self.tokens == "all":
            if s.dim() == 3 and t.dim() == 3 and s.shape[1] != t.shape[1]:
                raise ConfigError(
                    f"{self.name} with tokens='all' compares token by token, but the student has {s.shape[1]} "
                    f"tokens and the teacher {t.shape[1]}. Set tokens: cls (first/class token), tokens: mean "
                    "(token average) or tokens: grid (patch tokens as maps), or tap layers with equal token counts."
                )
            return s, t  # a token/map pair becomes maps in the FeatureAdapter
        ranks = (3, 4) if self.tokens == "grid" else (3,)
        if s.dim() not in ranks or t.dim() not in ranks:
            wanted = "ViT tokens (B, N, D) or maps (B, C, H, W)" if self.tokens == "grid" else "ViT tokens (B, N, D)"
            raise ConfigError(
                f"{self.name} tokens={self.tokens!r} applies to {wanted}; got student {tuple(s.shape)} and teacher "
                f"{tuple(t.shape)}. Use tokens='all' for these taps."
            )
        if self.tokens == "grid":
            return _as_map(s), _as_map(t)  # (B, D, g, g)
        return (s[:, 0], t[:, 0]) if self.tokens == "cls" else (s.mean(1), t.mean(1))  # (B, D)

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        s, t = self._pair(student, teacher)
        self.adapter = FeatureAdapter(s.shape, t.shape).to(s.device)

    def forward(self, student: Outputs, teacher: Outputs, batch: dict[str, Any]) -> torch.Tensor:
        built(self.adapter, self.name)
        s, t = self._pair(student, teacher)
        # The adapter may run in bf16 under autocast; teacher_view turns teacher tokens into a map where needed.
        return self.distance(as_float(self.adapter(s)), self.adapter.teacher_view(t))

    def distance(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@TERMS.register("cosine")
class CosineMatch(_AdaptedMatch):
    """Cosine-distance feature matching for ViT and DINO-style students.

    As used e.g. by Ranzinger et al., "AM-RADIO: Agglomerative Vision Foundation Model", CVPR 2024 (on
    summary and patch tokens).

    ``loss = mean(1 - cos(r(s), t))`` with the cosine along the feature axis (channels of a map, last axis
    of embeddings and tokens), averaged over every sample/position/token. ``r`` is a learned adapter
    (1x1 conv or linear, plus bilinear resize of maps) built only when the shapes differ.

    Args:
        student: tap name of the student feature.
        teacher: tap name of the teacher feature.
        tokens: for ViT tokens (B, N, D): ``"all"`` (default; per token, equal N needed), ``"cls"`` (first
            token only), ``"mean"`` (average over the N tokens) or ``"grid"`` (patch tokens as a map, prefix
            tokens dropped, resized to the teacher's grid).
    """

    inputs = "feature maps, embeddings or ViT tokens (taps)"

    name = "cosine"

    def distance(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        dim = 1 if s.dim() == 4 else -1  # (B, C, H, W) or (B, [N,] D)
        return (1 - F.cosine_similarity(s, t, dim=dim)).mean()


@TERMS.register("smooth_l1")
class SmoothL1Match(_AdaptedMatch):
    """Smooth-L1 feature regression.

    As used e.g. by Wei et al., "Contrastive Learning Rivals Masked Image Modeling in Fine-tuning via Feature
    Distillation", 2022, and Baevski et al., "data2vec", ICML 2022.

    ``loss = F.smooth_l1_loss(r(s), t, beta)``, mean over all elements: ``0.5 x^2 / beta`` where
    ``|x| < beta``, else ``|x| - 0.5 beta``. ``r`` is the adapter described for ``cosine``. Default beta = 1.

    Args:
        student: tap name of the student feature.
        teacher: tap name of the teacher feature.
        beta: where the loss turns from quadratic to linear (>= 0; 0 is plain L1).
        tokens: token rule as for ``cosine`` (default ``"all"``).
    """

    inputs = "feature maps, embeddings or ViT tokens (taps)"
    schedulable = ("beta",)

    name = "smooth_l1"

    def __init__(self, student: str, teacher: str, beta: float = 1.0, tokens: str = "all") -> None:
        super().__init__(student, teacher, tokens)
        if beta < 0:
            raise ConfigError(f"smooth_l1 beta must be >= 0, got {beta}.")
        self.beta = float(beta)

    def distance(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.smooth_l1_loss(s, t, beta=self.beta)
