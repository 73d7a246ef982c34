"""Relational terms sp, rkd and pkt against hand-written float64 formulas (loops over samples).

``pick`` keeps float64 inputs in float64: fed float64, values match the float64 references to float64
rounding (``rtol=1e-9, atol=1e-12``, well inside the spec's 1e-6, which float32 math would also meet on
these small tensors). Fed float32 (or bf16), the terms compute in float32 and agree within ~1e-5.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from kdforge.core.errors import ConfigError
from kdforge.distill.losses import build_term

TOL = {torch.float64: {"rtol": 1e-9, "atol": 1e-12}, torch.float32: {"rtol": 1e-5, "atol": 1e-6}}
DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])


def _value(name: str, s: torch.Tensor, t: torch.Tensor, **params: float) -> torch.Tensor:
    term = build_term(name, {"student": "s", "teacher": "t", **params})
    term.setup({"feat:s": s}, {"feat:t": t})
    return term({"feat:s": s}, {"feat:t": t}, {})


def _close(value: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype = torch.float32) -> None:
    assert value.dtype == dtype and value.shape == ()
    torch.testing.assert_close(value.double(), expected, **TOL[dtype])


def _rows(f: torch.Tensor) -> list[torch.Tensor]:
    return [row.double().flatten() for row in f]


def _smooth_l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    d = (x - y).abs()
    return torch.where(d < 1, 0.5 * d**2, d - 0.5).mean()


# --- sp -------------------------------------------------------------------------------------------


def _sp_by_hand(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """sum_ij (G_s - G_t)_ij^2 / B^2 with G_ij = <f_i, f_j> / ||G_i.||."""

    def gram(f: torch.Tensor) -> torch.Tensor:
        rows = _rows(f)
        g = torch.tensor([[float(a @ b) for b in rows] for a in rows], dtype=torch.float64)
        return g / g.norm(dim=1, keepdim=True)

    return ((gram(s) - gram(t)) ** 2).sum() / len(s) ** 2


@DTYPES
def test_sp_matches_hand_computation_across_shapes(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(5, 4, 6, 6, dtype=dtype), torch.randn(5, 6, 3, 3, dtype=dtype)  # other channels and sizes
    _close(_value("sp", s, t), _sp_by_hand(s, t), dtype)
    v_s, v_t = torch.randn(5, 8, dtype=dtype), torch.randn(5, 12, dtype=dtype)
    _close(_value("sp", v_s, v_t), _sp_by_hand(v_s, v_t), dtype)


def test_sp_is_zero_for_equal_or_rescaled_features() -> None:
    torch.manual_seed(0)
    s = torch.randn(4, 8)
    assert _value("sp", s, s) == 0
    assert _value("sp", s, 3 * s).abs() < 1e-7  # G is row-normalised
    assert _value("sp", s, torch.randn(4, 8)) > 0


def test_sp_under_bf16_autocast_runs_in_float32() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(6, 32).bfloat16(), torch.randn(6, 48).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = _value("sp", s, t)
    _close(value, _sp_by_hand(s, t))  # a bf16 Gram matrix would be off by ~1e-3


# --- rkd ------------------------------------------------------------------------------------------


def _rkd_by_hand(s: torch.Tensor, t: torch.Tensor, w_d: float = 25.0, w_a: float = 50.0) -> torch.Tensor:
    def distances(f: torch.Tensor) -> torch.Tensor:
        rows = _rows(f)
        d = torch.tensor([[float((a - b).norm()) for b in rows] for a in rows], dtype=torch.float64)
        return d / d[d > 0].mean()

    def angles(f: torch.Tensor) -> torch.Tensor:
        rows, cos = _rows(f), []
        for j, i, k in itertools.product(range(len(rows)), repeat=3):  # the angle at e_j
            u, v = rows[i] - rows[j], rows[k] - rows[j]
            nu, nv = max(float(u.norm()), 1e-12), max(float(v.norm()), 1e-12)  # 0 where samples coincide
            cos.append(float(u @ v) / (nu * nv))
        return torch.tensor(cos, dtype=torch.float64)

    return w_d * _smooth_l1(distances(s), distances(t)) + w_a * _smooth_l1(angles(s), angles(t))


@DTYPES
def test_rkd_matches_hand_computation(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(5, 8, dtype=dtype), torch.randn(5, 12, dtype=dtype)
    _close(_value("rkd", s, t), _rkd_by_hand(s, t), dtype)


@DTYPES
def test_rkd_weights_select_the_distance_and_angle_parts(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(4, 2, 3, 3, dtype=dtype), torch.randn(4, 3, 2, 2, dtype=dtype)  # maps are flattened
    _close(_value("rkd", s, t, angle_weight=0.0), _rkd_by_hand(s, t, 25.0, 0.0), dtype)
    _close(_value("rkd", s, t, distance_weight=0.0), _rkd_by_hand(s, t, 0.0, 50.0), dtype)
    _close(_value("rkd", s, t, distance_weight=1.0, angle_weight=2.0), _rkd_by_hand(s, t, 1.0, 2.0), dtype)


def test_rkd_is_zero_for_equal_shifted_or_rescaled_embeddings() -> None:
    torch.manual_seed(0)
    s = torch.randn(6, 8)
    assert _value("rkd", s, s) == 0
    assert _value("rkd", s, 2 * s + 1).abs() < 1e-5  # distances are mean-normalised; angles are invariant
    assert _value("rkd", s, torch.randn(6, 8)) > 0


def test_rkd_teacher_side_carries_no_gradient() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(4, 8, requires_grad=True), torch.randn(4, 12, requires_grad=True)
    _value("rkd", s, t).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


def test_rkd_needs_two_samples() -> None:
    with pytest.raises(ConfigError, match="rkd needs at least 2 samples per batch, got 1"):
        _value("rkd", torch.randn(1, 8), torch.randn(1, 12))


# --- pkt ------------------------------------------------------------------------------------------


def _pkt_by_hand(s: torch.Tensor, t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    def probabilities(f: torch.Tensor) -> torch.Tensor:
        rows = [r / (r.norm() + eps) for r in _rows(f)]
        k = torch.tensor([[(1 + float(a @ b)) / 2 for b in rows] for a in rows], dtype=torch.float64)
        return k / k.sum(1, keepdim=True)

    p_s, p_t = probabilities(s), probabilities(t)
    return (p_t * ((p_t + eps) / (p_s + eps)).log()).sum() / len(s) ** 2  # mean over the B x B entries


@DTYPES
@pytest.mark.parametrize("eps", [1e-7, 1e-3])
def test_pkt_matches_hand_computation(eps: float, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(6, 8, dtype=dtype), torch.randn(6, 12, dtype=dtype)
    _close(_value("pkt", s, t, eps=eps), _pkt_by_hand(s, t, eps), dtype)


def test_pkt_is_zero_for_equal_or_rescaled_features() -> None:
    torch.manual_seed(0)
    s = torch.randn(5, 3, 2, 2)
    assert _value("pkt", s, s) == 0
    assert _value("pkt", s, 4 * s).abs() < 1e-6  # the kernel is a cosine similarity
    assert _value("pkt", s, torch.randn(5, 3, 2, 2)) > 0


def test_pkt_refuses_non_positive_eps() -> None:
    with pytest.raises(ConfigError, match="pkt eps must be > 0"):
        build_term("pkt", {"student": "s", "teacher": "t", "eps": 0.0})


# --- shared ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sp", "rkd", "pkt"])
def test_relational_terms_refuse_different_batches(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"{name}: student and teacher batches differ \(4 vs 3 samples\)"):
        _value(name, torch.randn(4, 8), torch.randn(3, 8))


@pytest.mark.parametrize("name", ["sp", "rkd", "pkt"])
def test_relational_terms_have_no_parameters(name: str) -> None:
    term = build_term(name, {"student": "s", "teacher": "t"})
    term.setup({"feat:s": torch.randn(4, 8)}, {"feat:t": torch.randn(4, 12)})
    assert list(term.parameters()) == []
