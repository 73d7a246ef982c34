"""Dense-prediction terms (cwd, pixel_kl, attention) against float64 formulas written out by hand.

``pick`` keeps float64 inputs in float64 (and cwd's adapter runs in float64 after ``.double()``): fed
float64, values match the float64 references to float64 rounding (``rtol=1e-9, atol=1e-12``, well inside
the spec's 1e-6, which float32 math would also meet on these small tensors). Fed float32, the terms
compute in float32 and values agree within rtol 1e-5 / atol 1e-6.
"""

from __future__ import annotations

import pytest
import torch

from kdforge.distill.losses import build_term
from kdforge.distill.losses.dense import expose_attention
from kdforge.models.taps import TappedModel

TOL = {torch.float64: {"rtol": 1e-9, "atol": 1e-12}, torch.float32: {"rtol": 1e-5, "atol": 1e-6}}
DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])


def _close(value: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert value.dtype == dtype and value.shape == ()
    torch.testing.assert_close(value.double(), expected, **TOL[dtype])


def _softmax64(z: torch.Tensor, dim: int) -> torch.Tensor:
    z = z.double()
    e = torch.exp(z - z.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)


def _kl64(p_t: torch.Tensor, p_s: torch.Tensor, dim: int) -> torch.Tensor:
    """``sum p_t (log p_t - log p_s)`` along `dim`, float64."""
    return (p_t * (p_t.log() - p_s.log())).sum(dim)


def _cwd_by_hand(s: torch.Tensor, t: torch.Tensor, tau: float) -> torch.Tensor:
    """``tau^2 * sum_{n,c} KL(softmax_HW(t/tau) || softmax_HW(s/tau)) / (N*C)``."""
    n, c = t.shape[:2]
    p_s, p_t = _softmax64(s.flatten(2) / tau, -1), _softmax64(t.flatten(2) / tau, -1)  # (N, C, H*W)
    return tau**2 * _kl64(p_t, p_s, -1).sum() / (n * c)


def _pixel_kl_by_hand(s: torch.Tensor, t: torch.Tensor, temp: float, keep: torch.Tensor | None = None) -> torch.Tensor:
    """``T^2 * mean over kept pixels of KL(softmax_K(t/T) || softmax_K(s/T))``."""
    kl = _kl64(_softmax64(t / temp, 1), _softmax64(s / temp, 1), 1)  # (B, H, W)
    keep = torch.ones_like(kl, dtype=torch.bool) if keep is None else keep
    return temp**2 * kl[keep].sum() / keep.sum()


def _attention_by_hand(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean over (B, heads, rows) of ``sum_j t log(max(t, eps)) - t log(max(s, eps))``."""
    s, t = s.double(), t.double()
    return (t * (t.clamp(min=1e-8).log() - s.clamp(min=1e-8).log())).sum(-1).mean()


def _attn(b: int, heads: int, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (torch.randn(b, heads, n, n, dtype=dtype) * 2).softmax(-1)


def _ready(name: str, params: dict, student: dict, teacher: dict):
    """The term after setup; converted with ``.double()`` (adapters included) when the student is float64."""
    term = build_term(name, params)
    term.setup(student, teacher)
    return term.double() if next(iter(student.values())).dtype == torch.float64 else term


# --- cwd -------------------------------------------------------------------------------------------


@DTYPES
@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_cwd_matches_hand_computation(tau: float, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 4, 5, dtype=dtype) * 2, torch.randn(2, 3, 4, 5, dtype=dtype) * 2
    student, teacher = {"feat:f": s}, {"feat:f": t}
    term = _ready("cwd", {"student": "f", "teacher": "f", "temperature": tau}, student, teacher)
    assert list(term.parameters()) == []  # same shapes: the adapter is the identity
    _close(term(student, teacher, {}), _cwd_by_hand(s, t, tau), dtype)


@DTYPES
def test_cwd_adapts_channels_and_size_of_the_student(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 8, 8, dtype=dtype), torch.randn(2, 4, 4, 4, dtype=dtype)
    student, teacher = {"seg": s}, {"seg": t}
    term = _ready("cwd", {"student": "seg", "teacher": "seg"}, student, teacher)  # output keys, not taps
    assert term.adapter.proj.weight.dtype == dtype
    weight = term.adapter.proj.weight.detach().double()[:, :, 0, 0]  # (4, 3) 1x1 conv
    projected = torch.einsum("oc,bchw->bohw", weight, s.double())  # (2, 4, 8, 8)
    # bilinear 8 -> 4 without align_corners samples the centre of each 2x2 block: their mean.
    adapted = projected.reshape(2, 4, 4, 2, 4, 2).mean((3, 5))
    _close(term(student, teacher, {}), _cwd_by_hand(adapted, t, 1.0), dtype)


def test_cwd_rejects_vectors() -> None:
    outputs = {"feat:v": torch.randn(2, 8)}
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        _ready("cwd", {"student": "v", "teacher": "v"}, outputs, outputs)


# --- pixel_kl --------------------------------------------------------------------------------------


@DTYPES
@pytest.mark.parametrize("temp", [1.0, 3.0])
def test_pixel_kl_matches_hand_computation(temp: float, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 4, 3, dtype=dtype) * 2, torch.randn(2, 5, 4, 3, dtype=dtype) * 2
    term = _ready("pixel_kl", {"temperature": temp}, {"logits": s}, {"logits": t})
    value = term({"logits": s}, {"logits": t}, {"target": torch.tensor([0, 1])})  # class labels: not a mask
    _close(value, _pixel_kl_by_hand(s, t, temp), dtype)


@DTYPES
def test_pixel_kl_leaves_out_ignored_pixels(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 4, 4, dtype=dtype) * 2, torch.randn(2, 5, 4, 4, dtype=dtype) * 2
    target = torch.randint(0, 5, (2, 4, 4))
    target[0, :2] = 255
    target[1, 3, 1] = 255
    term = _ready("pixel_kl", {"temperature": 2.0, "student": "seg", "teacher": "seg"}, {"seg": s}, {"seg": t})
    value = term({"seg": s}, {"seg": t}, {"target": target})
    _close(value, _pixel_kl_by_hand(s, t, 2.0, keep=target != 255), dtype)
    moved = s.clone()
    moved[0, :, :2] += 10 * torch.randn(5, 2, 4, dtype=dtype)  # only ignored pixels change
    assert torch.equal(term({"seg": moved}, {"seg": t}, {"target": target}), value)
    all_ignored = torch.full_like(target, 255)
    assert term({"seg": s}, {"seg": t}, {"target": all_ignored}).item() == 0.0


def _upsample2_by_hand(x: torch.Tensor) -> torch.Tensor:
    """Bilinear 2x upsampling of the last two axes without align_corners, in float64: output i samples the
    input at (i + 0.5) / 2 - 0.5, clamped to the edges, i.e. 3/4 and 1/4 of its two nearest inputs."""

    def along(x: torch.Tensor, dim: int) -> torch.Tensor:
        x = x.movedim(dim, -1)
        prev = torch.cat([x[..., :1], x[..., :-1]], dim=-1)  # left neighbour, edge repeated
        nxt = torch.cat([x[..., 1:], x[..., -1:]], dim=-1)  # right neighbour, edge repeated
        even, odd = 0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt  # outputs 2k and 2k + 1
        return torch.stack([even, odd], dim=-1).flatten(-2).movedim(-1, dim)

    return along(along(x.double(), -1), -2)


@DTYPES
def test_pixel_kl_resizes_a_smaller_student_map(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 3, 3, dtype=dtype), torch.randn(2, 5, 6, 6, dtype=dtype)
    term = _ready("pixel_kl", {}, {"logits": s}, {"logits": t})
    _close(term({"logits": s}, {"logits": t}, {}), _pixel_kl_by_hand(_upsample2_by_hand(s), t, 1.0), dtype)


def test_pixel_kl_needs_the_same_classes() -> None:
    with pytest.raises(ValueError, match="same classes"):
        _ready("pixel_kl", {}, {"logits": torch.randn(1, 3, 2, 2)}, {"logits": torch.randn(1, 5, 2, 2)})


# --- attention -------------------------------------------------------------------------------------


@DTYPES
def test_attention_match_compares_head_by_head(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    s, t = _attn(2, 3, 7, dtype), _attn(2, 3, 7, dtype)
    s[0, 0, 0] = torch.tensor([1.0, 0, 0, 0, 0, 0, 0])  # exact zeros: the eps clamp keeps the log finite
    term = _ready("attention", {"student": "a", "teacher": "a", "heads": "match"}, {"feat:a": s}, {"feat:a": t})
    value = term({"feat:a": s}, {"feat:a": t}, {})
    assert torch.isfinite(value)
    _close(value, _attention_by_hand(s, t), dtype)


@DTYPES
def test_attention_mean_averages_heads_first(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    s, t = _attn(2, 2, 5, dtype), _attn(2, 3, 5, dtype)  # 2 student heads, 3 teacher heads
    term = _ready("attention", {"student": "a", "teacher": "a"}, {"feat:a": s}, {"feat:a": t})
    s64, t64 = s.double(), t.double()
    reference = _attention_by_hand(
        (s64[:, 0] + s64[:, 1])[:, None] / 2, (t64[:, 0] + t64[:, 1] + t64[:, 2])[:, None] / 3
    )
    _close(term({"feat:a": s}, {"feat:a": t}, {}), reference, dtype)
    same_heads = _attn(2, 3, 5)
    match = build_term("attention", {"student": "a", "teacher": "a", "heads": "match"})
    mean = build_term("attention", {"student": "a", "teacher": "a"})
    assert match({"feat:a": same_heads}, {"feat:a": t}, {}) > mean({"feat:a": same_heads}, {"feat:a": t}, {})


def test_attention_match_refuses_different_head_counts() -> None:
    s, t = _attn(1, 2, 5), _attn(1, 3, 5)
    with pytest.raises(ValueError, match="heads='mean'"):
        _ready("attention", {"student": "a", "teacher": "a", "heads": "match"}, {"feat:a": s}, {"feat:a": t})


def test_attention_refuses_different_token_counts_and_unknown_modes() -> None:
    with pytest.raises(ValueError, match="token count"):
        _ready("attention", {"student": "a", "teacher": "a"}, {"feat:a": _attn(1, 2, 5)}, {"feat:a": _attn(1, 2, 6)})
    with pytest.raises(ValueError, match="'mean' or 'match'"):
        build_term("attention", {"student": "a", "teacher": "a", "heads": "max"})


# --- every term ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "key", "value"),
    [
        ("cwd", {"student": "f", "teacher": "f", "temperature": 2.0}, "feat:f", torch.randn(2, 3, 4, 4)),
        ("pixel_kl", {"temperature": 2.0}, "logits", torch.randn(2, 5, 4, 4)),
        ("attention", {"student": "a", "teacher": "a", "heads": "match"}, "feat:a", _attn(2, 3, 6)),
        ("attention", {"student": "a", "teacher": "a"}, "feat:a", _attn(2, 3, 6)),
    ],
)
def test_zero_when_student_equals_teacher(name: str, params: dict, key: str, value: torch.Tensor) -> None:
    outputs = {key: value}
    result = _ready(name, params, outputs, {key: value.clone()})(outputs, {key: value.clone()}, {})
    torch.testing.assert_close(result, torch.tensor(0.0), rtol=0, atol=1e-6)


# --- timm ViT attention taps -----------------------------------------------------------------------


def _vit(heads: int) -> torch.nn.Module:
    timm = pytest.importorskip("timm")
    return timm.models.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=12 * heads, depth=2, num_heads=heads, num_classes=5
    )  # 4*4 patches + 1 class token = 17 tokens


def test_timm_vit_attention_taps_see_probabilities_after_expose_attention() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    vit = _vit(heads=3).eval()
    tapped = TappedModel(vit, taps={"attn": "blocks.1.attn.attn_drop"})
    fused = tapped(x)
    if vit.blocks[1].attn.fused_attn:  # fused: probabilities never exist, the attn_drop hook never runs
        assert "feat:attn" not in fused

    assert expose_attention(vit) == ["blocks.0.attn", "blocks.1.attn"]
    out = tapped(x)
    attn = out["feat:attn"]  # (B, heads, N, N)
    assert attn.shape == (2, 3, 17, 17)
    assert (attn >= 0).all()
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 17), rtol=0, atol=1e-5)
    torch.testing.assert_close(out["logits"], fused["logits"], rtol=1e-4, atol=1e-5)  # same function


def test_attention_term_on_timm_vits_with_different_head_counts() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    student_vit, teacher_vit = _vit(heads=2), _vit(heads=3).eval().requires_grad_(False)
    for vit in (student_vit, teacher_vit):
        expose_attention(vit)
    student = TappedModel(student_vit, taps={"attn": "blocks.1.attn.attn_drop"})(x)
    teacher = TappedModel(teacher_vit, taps={"attn": "blocks.1.attn.attn_drop"})(x)
    value = _ready("attention", {"student": "attn", "teacher": "attn"}, student, teacher)(student, teacher, {})
    value.backward()
    assert torch.isfinite(value) and value > 0
    assert student_vit.blocks[1].attn.qkv.weight.grad.abs().sum() > 0


def test_attention_refuses_maps_that_are_not_attention_probabilities() -> None:
    from kdforge.distill.losses import build_term

    term = build_term("attention", {"student": "a", "teacher": "a"})
    cnn_map = {"feat:a": torch.randn(2, 4, 3, 3)}  # square, 4-D, but not rows of probabilities
    with pytest.raises(ValueError, match="rows >= 0 summing to 1"):
        term.setup(cnn_map, cnn_map)
