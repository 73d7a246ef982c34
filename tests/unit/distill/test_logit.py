"""DKD and DIST against hand-written float64 references, and their properties.

The terms read their inputs through ``pick``, which keeps float64 inputs in float64: fed float64, a value
must match the float64 reference to float64 rounding (``rtol=1e-9, atol=1e-12``, well inside the spec's
1e-6, which float32 math would also meet on these small tensors). Fed float32, they compute in float32
and match within ``rtol=1e-5, atol=1e-6`` (float32 rounding of sums over a few dozen terms).
"""

from __future__ import annotations

import math

import pytest
import torch

from kdforge.core.errors import ConfigError
from kdforge.distill.losses import build_term
from kdforge.distill.losses.logit import DIST, DKD, kd_divergence

TOL = {"rtol": 1e-5, "atol": 1e-6}  # float32 inputs
TOLS = {torch.float64: {"rtol": 1e-9, "atol": 1e-12}, torch.float32: TOL}
DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])


def _close(value: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert value.dtype == dtype and value.shape == ()
    torch.testing.assert_close(value.double(), expected, **TOLS[dtype])


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return [e / sum(exps) for e in exps]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def _dkd_by_hand(student, teacher, target, alpha, beta, temperature) -> torch.Tensor:
    """Mean over labelled samples of ``T^2 (alpha KL(b_t||b_s) + beta KL(q_t||q_s))``, without warm-up.

    ``b`` = [p(target), 1 - p(target)]; ``q`` = p over the non-target classes, renormalised (the
    target class dropped rather than masked by -1000 as the implementation does).
    """
    total, count = 0.0, 0
    for s_row, t_row, g in zip(student.tolist(), teacher.tolist(), target.tolist(), strict=True):
        if g < 0:
            continue
        p_s = _softmax([v / temperature for v in s_row])
        p_t = _softmax([v / temperature for v in t_row])
        tckd = _kl([p_t[g], 1 - p_t[g]], [p_s[g], 1 - p_s[g]])
        q_s = [p / (1 - p_s[g]) for c, p in enumerate(p_s) if c != g]
        q_t = [p / (1 - p_t[g]) for c, p in enumerate(p_t) if c != g]
        total += temperature**2 * (alpha * tckd + beta * _kl(q_t, q_s))
        count += 1
    return torch.tensor(total / max(count, 1), dtype=torch.float64)


def _pearson(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sx = math.sqrt(sum((a - mx) ** 2 for a in x))
    sy = math.sqrt(sum((b - my) ** 2 for b in y))
    return cov / (sx * sy + 1e-8)  # the authors' eps


def _dist_by_hand(student, teacher, beta, gamma, tau) -> torch.Tensor:
    """``tau^2 (beta (1 - mean row Pearson) + gamma (1 - mean column Pearson))`` of softmax(z / tau)."""
    y_s = [_softmax([v / tau for v in row]) for row in student.tolist()]
    y_t = [_softmax([v / tau for v in row]) for row in teacher.tolist()]
    inter = 1 - sum(_pearson(a, b) for a, b in zip(y_s, y_t, strict=True)) / len(y_s)
    columns = range(len(y_s[0]))
    intra = 1 - sum(_pearson([r[j] for r in y_s], [r[j] for r in y_t]) for j in columns) / len(columns)
    return torch.tensor(tau**2 * (beta * inter + gamma * intra), dtype=torch.float64)


def _logits(
    *shape: int, seed: int = 0, scale: float = 3.0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return tuple((torch.randn(*shape, generator=gen) * scale).to(dtype) for _ in range(2))


def _dkd(term: DKD, student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return term({"logits": student}, {"logits": teacher}, {"target": target})


# --- dkd ------------------------------------------------------------------------------------------


@DTYPES
@pytest.mark.parametrize(("alpha", "beta", "temperature"), [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 0.0, 2.5)])
def test_dkd_matches_hand_computation(alpha: float, beta: float, temperature: float, dtype: torch.dtype) -> None:
    student, teacher = _logits(6, 7, dtype=dtype)
    target = torch.tensor([0, 3, 6, 2, 2, 5])
    term = DKD(alpha=alpha, beta=beta, temperature=temperature, warmup=0)
    value = _dkd(term, student, teacher, target)
    _close(value, _dkd_by_hand(student, teacher, target, alpha, beta, temperature), dtype)


def _mdistiller_dkd_loss(logits_student, logits_teacher, target, alpha, beta, temperature):
    """mdistiller's ``dkd_loss`` (megvii-research/mdistiller, distillers/DKD.py), transcribed."""
    gt_mask = torch.zeros_like(logits_student).scatter_(1, target.unsqueeze(1), 1).bool()
    other_mask = ~gt_mask
    cat_mask = lambda t: torch.cat([(t * gt_mask).sum(1, keepdim=True), (t * other_mask).sum(1, keepdim=True)], 1)  # noqa: E731
    pred_student = cat_mask(torch.softmax(logits_student / temperature, dim=1))
    pred_teacher = cat_mask(torch.softmax(logits_teacher / temperature, dim=1))
    kl_sum = lambda log_p, q: torch.nn.functional.kl_div(log_p, q, reduction="sum")  # noqa: E731
    tckd = kl_sum(torch.log(pred_student), pred_teacher) * temperature**2 / target.shape[0]
    pred_teacher_part2 = torch.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = torch.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd = kl_sum(log_pred_student_part2, pred_teacher_part2) * temperature**2 / target.shape[0]
    return alpha * tckd + beta * nckd


@DTYPES
def test_dkd_matches_the_authors_code_with_its_warmup(dtype: torch.dtype) -> None:
    student, teacher = _logits(8, 10, seed=5, dtype=dtype)
    target = torch.tensor([0, 9, 3, 3, 7, 1, 2, 5])
    term = DKD(warmup=20)
    term.set_epoch(4)  # mdistiller's epoch 5 (1-based): factor 5 / 20
    expected = 5 / 20 * _mdistiller_dkd_loss(student.double(), teacher.double(), target, 1.0, 8.0, 4.0)
    _close(_dkd(term, student, teacher, target), expected, dtype)


def test_dkd_defaults_are_mdistillers_cifar_config() -> None:
    term = build_term("dkd", {})
    assert (term.alpha, term.beta, term.temperature, term.warmup) == (1.0, 8.0, 4.0, 20)


def test_dkd_reassembles_kd_as_the_paper_decomposes_it() -> None:
    # Zhao et al., Eq. 7: KD = TCKD + (1 - p_t(target)) * NCKD, per sample.
    student, teacher = _logits(1, 6, seed=3)
    target, temperature = torch.tensor([4]), 2.0
    p_t_target = torch.softmax(teacher / temperature, dim=1)[0, 4].item()
    term = DKD(alpha=1.0, beta=1 - p_t_target, temperature=temperature, warmup=0)
    torch.testing.assert_close(_dkd(term, student, teacher, target), kd_divergence(student, teacher, temperature))


def test_dkd_is_zero_when_student_equals_teacher_and_positive_otherwise() -> None:
    student, teacher = _logits(5, 6)
    target = torch.tensor([1, 0, 5, 2, 3])
    assert _dkd(DKD(warmup=0), student, student.clone(), target) == 0  # both KLs compare log-probabilities
    assert _dkd(DKD(warmup=0), student, teacher, target) > 0


@pytest.mark.parametrize(("epoch", "factor"), [(0, 1 / 4), (1, 2 / 4), (2, 3 / 4), (3, 1.0), (10, 1.0)])
def test_dkd_warmup_follows_set_epoch(epoch: int, factor: float) -> None:
    student, teacher = _logits(4, 5)
    target = torch.tensor([0, 1, 2, 3])
    full = _dkd(DKD(warmup=0), student, teacher, target)
    term = DKD(warmup=4)
    term.set_epoch(epoch)
    assert term.warmup_factor() == pytest.approx(factor)
    torch.testing.assert_close(_dkd(term, student, teacher, target), factor * full)


def test_dkd_before_any_set_epoch_uses_the_first_epochs_factor() -> None:
    assert DKD(warmup=20).warmup_factor() == pytest.approx(1 / 20)


@DTYPES
def test_dkd_ignores_unlabelled_samples(dtype: torch.dtype) -> None:
    student, teacher = _logits(6, 5, seed=1, dtype=dtype)
    student.requires_grad_()
    target = torch.tensor([2, -1, 0, -1, 4, 1])
    value = _dkd(DKD(warmup=0), student, teacher, target)
    labelled = target >= 0
    _close(value, _dkd_by_hand(student, teacher, target, 1.0, 8.0, 4.0), dtype)
    only_labelled = _dkd(DKD(warmup=0), student[labelled], teacher[labelled], target[labelled])
    torch.testing.assert_close(value, only_labelled)  # averaged over the 4 labelled samples, not 6
    value.backward()
    assert torch.all(student.grad[~labelled] == 0)
    assert torch.all(student.grad[labelled].abs().sum(1) > 0)


def test_dkd_without_labelled_samples_is_zero_in_the_graph() -> None:
    student, teacher = _logits(3, 5)
    student.requires_grad_()
    value = _dkd(DKD(warmup=0), student, teacher, torch.full((3,), -1))
    assert value == 0 and value.requires_grad
    value.backward()
    assert torch.all(student.grad == 0)


def test_dkd_stays_finite_when_a_probability_underflows() -> None:
    # p_s(target) = exp(-1000 / 4) underflows in float32; log-space keeps TCKD finite (log(0) would not).
    student = torch.tensor([[-1000.0, 0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[2.0, 0.0, 1.0]])
    value = _dkd(DKD(warmup=0), student, teacher, torch.tensor([0]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(student.grad).all()


def test_dkd_without_targets_says_what_it_needs() -> None:
    logits = torch.zeros(2, 3)
    with pytest.raises(ConfigError, match=r"dkd needs the ground-truth labels in batch\['target'\]"):
        DKD()({"logits": logits}, {"logits": logits}, {"input": logits})


def test_dkd_rejects_dense_logits() -> None:
    logits = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"dkd needs \(B, C\) logits and \(B,\) targets"):
        DKD()({"logits": logits}, {"logits": logits}, {"target": torch.zeros(2, 4, 4)})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"temperature": 0.0}, "dkd temperature must be > 0"),
        ({"temperature": -2.0}, "dkd temperature must be > 0"),
        ({"alpha": -1.0}, "dkd alpha and beta must be >= 0"),
        ({"beta": -0.5}, "dkd alpha and beta must be >= 0"),
        ({"warmup": -1}, "dkd warmup must be >= 0"),
    ],
)
def test_dkd_rejects_bad_parameters(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_term("dkd", params)


# --- dist -----------------------------------------------------------------------------------------


@DTYPES
@pytest.mark.parametrize(("beta", "gamma", "tau"), [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0), (0.0, 1.0, 2.0)])
def test_dist_matches_hand_computation(beta: float, gamma: float, tau: float, dtype: torch.dtype) -> None:
    student, teacher = _logits(6, 7, dtype=dtype)
    value = DIST(beta=beta, gamma=gamma, temperature=tau)({"logits": student}, {"logits": teacher}, {})
    _close(value, _dist_by_hand(student, teacher, beta, gamma, tau), dtype)


def test_dist_defaults_are_the_authors() -> None:
    term = build_term("dist", {})
    assert (term.beta, term.gamma, term.temperature) == (1.0, 1.0, 1.0)


@DTYPES
def test_dist_dense_logits_count_every_position_as_a_row(dtype: torch.dtype) -> None:
    student, teacher = _logits(2, 3, 4, 5, scale=1.0, dtype=dtype)  # (B, C, H, W)
    value = DIST(temperature=2.0)({"logits": student}, {"logits": teacher}, {})
    rows = lambda z: z.permute(0, 2, 3, 1).reshape(-1, 3)  # noqa: E731  (B*H*W, C)
    _close(value, _dist_by_hand(rows(student), rows(teacher), 1.0, 1.0, 2.0), dtype)


def test_dist_is_zero_when_student_equals_teacher_and_positive_otherwise() -> None:
    # Zero up to the eps of 1e-8 in the Pearson denominator (rows and columns here are not constant).
    student, teacher = _logits(5, 6, scale=1.0)
    term = DIST()
    assert term({"logits": student}, {"logits": student.clone()}, {}).abs() < 1e-5
    assert term({"logits": student}, {"logits": teacher}, {}) > 0.1


def test_dist_is_symmetric_and_invariant_to_shifts_and_consistent_permutations() -> None:
    student, teacher = _logits(5, 6, scale=1.0)
    term = DIST(beta=1.0, gamma=2.0, temperature=2.0)
    value = term({"logits": student}, {"logits": teacher}, {})
    # Pearson is symmetric, so swapping the roles keeps the value.
    torch.testing.assert_close(term({"logits": teacher}, {"logits": student}, {}), value)
    # softmax ignores a per-row constant added to the logits.
    shift = torch.randn(5, 1, generator=torch.Generator().manual_seed(7)) * 10
    torch.testing.assert_close(term({"logits": student + shift}, {"logits": teacher - shift}, {}), value)
    # Means over rows and over classes do not depend on their order.
    rows, classes = torch.randperm(5), torch.randperm(6)
    permuted = lambda z: z[rows][:, classes]  # noqa: E731
    torch.testing.assert_close(term({"logits": permuted(student)}, {"logits": permuted(teacher)}, {}), value)


def test_dist_with_one_row_has_a_constant_intra_class_part() -> None:
    student, teacher = _logits(1, 6)
    value = DIST(beta=0.0, gamma=1.0)({"logits": student}, {"logits": teacher}, {})
    torch.testing.assert_close(value, torch.tensor(1.0))  # every column is constant: Pearson 0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"temperature": 0.0}, "dist temperature must be > 0"),
        ({"temperature": -1.0}, "dist temperature must be > 0"),
        ({"beta": -1.0}, "dist beta and gamma must be >= 0"),
        ({"gamma": -1.0}, "dist beta and gamma must be >= 0"),
    ],
)
def test_dist_rejects_bad_parameters(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_term("dist", params)
