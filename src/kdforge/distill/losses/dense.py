"""Dense-prediction distillation terms: channel-wise maps, per-pixel class maps, attention maps.

Keys: every ``student``/``teacher`` parameter here names either an output key as given (``"seg"``,
``"logits"``, ``"feat:f"``) or, when no output has that key, a tap name read as ``feat:<name>``. So
``"f"`` and ``"feat:f"`` both read the tap ``f``, and ``"seg"`` reads the task's dense logits. An
output key wins over a tap of the same name.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.distill.adapters import FeatureAdapter
from kdforge.distill.losses import TERMS
from kdforge.distill.losses.base import DistillTerm, Outputs, as_float, built, pick, softened_kl

ATTENTION_EPS = 1e-8  # clamp before log: attention rows may hold exact zeros (masks, dropout)


def _are_probabilities(x: torch.Tensor) -> bool:
    """Rows of non-negative values summing to 1 (checked once, in setup, so the cost is one sync per run)."""
    return bool((x >= 0).all() and torch.allclose(x.sum(-1), torch.ones((), dtype=x.dtype), atol=2e-2))  # bf16 rows


def _check_map(x: torch.Tensor, term: str, role: str, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"{term} compares maps of shape (B, C, H, W), but the {role}'s {name!r} has shape {tuple(x.shape)}. "
            "Tap a convolutional layer (or the dense logits) instead."
        )


def _check_temperature(term: str, temperature: float) -> float:
    if temperature <= 0:
        raise ValueError(f"{term} temperature must be > 0, got {temperature}.")
    return float(temperature)


def expose_attention(model: nn.Module) -> list[str]:
    """Turn off fused attention on every timm attention module so taps can see the probabilities.

    timm's ``Attention`` calls ``F.scaled_dot_product_attention`` when ``fused_attn`` is True, and the
    probabilities are never materialised. With ``fused_attn = False`` it computes
    ``attn = softmax(q k^T * scale); attn = self.attn_drop(attn)``, so a tap on
    ``blocks.<i>.attn.attn_drop`` yields (B, heads, N, N) rows that sum to 1 (exactly so when the
    module's ``attn_drop`` rate is 0, timm's default, or in eval mode). The unfused path is slower and
    uses O(N^2) memory per head. ``timm.layers.set_fused_attn(False)`` only affects modules built
    afterwards, hence this per-module switch. `AttentionKL.prepare_model` calls it on the student and every
    teacher when an ``attention`` term is configured; call it yourself when building a ``TappedModel`` by hand.

    Returns:
        The names of the modules switched (empty when the model has no fused attention).
    """
    switched = []
    for name, module in model.named_modules():
        if isinstance(getattr(module, "fused_attn", None), bool):
            module.fused_attn = False
            switched.append(name)
    return switched


@TERMS.register("cwd")
class ChannelWiseDistillation(DistillTerm):
    """Shu et al., "Channel-wise Knowledge Distillation for Dense Prediction", ICCV 2021.

    Each channel's map becomes a distribution over its H*W positions:
    ``p_c = softmax(x_c / tau)`` over H*W, and
    ``loss = tau^2 * sum_{n,c} KL(p^t_{n,c} || p^s_{n,c}) / (N * C)``,
    as mmrazor's ``ChannelWiseDivergence``. When channels or sizes differ the student map goes
    through a ``FeatureAdapter`` (1x1 conv to the teacher's channels, bilinear resize to its size).
    Default tau = 1.0 as in mmrazor (its CWD PSPNet Cityscapes recipe: ``tau=1, loss_weight=5``;
    the loss weight is this term's ``weight``).

    Args:
        student: output key or tap name of the student map (B, C_s, H_s, W_s), e.g. ``"seg"`` or ``"f"``.
        teacher: output key or tap name of the teacher map (B, C, H, W).
        temperature: tau > 0.
    """

    inputs = "feature maps or dense logits"
    schedulable = ("temperature",)

    def __init__(self, student: str, teacher: str, temperature: float = 1.0) -> None:
        super().__init__()
        self.student_key, self.teacher_key = student, teacher
        self.temperature = _check_temperature("cwd", temperature)
        self.adapter: FeatureAdapter | None = None

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        s = pick(student, self.student_key, "student")
        t = pick(teacher, self.teacher_key, "teacher")
        _check_map(s, "cwd", "student", self.student_key)
        _check_map(t, "cwd", "teacher", self.teacher_key)
        self.adapter = FeatureAdapter(s.shape, t.shape).to(s.device)

    def forward(self, student: Outputs, teacher: Outputs, batch: dict[str, Any]) -> torch.Tensor:
        built(self.adapter, "cwd")
        s = as_float(self.adapter(pick(student, self.student_key, "student")))  # (B, C, H, W)
        t = pick(teacher, self.teacher_key, "teacher")
        n, c = t.shape[:2]
        kl = softened_kl(s.flatten(2), t.flatten(2), self.temperature, dim=-1)  # (B, C): over H*W per channel
        return kl.sum() * self.temperature**2 / (n * c)


@TERMS.register("pixel_kl")
class PixelKL(DistillTerm):
    """Pixel-wise distillation: Hinton KD at every pixel of a class map.

    As the pixel-wise term of Liu et al., "Structured Knowledge Distillation for Semantic
    Segmentation", CVPR 2019 (with Hinton's temperature):
    ``loss = T^2 * sum_{valid i} KL(softmax(t_i / T) || softmax(s_i / T)) / #valid``
    over the class axis of logits (B, K, H, W), where i runs over the B*H*W pixels. A student map of
    another size is resized bilinearly (``align_corners=False``) to the teacher's. When the batch
    holds a ``target`` of shape (B, H, W) equal to the teacher map's size, pixels whose target is
    ``ignore_index`` are left out of the sum and the count; a target of any other shape (class labels,
    full-resolution masks for lower-resolution logits) is not used. With no valid pixel the loss is 0.
    Default T = 1 (the plain pixel-wise KL of Liu et al.); a schedule may set it per epoch.

    Args:
        temperature: softening temperature T > 0.
        student: output key (or tap name) of the student's dense logits.
        teacher: output key (or tap name) of the teacher's dense logits.
        ignore_index: target value of pixels to leave out (255: the Cityscapes/ADE20K/VOC convention).
    """

    inputs = "dense logits (B, K, H, W)"
    ensemble = True
    schedulable = ("temperature",)

    def __init__(
        self, temperature: float = 1.0, student: str = "logits", teacher: str = "logits", ignore_index: int = 255
    ) -> None:
        super().__init__()
        self.temperature = _check_temperature("pixel_kl", temperature)
        self.student_key, self.teacher_key = student, teacher
        self.ignore_index = ignore_index

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        self._pair(student, teacher)  # fail on the first batch, not mid-epoch

    def _pair(self, student: Outputs, teacher: Outputs) -> tuple[torch.Tensor, torch.Tensor]:
        s = pick(student, self.student_key, "student")
        t = pick(teacher, self.teacher_key, "teacher")
        _check_map(s, "pixel_kl", "student", self.student_key)
        _check_map(t, "pixel_kl", "teacher", self.teacher_key)
        if s.shape[1] != t.shape[1]:
            raise ValueError(
                f"pixel_kl needs the same classes in both maps: student has {s.shape[1]}, teacher {t.shape[1]}. "
                "Use cwd (which adapts channels) for maps with different channels."
            )
        if s.shape[2:] != t.shape[2:]:
            s = as_float(F.interpolate(s, size=t.shape[2:], mode="bilinear", align_corners=False))
        return s, t

    def forward(self, student: Outputs, teacher: Outputs, batch: dict[str, Any]) -> torch.Tensor:
        s, t = self._pair(student, teacher)  # (B, K, H, W) each
        kl = softened_kl(s, t, self.temperature, dim=1)  # (B, H, W)
        valid = self._valid(batch, kl)
        if valid is None:
            return kl.mean() * self.temperature**2
        kl = torch.where(valid, kl, torch.zeros_like(kl))  # where, not multiply: no NaN leaks from ignored pixels
        return kl.sum() / valid.sum().clamp(min=1) * self.temperature**2

    def _valid(self, batch: dict[str, Any], kl: torch.Tensor) -> torch.Tensor | None:
        """Pixels to keep, (B, H, W) bool, or None when the batch has no target mask of kl's shape."""
        target = batch.get("target")
        if not isinstance(target, torch.Tensor) or target.shape != kl.shape:
            return None
        return (target != self.ignore_index).to(kl.device)


@TERMS.register("attention")
class AttentionKL(DistillTerm):
    """Attention-map distillation for transformers (MiniLM: Wang et al., NeurIPS 2020).

    Inputs are attention probabilities (B, heads, N, N) whose rows sum to 1, e.g. timm ViT taps on
    ``blocks.<i>.attn.attn_drop`` after ``expose_attention(model)``. For each query row,
    ``KL(a_t || a_s) = sum_j a_t[j] * (log max(a_t[j], eps) - log max(a_s[j], eps))`` with eps = 1e-8,
    averaged over rows, heads and batch. ``heads="match"`` compares head h with head h, as MiniLM
    does (equal head counts required); ``heads="mean"`` (default, kdforge's choice so that a 3-head
    student can learn from a 6-head teacher) first averages each side's heads into one map, which is
    still a distribution per row. Token counts N must be equal: tap layers with the same patch grid
    and prefix tokens (resize the teacher's input with the input adapter if needed).

    Args:
        student: tap name (or output key) of the student's attention probabilities.
        teacher: tap name (or output key) of the teacher's attention probabilities.
        heads: ``"mean"`` or ``"match"``.
    """

    inputs = "attention probabilities (B, heads, N, N) (taps)"

    @classmethod
    def prepare_model(cls, model: nn.Module) -> None:
        expose_attention(model)  # timm's fused attention never materialises the probabilities a tap reads

    def __init__(self, student: str, teacher: str, heads: str = "mean") -> None:
        super().__init__()
        if heads not in ("mean", "match"):
            raise ValueError(f"attention heads must be 'mean' or 'match', got {heads!r}.")
        self.student_key, self.teacher_key, self.heads = student, teacher, heads

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        self._pair(student, teacher, check_values=True)  # fail on the first batch, not mid-epoch

    def _pair(
        self, student: Outputs, teacher: Outputs, check_values: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = pick(student, self.student_key, "student")
        t = pick(teacher, self.teacher_key, "teacher")
        for x, role, name in ((s, "student", self.student_key), (t, "teacher", self.teacher_key)):
            if x.dim() != 4 or x.shape[-1] != x.shape[-2] or (check_values and not _are_probabilities(x)):
                raise ValueError(
                    f"attention expects probabilities of shape (B, heads, N, N) (rows >= 0 summing to 1), but the "
                    f"{role}'s {name!r} has shape {tuple(x.shape)} or other values. Tap blocks.<i>.attn.attn_drop "
                    "of a timm ViT (kdforge switches fused attention off for attention terms)."
                )
        if s.shape[-1] != t.shape[-1]:
            raise ValueError(
                f"attention needs the same token count in both maps: student N={s.shape[-1]}, teacher "
                f"N={t.shape[-1]}. Match patch grids and prefix tokens (e.g. resize the teacher's input)."
            )
        if self.heads == "match" and s.shape[1] != t.shape[1]:
            raise ValueError(
                f"attention heads='match' needs equal head counts: student {s.shape[1]}, teacher {t.shape[1]}. "
                "Use heads='mean' to compare head-averaged maps."
            )
        return s, t

    def forward(self, student: Outputs, teacher: Outputs, batch: dict[str, Any]) -> torch.Tensor:
        s, t = self._pair(student, teacher)  # (B, h_s, N, N), (B, h_t, N, N)
        if self.heads == "mean":
            s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)  # (B, 1, N, N)
        log_s = s.clamp(min=ATTENTION_EPS).log()
        log_t = t.clamp(min=ATTENTION_EPS).log()
        return (t * (log_t - log_s)).sum(-1).mean()  # sum over keys, mean over (B, heads, queries)
