"""Distillation terms: hand-computed values, adapters, parameter checks, a contract over every term."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdforge.core.errors import ConfigError, RegistryError
from kdforge.distill.losses import build_term
from kdforge.distill.losses.feature import FitNet
from kdforge.distill.losses.logit import HintonKD, kd_divergence


def _softmax64(z: torch.Tensor) -> torch.Tensor:
    z = z.double()
    e = torch.exp(z - z.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def _kd_by_hand(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * sum_{b,c} p_t (log p_t - log p_s) / B`` over rows of (B, C) logits, in float64."""
    p_s = _softmax64(student / temperature)
    p_t = _softmax64(teacher / temperature)
    return temperature**2 * (p_t * (p_t.log() - p_s.log())).sum() / student.shape[0]


# float64 inputs stay float64 through ``pick``, so the value agrees with the float64 reference to float64
# rounding: far inside the spec's 1e-6, which float32 math would also meet on these small tensors and so
# could not tell apart. float32 inputs compute in float32: within float32 rounding of the reference.
TOL = {torch.float64: {"rtol": 1e-9, "atol": 1e-12}, torch.float32: {"rtol": 1e-5, "atol": 1e-7}}
DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])


def _close(value: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert value.dtype == dtype and value.shape == ()
    torch.testing.assert_close(value.double(), expected, **TOL[dtype])


def _outputs(batch: int = 3, classes: int = 5, channels: int = 4, size: int = 6, grad: bool = False) -> dict:
    return {
        "logits": torch.randn(batch, classes, requires_grad=grad),
        "feat:f": torch.randn(batch, channels, size, size, requires_grad=grad),
    }


# --- kd -------------------------------------------------------------------------------------------


@DTYPES
def test_kd_matches_hand_computation(dtype: torch.dtype) -> None:
    student = torch.tensor([[1.0, 2.0, 0.5, -1.0], [0.0, -0.5, 3.0, 1.0]], dtype=dtype)
    teacher = torch.tensor([[2.0, 1.0, 0.0, -2.0], [0.5, 0.5, 2.0, 0.0]], dtype=dtype)
    term = build_term("kd", {"temperature": 4.0})
    value = term({"logits": student}, {"logits": teacher}, {})
    _close(value, _kd_by_hand(student, teacher, 4.0), dtype)


@DTYPES
@pytest.mark.parametrize("temperature", [1.0, 2.0, 7.5])
def test_kd_matches_hand_computation_at_several_temperatures(temperature: float, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    student, teacher = (torch.randn(6, 10) * 3).to(dtype), (torch.randn(6, 10) * 3).to(dtype)
    value = HintonKD(temperature=temperature)({"logits": student}, {"logits": teacher}, {})
    _close(value, _kd_by_hand(student, teacher, temperature), dtype)
    torch.testing.assert_close(kd_divergence(student, teacher, temperature), value)


@DTYPES
def test_kd_dense_logits_count_every_position_as_a_sample(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 4, 5, dtype=dtype), torch.randn(2, 3, 4, 5, dtype=dtype)  # (B, C, H, W)
    value = HintonKD(temperature=2.0)({"logits": student}, {"logits": teacher}, {})
    rows = lambda z: z.permute(0, 2, 3, 1).reshape(-1, 3)  # noqa: E731  (B*H*W, C)
    expected = _kd_by_hand(rows(student), rows(teacher), 2.0)  # mean over the 2*4*5 positions
    _close(value, expected, dtype)


def test_kd_is_zero_for_identical_logits_and_positive_otherwise() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 6)
    assert kd_divergence(logits, logits, 4.0).abs() < 1e-6
    assert kd_divergence(logits, logits.flip(1), 4.0) > 0


def test_kd_reads_configured_keys() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 3), torch.randn(2, 3)
    term = build_term("kd", {"temperature": 1.0, "student": "aux", "teacher": "main"})
    value = term({"aux": s, "logits": torch.zeros(2, 3)}, {"main": t}, {})
    torch.testing.assert_close(value.double(), _kd_by_hand(s, t, 1.0), rtol=1e-5, atol=1e-7)


def test_kd_missing_key_names_available_keys() -> None:
    with pytest.raises(ConfigError, match=r"student's outputs have no 'logits'.*\['feat:x'\]"):
        HintonKD()({"feat:x": torch.zeros(1, 2)}, {"logits": torch.zeros(1, 2)}, {})


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_kd_rejects_non_positive_temperature(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature must be > 0"):
        HintonKD(temperature=temperature)


def test_kd_under_bf16_autocast_is_float32_and_finite() -> None:
    torch.manual_seed(0)
    student = (torch.randn(4, 10) * 20).bfloat16().requires_grad_()
    teacher = (torch.randn(4, 10) * 20).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = HintonKD(temperature=1.0)({"logits": student}, {"logits": teacher}, {})
    assert value.dtype == torch.float32
    assert torch.isfinite(value)
    expected = _kd_by_hand(student.detach().float(), teacher.float(), 1.0)
    torch.testing.assert_close(value.double(), expected, rtol=1e-4, atol=1e-6)
    value.backward()
    assert student.grad is not None and student.grad.dtype == torch.bfloat16
    assert torch.isfinite(student.grad.float()).all()


# --- fitnet and its adapter -----------------------------------------------------------------------


def _fitnet(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> FitNet:
    term = FitNet(student="s", teacher="t")
    term.setup({"feat:s": student_feat}, {"feat:t": teacher_feat})
    return term


def test_fitnet_builds_1x1_conv_when_channels_differ() -> None:
    term = _fitnet(torch.randn(2, 4, 6, 6), torch.randn(2, 8, 6, 6))
    proj = term.adapter.proj
    assert isinstance(proj, nn.Conv2d)
    assert (proj.in_channels, proj.out_channels, proj.kernel_size) == (4, 8, (1, 1))
    assert proj.weight in set(term.parameters())  # registered, so the optimizer trains it


def test_fitnet_builds_linear_for_vectors() -> None:
    term = _fitnet(torch.randn(2, 4), torch.randn(2, 8))
    assert isinstance(term.adapter.proj, nn.Linear)
    assert (term.adapter.proj.in_features, term.adapter.proj.out_features) == (4, 8)


def test_fitnet_builds_linear_on_last_axis_for_tokens() -> None:
    term = _fitnet(torch.randn(2, 5, 4), torch.randn(2, 5, 8))  # (B, N, C)
    assert isinstance(term.adapter.proj, nn.Linear)
    value = term({"feat:s": torch.randn(2, 5, 4)}, {"feat:t": torch.randn(2, 5, 8)}, {})
    assert value.shape == ()


@DTYPES
def test_fitnet_identity_when_shapes_match(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 4, 6, 6, dtype=dtype), torch.randn(2, 4, 6, 6, dtype=dtype)
    term = _fitnet(s, t)
    assert isinstance(term.adapter.proj, nn.Identity)
    assert list(term.parameters()) == []
    value = term({"feat:s": s}, {"feat:t": t}, {})
    _close(value, ((s.double() - t.double()) ** 2).sum() / s.numel(), dtype)


def test_fitnet_resizes_to_the_teacher_map() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4)
    term = _fitnet(s, t)
    assert isinstance(term.adapter.proj, nn.Identity)
    adapted = term.adapter(s)
    assert adapted.shape == (2, 4, 4, 4)
    # bilinear 8 -> 4 without align_corners samples at the centre of each 2x2 block: their mean.
    torch.testing.assert_close(adapted, nn.functional.avg_pool2d(s, 2))
    torch.testing.assert_close(term({"feat:s": s}, {"feat:t": t}, {}), ((adapted - t) ** 2).mean())


@DTYPES
def test_fitnet_value_is_mse_after_projection(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)
    term = _fitnet(s, t).to(dtype)  # float64: the 1x1 conv too (.double() after setup, as for the inputs)
    s, t = s.to(dtype), t.to(dtype)
    weight = term.adapter.proj.weight.detach().double()[:, :, 0, 0]  # (C_t, C_s)
    projected = torch.einsum("ts,bshw->bthw", weight, s.double())  # (2, 5, 4, 4)
    # bilinear 4 -> 2 without align_corners samples the centre of each 2x2 block: their mean.
    resized = projected.reshape(2, 5, 2, 2, 2, 2).mean((3, 5))
    _close(term({"feat:s": s}, {"feat:t": t}, {}), ((resized - t.double()) ** 2).mean(), dtype)


def test_fitnet_before_setup_says_so() -> None:
    with pytest.raises(RuntimeError, match="before setup"):
        FitNet("s", "t")({"feat:s": torch.zeros(1, 2)}, {"feat:t": torch.zeros(1, 2)}, {})


def test_fitnet_missing_tap_names_taps_config() -> None:
    with pytest.raises(ConfigError, match=r"teacher's outputs have no 'feat:t'.*distill\.taps\.teacher"):
        FitNet("s", "t").setup({"feat:s": torch.zeros(1, 2)}, {"logits": torch.zeros(1, 2)})


# --- build_term -----------------------------------------------------------------------------------


def test_build_term_unknown_parameter_names_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        build_term("kd", {"temprature": 2.0})
    message = str(info.value)
    assert "'kd' has no parameter 'temprature'" in message
    assert "Did you mean 'temperature'" in message
    assert "Its parameters: temperature, student, teacher." in message


def test_build_term_unknown_parameter_of_fitnet() -> None:
    with pytest.raises(ConfigError, match="Its parameters: student, teacher."):
        build_term("fitnet", {"student": "a", "teacher": "b", "weight_decay": 1})


def test_build_term_missing_required_parameter() -> None:
    with pytest.raises(ConfigError, match="'fitnet' needs teacher"):
        build_term("fitnet", {"student": "a"})


def test_build_term_unknown_name_lists_terms() -> None:
    with pytest.raises(RegistryError, match=r"unknown distillation loss 'kdd'.*'kd'.*Available: .*fitnet"):
        build_term("kdd", {})


def test_build_term_passes_parameters() -> None:
    term = build_term("kd", {"temperature": 3})
    assert isinstance(term, HintonKD)
    assert term.temperature == 3.0


def test_pick_reads_outputs_taps_by_name_and_taps_by_key() -> None:
    from kdforge.distill.losses.base import pick

    x, y = torch.randn(2, 3), torch.randn(2, 4)
    outputs = {"logits": x, "feat:f": y}
    assert torch.equal(pick(outputs, "logits", "student"), x)
    assert torch.equal(pick(outputs, "f", "student"), y) and torch.equal(pick(outputs, "feat:f", "student"), y)
    with pytest.raises(ConfigError, match="no 'g'.*distill.taps.teacher"):
        pick(outputs, "g", "teacher")
