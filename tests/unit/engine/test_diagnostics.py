"""Training diagnostics: gradient shares against hand computations, teacher agreement and KL, and the
Diagnosis warnings on synthetic log sequences."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdforge.engine.diagnostics import Diagnosis, gradient_shares, teacher_agreement

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


# ---------------------------------------------------------------- gradient_shares
def _linear(device: str) -> nn.Linear:
    """Weight [1, 2, 3], bias [4]."""
    model = nn.Linear(3, 1).to(device)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
        model.bias.fill_(4.0)
    return model


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_shares_match_hand_computation(device: str) -> None:
    model, a, b = _linear(device), 2.0, 0.5
    w, bias = model.weight, model.bias
    parts = {"a": a * (w.sum() + bias.sum()), "b": b * (w**2).sum()}
    values = gradient_shares(parts, list(model.parameters()))
    # g_a = (w: [2, 2, 2], bias: [2]); g_b = (w: 2 b w = [1, 2, 3], bias: 0); g_total = ([3, 4, 5], [2])
    total_sq = 9 + 16 + 25 + 4
    expected = {
        "grad_norm/a": 4.0,
        "grad_norm/b": math.sqrt(14),
        "grad_share/a": (6 + 8 + 10 + 4) / total_sq,
        "grad_share/b": (3 + 8 + 15) / total_sq,
    }
    assert values.keys() == expected.keys()
    for key, value in expected.items():
        assert values[key] == pytest.approx(value, rel=1e-6), key
    assert values["grad_share/a"] + values["grad_share/b"] == pytest.approx(1.0)


@pytest.mark.parametrize("device", DEVICES)
def test_parts_reaching_no_parameter_count_as_zero(device: str) -> None:
    model = _linear(device)
    outside = nn.Parameter(torch.ones(2, device=device))  # not among the parameters passed
    parts = {
        "a": 2.0 * model.weight.sum(),
        "outside": 5.0 * outside.sum(),
        "constant": torch.tensor(3.0, device=device),
    }
    values = gradient_shares(parts, list(model.parameters()))
    assert values["grad_norm/a"] == pytest.approx(2 * math.sqrt(3))
    assert values["grad_share/a"] == pytest.approx(1.0)
    for name in ("outside", "constant"):
        assert values[f"grad_norm/{name}"] == 0.0
        assert values[f"grad_share/{name}"] == 0.0


def test_a_part_pulling_against_the_others_has_a_negative_share() -> None:
    model = _linear("cpu")
    pull = model.weight.sum()
    values = gradient_shares({"push": 3 * pull, "pull": -pull}, [model.weight])
    # g_total = 2 g: shares 3/2 and -1/2
    assert values["grad_share/push"] == pytest.approx(1.5)
    assert values["grad_share/pull"] == pytest.approx(-0.5)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_still_works_and_grads_are_untouched(device: str) -> None:
    model = _linear(device)
    w, bias = model.weight, model.bias
    parts = {"a": 2.0 * (w.sum() + bias.sum()), "b": 0.5 * (w**2).sum()}
    gradient_shares(parts, list(model.parameters()))
    assert w.grad is None and bias.grad is None
    (parts["a"] + parts["b"]).backward()
    torch.testing.assert_close(w.grad.cpu(), torch.tensor([[3.0, 4.0, 5.0]]))
    torch.testing.assert_close(bias.grad.cpu(), torch.tensor([2.0]))


def test_parts_whose_gradients_cancel_have_zero_shares() -> None:
    model = _linear("cpu")
    values = gradient_shares({"a": model.weight.sum(), "b": -model.weight.sum()}, [model.weight])
    assert values["grad_share/a"] == values["grad_share/b"] == 0.0
    assert values["grad_norm/a"] == pytest.approx(math.sqrt(3))


# ---------------------------------------------------------------- teacher_agreement
class _Echo(nn.Module):
    """Returns its input (B, C) as logits, shifted by `bias`; records the mode it ran in."""

    def __init__(self, bias: list[float] | None = None, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("bias", torch.tensor(bias or [0.0]))
        self.scale = scale
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.modes.append(self.training)
        return {"logits": self.scale * x + self.bias}


class _Wrap(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x)}


def _batches(rows: list[list[float]], sizes: list[int]) -> list[dict[str, torch.Tensor]]:
    return [{"input": chunk} for chunk in torch.tensor(rows).split(sizes)]


@pytest.mark.parametrize("device", DEVICES)
def test_identical_models_agree_fully_with_zero_kl(device: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.5)).to(device)  # dropout: eval mode matters
    model = _Wrap(net)
    loader = [{"input": torch.randn(6, 4)} for _ in range(3)]
    values = teacher_agreement(model, model, loader, torch.device(device))
    assert values["val/agreement"] == pytest.approx(100.0)
    assert values["val/teacher_kl"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_fixed_class_student_agrees_where_the_teacher_picks_that_class(device: str) -> None:
    teacher = _Echo().to(device)
    student = _Echo([9.0, 0.0, 0.0], scale=0.0).to(device)  # always class 0
    rows = [[3, 1, 0], [0, 2, 1], [5, 0, 0], [0, 0, 4], [1, 0, 0]]  # teacher's top-1: 0, 1, 0, 2, 0
    values = teacher_agreement(student, teacher, _batches(rows, [3, 2]), torch.device(device))
    assert values["val/agreement"] == pytest.approx(60.0)


def test_teacher_kl_matches_hand_computation() -> None:
    teacher, student = _Echo(), _Echo(scale=0.0)  # the student is uniform over 2 classes
    rows = [[math.log(3), 0.0], [0.0, 0.0]]  # teacher: p = [0.75, 0.25], then uniform
    values = teacher_agreement(student, teacher, _batches(rows, [1, 1]), torch.device("cpu"))
    by_hand = (0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5) + 0.0) / 2
    assert values["val/teacher_kl"] == pytest.approx(by_hand, rel=1e-5)


def test_modes_are_eval_inside_and_restored_after() -> None:
    student, teacher = _Echo().train(), _Echo().eval()
    teacher_agreement(student, teacher, _batches([[1.0, 0.0]], [1]), torch.device("cpu"))
    assert student.modes == [False] and teacher.modes == [False]
    assert student.training and not teacher.training


# ---------------------------------------------------------------- Diagnosis
def _train(kd: float | None = 1.0, task: float | None = 2.0, kd_share: float | None = None) -> dict[str, float]:
    values = {"loss": 3.0, "lr": 0.1}
    if task is not None:
        values["loss/task"] = task
    if kd is not None:
        values["loss/kd"] = kd
    if kd_share is not None:
        values |= {"grad_share/kd": kd_share, "grad_share/task": 1 - kd_share}
    return values


def _run(diagnosis: Diagnosis, epochs: list[tuple[list[dict[str, float]], float | None]]) -> list[tuple[int, str]]:
    """Feed (train records, fitness) per epoch; returns (epoch, warning) for every warning given."""
    warnings = []
    for epoch, (records, fitness) in enumerate(epochs):
        for record in records:
            warnings += [(epoch, text) for text in diagnosis.train_record(record)]
        metrics = {"val/acc1": 0.0} if fitness is None else {"val/acc1": fitness, "fitness": fitness}
        warnings += [(epoch, text) for text in diagnosis.val_record(metrics)]
    return warnings


def test_dominant_term_with_stalled_fitness_warns_once_until_it_clears() -> None:
    dominant = [_train(kd_share=0.95)] * 2
    first = [(dominant, 50.0)] + [(dominant, 49.0)] * 5  # best at epoch 0, then 5 evaluations without gain
    second = [(dominant, 51.0)] + [(dominant, 50.0)] * 5
    warnings = _run(Diagnosis(dominant_share=0.8, patience=3), first + second)
    # Stalled for 3 evaluations at epochs 3 and 9; the improvement at epoch 6 clears the condition.
    assert [epoch for epoch, _ in warnings] == [3, 9]
    text = warnings[0][1]
    assert "'kd'" in text and "share 0.95" in text and "6 diagnostics" in text
    assert "3 evaluations" in text and "distill.task_weight" in text


def test_dominant_warning_returns_after_the_share_drops_and_rises_again() -> None:
    diagnosis = Diagnosis(dominant_share=0.8, patience=1)
    assert diagnosis.val_record({"fitness": 1.0}) == []
    assert diagnosis.train_record(_train(kd_share=0.9)) == []  # not stalled yet
    assert len(diagnosis.val_record({"fitness": 1.0})) == 1  # stalled: mean share 0.9
    assert diagnosis.train_record(_train(kd_share=0.9)) == []  # still true: not repeated
    assert diagnosis.train_record(_train(kd_share=0.0)) == []  # mean 0.6: false
    given = [diagnosis.train_record(_train(kd_share=1.0)) for _ in range(4)]  # means 0.7, 0.76, 0.8, 0.83
    assert [len(w) for w in given] == [0, 0, 0, 1]


def test_distillation_falling_while_task_stays_flat_warns() -> None:
    kd_means = [1.0, 0.8, 0.6, 0.5, 0.5]
    epochs = [([_train(kd=kd, task=2.0), _train(kd=kd, task=2.0)], 50.0) for kd in kd_means]  # fitness stalls
    warnings = _run(Diagnosis(patience=3, min_drop=0.05), epochs)
    assert [epoch for epoch, _ in warnings] == [3]  # 4 periods needed; still true at epoch 4, not repeated
    assert "fell by 50% over the last 3 evaluations" in warnings[0][1]
    assert "(+0.0%)" in warnings[0][1]


def test_distillation_falling_with_the_task_loss_is_healthy() -> None:
    epochs = [([_train(kd=1.0 - 0.1 * i, task=2.0 - 0.2 * i, kd_share=0.5)] * 3, 50.0 + i) for i in range(8)]
    assert _run(Diagnosis(), epochs) == []


def test_dominant_share_with_improving_fitness_is_healthy() -> None:
    epochs = [([_train(kd_share=0.95)] * 2, 50.0 + i) for i in range(8)]
    assert _run(Diagnosis(), epochs) == []


def test_supervised_and_task_weight_zero_runs_give_no_warning() -> None:
    supervised = [([_train(kd=None, task=2.0, kd_share=None) | {"grad_share/task": 1.0}], 50.0) for _ in range(8)]
    assert _run(Diagnosis(), supervised) == []  # the task's own share is never "dominant"
    kd_only = [([_train(kd=1.0 - 0.1 * i, task=None)], 50.0) for i in range(8)]
    assert _run(Diagnosis(), kd_only) == []
    no_fitness = [([_train(kd=1.0, kd_share=0.99)], None) for _ in range(8)]
    assert _run(Diagnosis(), no_fitness) == []


def test_a_term_switched_off_by_the_schedule_is_no_drop() -> None:
    epochs = [([_train(kd=1.0 if i < 2 else None, task=2.0)], 50.0 + i) for i in range(6)]
    assert _run(Diagnosis(patience=3), epochs) == []


def test_patience_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="patience"):
        Diagnosis(patience=0)


def test_a_run_logs_gradient_shares_every_n_steps_and_teacher_agreement_per_evaluation(make_config):
    import json

    from kdforge.app.pipeline import train

    result = train(make_config(log={"progress": False, "loggers": [], "diagnostics_every_steps": 2}))
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    shares = [r for r in records if r["kind"] == "diagnostics" and "grad_share/kd" in r]
    assert [r["step"] for r in shares] == [2, 4, 6, 8, 10, 12]  # 2 epochs x 6 steps
    for record in shares:
        assert record["grad_share/task"] + record["grad_share/kd"] == pytest.approx(1.0, abs=1e-5)
        assert record["grad_norm/task"] > 0 and record["grad_norm/kd"] > 0
    agreement = [r for r in records if r["kind"] == "diagnostics" and "val/agreement" in r]
    assert [r["epoch"] for r in agreement] == [1, 2]
    assert all(0 <= r["val/agreement"] <= 100 and r["val/teacher_kl"] >= 0 for r in agreement)


def test_a_flat_task_loss_is_no_warning_while_fitness_still_improves() -> None:
    """Few labels: the task loss barely moves while distillation improves the val metric; that is no alarm."""
    kd_means = [1.0, 0.8, 0.6, 0.5, 0.5]
    epochs = [([_train(kd=kd, task=2.0), _train(kd=kd, task=2.0)], 50.0 + i) for i, kd in enumerate(kd_means)]
    assert _run(Diagnosis(patience=3, min_drop=0.05), epochs) == []
