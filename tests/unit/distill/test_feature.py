"""Feature terms at, cosine and smooth_l1 against hand-written float64 formulas.

``pick`` keeps float64 inputs in float64, and a term converted with ``.double()`` after setup runs its
adapter in float64 too: fed float64, values match the float64 references to float64 rounding (``rtol=1e-9,
atol=1e-12``, well inside the spec's 1e-6, which float32 math would also meet on these small tensors).
Fed float32, terms compute in float32 and values agree within ~1e-5.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdforge.core.errors import ConfigError
from kdforge.distill.losses import build_term
from kdforge.distill.losses.feature import AttentionTransfer, CosineMatch, SmoothL1Match

TOL = {torch.float64: {"rtol": 1e-9, "atol": 1e-12}, torch.float32: {"rtol": 1e-5, "atol": 1e-6}}
DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])


def _close(value: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype = torch.float32) -> None:
    assert value.dtype == dtype and value.shape == ()
    torch.testing.assert_close(value.double(), expected, **TOL[dtype])


def _blocks(f: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """Mean over non-overlapping kh x kw blocks: adaptive pooling to an exact divisor of the size."""
    b, c, h, w = f.shape
    return f.reshape(b, c, h // kh, kh, w // kw, kw).mean((3, 5))


# --- at -------------------------------------------------------------------------------------------


def _at_by_hand(s: torch.Tensor, t: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """mean_{b,k} (a_s - a_t)^2 with a = |F|^p averaged over channels, flattened, divided by its L2 norm."""

    def attention(f: torch.Tensor) -> torch.Tensor:
        a = (f.double().abs() ** p).sum(1).reshape(f.shape[0], -1) / f.shape[1]
        return a / (a**2).sum(1, keepdim=True).sqrt()

    return ((attention(s) - attention(t)) ** 2).mean()


def _at(s: torch.Tensor, t: torch.Tensor, **params: float) -> torch.Tensor:
    return build_term("at", {"student": "s", "teacher": "t", **params})({"feat:s": s}, {"feat:t": t}, {})


@DTYPES
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_at_matches_hand_computation(p: float, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(3, 4, 5, 5, dtype=dtype), torch.randn(3, 7, 5, 5, dtype=dtype)  # channels may differ
    _close(_at(s, t, p=p), _at_by_hand(s, t, p), dtype)


def test_at_is_zero_for_equal_or_rescaled_maps() -> None:
    torch.manual_seed(0)
    s = torch.randn(2, 4, 6, 6)
    assert _at(s, s) == 0
    assert _at(s, 3 * s).abs() < 1e-7  # the attention map is normalised per sample
    assert _at(s, torch.randn(2, 4, 6, 6)) > 0


def test_at_pools_the_larger_student_map_to_the_teacher_size() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4)
    _close(_at(s, t), _at_by_hand(_blocks(s, 2, 2), t))


def test_at_pools_the_larger_teacher_map_to_the_student_size() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 3, 3), torch.randn(2, 5, 6, 6)
    _close(_at(s, t), _at_by_hand(s, _blocks(t, 2, 2)))


@DTYPES
def test_at_pools_each_axis_to_the_smaller_size(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 8, 4, dtype=dtype), torch.randn(2, 5, 4, 8, dtype=dtype)  # taller student, wider teacher
    _close(_at(s, t), _at_by_hand(_blocks(s.double(), 2, 1), _blocks(t.double(), 1, 2)), dtype)  # both to 4 x 4


def test_at_has_no_adapter() -> None:
    term = AttentionTransfer("s", "t")
    term.setup({"feat:s": torch.randn(2, 3, 8, 8)}, {"feat:t": torch.randn(2, 5, 4, 4)})
    assert list(term.parameters()) == []


def test_at_refuses_non_maps_and_bad_p() -> None:
    with pytest.raises(ConfigError, match=r"at compares feature maps.*\(2, 8\).*cosine/smooth_l1"):
        _at(torch.randn(2, 8), torch.randn(2, 8))
    with pytest.raises(ConfigError, match="batches differ"):
        _at(torch.randn(2, 3, 4, 4), torch.randn(3, 3, 4, 4))
    with pytest.raises(ConfigError, match="p must be > 0"):
        AttentionTransfer("s", "t", p=0)


# --- cosine and smooth_l1 -------------------------------------------------------------------------


def _ready(name: str, s: torch.Tensor, t: torch.Tensor, **params: object) -> CosineMatch | SmoothL1Match:
    """The term after setup, converted to the inputs' dtype when float64 (adapter weights included)."""
    term = build_term(name, {"student": "s", "teacher": "t", **params})
    term.setup({"feat:s": s}, {"feat:t": t})
    return term.double() if s.dtype == torch.float64 else term


def _value(term: nn.Module, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return term({"feat:s": s}, {"feat:t": t}, {})


def _cosine_by_hand(s: torch.Tensor, t: torch.Tensor, dim: int = -1) -> torch.Tensor:
    s, t = s.double(), t.double()
    cos = (s * t).sum(dim) / ((s**2).sum(dim).sqrt() * (t**2).sum(dim).sqrt())
    return (1 - cos).mean()


def _smooth_l1_by_hand(s: torch.Tensor, t: torch.Tensor, beta: float) -> torch.Tensor:
    x = (s.double() - t.double()).abs()
    return torch.where(x < beta, 0.5 * x**2 / beta, x - 0.5 * beta).mean()


def _projected(term: nn.Module, s: torch.Tensor) -> torch.Tensor:
    """The student through the term's linear adapter, by hand: (..., D_s) @ W^T -> (..., D_t)."""
    return s.double() @ term.adapter.proj.weight.detach().double().T


@DTYPES
@pytest.mark.parametrize("shape", [(4, 6), (2, 5, 6)])  # embeddings, tokens
def test_cosine_matches_hand_computation_with_identity_adapter(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(*shape, dtype=dtype), torch.randn(*shape, dtype=dtype)
    term = _ready("cosine", s, t)
    assert isinstance(term.adapter.proj, nn.Identity) and list(term.parameters()) == []
    _close(_value(term, s, t), _cosine_by_hand(s, t), dtype)


@DTYPES
def test_cosine_on_maps_is_along_channels_after_projection_and_resize(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 8, 8, dtype=dtype), torch.randn(2, 5, 4, 4, dtype=dtype)
    term = _ready("cosine", s, t)
    assert isinstance(term.adapter.proj, nn.Conv2d) and term.adapter.proj.weight.dtype == dtype
    weight = term.adapter.proj.weight.detach().double()[:, :, 0, 0]  # (C_t, C_s)
    projected = torch.einsum("ts,bshw->bthw", weight, s.double())
    # bilinear 8 -> 4 without align_corners samples the centre of each 2x2 block: their mean.
    _close(_value(term, s, t), _cosine_by_hand(_blocks(projected, 2, 2), t, dim=1), dtype)


@DTYPES
def test_cosine_projects_different_widths_with_a_linear_adapter(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(4, 8, dtype=dtype), torch.randn(4, 12, dtype=dtype)
    term = _ready("cosine", s, t)
    assert isinstance(term.adapter.proj, nn.Linear)
    assert term.adapter.proj.weight in set(term.parameters())
    _close(_value(term, s, t), _cosine_by_hand(_projected(term, s), t), dtype)


def test_cosine_is_zero_for_equal_or_rescaled_features() -> None:
    torch.manual_seed(0)
    s = torch.randn(3, 5, 6)
    term = _ready("cosine", s, s)
    assert _value(term, s, s).abs() < 1e-6
    assert _value(term, s, 2 * s).abs() < 1e-6
    assert _value(term, s, torch.randn(3, 5, 6)) > 0.1


def test_cosine_cls_compares_the_first_token_only() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 10, 8), torch.randn(2, 17, 12)  # (B, 1 + 3*3, D_s), (B, 1 + 4*4, D_t)
    term = _ready("cosine", s, t, tokens="cls")
    assert (term.adapter.proj.in_features, term.adapter.proj.out_features) == (8, 12)
    _close(_value(term, s, t), _cosine_by_hand(_projected(term, s[:, 0]), t[:, 0]))
    changed = s.clone()
    changed[:, 1:] += 1  # patch tokens do not count
    assert torch.equal(_value(term, changed, t), _value(term, s, t))


@DTYPES
def test_smooth_l1_mean_compares_token_averages(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 10, 8, dtype=dtype), torch.randn(2, 17, 12, dtype=dtype)
    term = _ready("smooth_l1", s, t, tokens="mean")
    expected = _smooth_l1_by_hand(_projected(term, s.double().mean(1)), t.double().mean(1), beta=1.0)
    _close(_value(term, s, t), expected, dtype)


def _grid_by_hand(term: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(B, 1 + g*g, D_s) tokens -> their patch grid (B, D_t, g, g) through the term's 1x1 conv, in float64."""
    b, n, d = tokens.shape
    g = int((n - 1) ** 0.5)
    grid = tokens[:, 1:].double().transpose(1, 2).reshape(b, d, g, g)  # the class token is dropped
    return torch.einsum("ts,bshw->bthw", term.adapter.proj.weight.detach().double()[:, :, 0, 0], grid)


@DTYPES
def test_grid_compares_patch_tokens_as_maps_on_the_teacher_grid(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 1 + 8 * 8, 8, dtype=dtype), torch.randn(2, 1 + 4 * 4, 12, dtype=dtype)
    term = _ready("cosine", s, t, tokens="grid")
    assert isinstance(term.adapter.proj, nn.Conv2d)
    t_grid = t[:, 1:].transpose(1, 2).reshape(2, 12, 4, 4)
    # bilinear 8 -> 4 without align_corners samples the centre of each 2x2 block: their mean.
    _close(_value(term, s, t), _cosine_by_hand(_blocks(_grid_by_hand(term, s), 2, 2), t_grid, dim=1), dtype)


@DTYPES
def test_vit_student_tokens_meet_a_cnn_teacher_map(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 1 + 4 * 4, 8, dtype=dtype), torch.randn(2, 12, 4, 4, dtype=dtype)
    for tokens in ("all", "grid"):
        term = _ready("smooth_l1", s, t, tokens=tokens)
        _close(_value(term, s, t), _smooth_l1_by_hand(_grid_by_hand(term, s), t, beta=1.0), dtype)


def test_all_tokens_with_different_counts_says_how_to_fix() -> None:
    s, t = torch.randn(2, 10, 8), torch.randn(2, 17, 12)
    for name in ("cosine", "smooth_l1"):
        with pytest.raises(
            ConfigError, match=r"student has 10 tokens and the teacher 17.*tokens: cls.*tokens: mean.*tokens: grid"
        ):
            _ready(name, s, t)


def test_token_rules_refuse_non_tokens_and_unknown_rules() -> None:
    with pytest.raises(ConfigError, match=r"tokens='cls' applies to ViT tokens"):
        _ready("cosine", torch.randn(2, 8), torch.randn(2, 8), tokens="cls")
    with pytest.raises(ConfigError, match=r"tokens='grid' applies to ViT tokens \(B, N, D\) or maps"):
        _ready("cosine", torch.randn(2, 10, 8), torch.randn(2, 12), tokens="grid")
    with pytest.raises(ConfigError, match="tokens must be one of all, cls, mean, grid; got 'first'"):
        CosineMatch("s", "t", tokens="first")
    with pytest.raises(ConfigError, match="batches differ"):
        _ready("cosine", torch.randn(2, 8), torch.randn(3, 8))


def test_adapter_terms_refuse_vectors_against_maps_and_use_before_setup() -> None:
    with pytest.raises(ValueError, match="a vector cannot be compared with a map or tokens"):
        _ready("smooth_l1", torch.randn(2, 4, 3, 3), torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="smooth_l1 term used before setup"):
        SmoothL1Match("s", "t")({"feat:s": torch.zeros(1, 2)}, {"feat:t": torch.zeros(1, 2)}, {})


@DTYPES
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 2.0])
def test_smooth_l1_matches_hand_computation(beta: float, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(3, 4, 5, 5, dtype=dtype) * 2, torch.randn(3, 4, 5, 5, dtype=dtype) * 2
    term = _ready("smooth_l1", s, t, beta=beta)
    assert isinstance(term.adapter.proj, nn.Identity) and list(term.parameters()) == []
    _close(_value(term, s, t), _smooth_l1_by_hand(s, t, beta), dtype)


@DTYPES
def test_smooth_l1_projects_and_is_zero_for_equal_features(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(4, 8, dtype=dtype), torch.randn(4, 12, dtype=dtype)
    term = _ready("smooth_l1", s, t)
    assert isinstance(term.adapter.proj, nn.Linear)
    _close(_value(term, s, t), _smooth_l1_by_hand(_projected(term, s), t, beta=1.0), dtype)
    same = _ready("smooth_l1", s, s)
    assert _value(same, s, s) == 0


def test_smooth_l1_refuses_negative_beta() -> None:
    with pytest.raises(ConfigError, match="beta must be >= 0"):
        SmoothL1Match("s", "t", beta=-1.0)
