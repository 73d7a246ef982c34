"""Distiller: loss composition, a teacher that never trains, unlabelled samples, and the input adapter."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from kdforge.distill.adapters import InputAdapter
from kdforge.distill.distiller import Distiller, WeightedTerm
from kdforge.distill.losses import build_term
from kdforge.distill.losses.logit import kd_divergence
from kdforge.models.taps import TappedModel
from kdforge.models.zoo import cnn
from kdforge.tasks.classification import labelled_cross_entropy

CLASSES = 4


class CrossEntropyTask:
    """The minimal task the Distiller needs: ``loss(outputs, batch)``."""

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        return labelled_cross_entropy(outputs["logits"], batch["target"])


def _model(seed: int, widths: tuple[int, ...], taps: dict[str, str] | None = None) -> TappedModel:
    torch.manual_seed(seed)
    return TappedModel(cnn(num_classes=CLASSES, widths=widths, dropout=0.0), taps)


def _distiller(
    task_weight: float = 0.4, kd_weight: float = 0.6, fitnet_weight: float | None = None, **kwargs: Any
) -> Distiller:
    student = _model(0, (4, 6), {"f": "stages.1"})
    teacher = _model(1, (8, 12), {"f": "stages.1"})
    terms = [WeightedTerm("kd", kd_weight, build_term("kd", {"temperature": 2.0}))]
    if fitnet_weight is not None:
        terms.append(WeightedTerm("fitnet", fitnet_weight, build_term("fitnet", {"student": "f", "teacher": "f"})))
    return Distiller(student, teacher, CrossEntropyTask(), terms, task_weight=task_weight, **kwargs)


def _batch(n: int = 6, seed: int = 2, size: int = 8, target: list[int] | None = None) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    labels = torch.tensor(target) if target is not None else torch.arange(n) % CLASSES
    return {"input": torch.randn(len(labels), 3, size, size), "target": labels}


def _ready(**kwargs: Any) -> tuple[Distiller, dict[str, torch.Tensor]]:
    distiller, batch = _distiller(**kwargs), _batch()
    distiller.setup(batch)
    return distiller.train(), batch


# --- what forward returns -------------------------------------------------------------------------


def test_train_mode_returns_loss_parts_and_both_outputs() -> None:
    distiller, batch = _ready()
    out = distiller(batch)
    assert set(out) == {"loss", "parts", "student", "teacher", "teachers"}
    assert set(out["parts"]) == {"task", "kd"}
    assert out["loss"].shape == () and out["loss"].dtype == torch.float32
    assert out["student"]["logits"].shape == (6, CLASSES)
    assert out["teacher"]["logits"].shape == (6, CLASSES)
    assert out["teacher"]["feat:f"].shape == (6, 12, 4, 4)


def test_total_is_weighted_sum_of_parts() -> None:
    distiller, batch = _ready(task_weight=0.3, kd_weight=0.7, fitnet_weight=2.5)
    out = distiller(batch)
    parts = out["parts"]
    assert set(parts) == {"task", "kd", "fitnet"}
    expected = 0.3 * parts["task"] + 0.7 * parts["kd"] + 2.5 * parts["fitnet"]
    torch.testing.assert_close(out["loss"], expected)


def test_parts_are_the_task_loss_and_the_kd_term() -> None:
    distiller, batch = _ready()
    out = distiller(batch)
    student, teacher = out["student"]["logits"], out["teacher"]["logits"]
    torch.testing.assert_close(out["parts"]["task"], F.cross_entropy(student, batch["target"]))
    torch.testing.assert_close(out["parts"]["kd"], kd_divergence(student, teacher, 2.0))
    with torch.no_grad():
        torch.testing.assert_close(teacher, distiller.teacher(batch["input"])["logits"])


def test_zero_task_weight_drops_the_task_part() -> None:
    distiller, batch = _ready(task_weight=0.0)
    out = distiller(batch)
    assert set(out["parts"]) == {"kd"}
    torch.testing.assert_close(out["loss"], 0.6 * out["parts"]["kd"])


def test_eval_mode_returns_only_student_outputs() -> None:
    distiller, batch = _ready()
    distiller.eval()
    out = distiller(batch)
    assert set(out) == {"logits", "feat:f"}
    assert "loss" not in out
    torch.testing.assert_close(out["logits"], distiller.student(batch["input"])["logits"])


def test_no_teacher_is_plain_supervised_training() -> None:
    distiller = Distiller(_model(0, (4, 6)), None, CrossEntropyTask())
    batch = _batch()
    out = distiller.train()(batch)
    assert set(out["parts"]) == {"task"}
    assert out["teacher"] == {}
    torch.testing.assert_close(out["loss"], F.cross_entropy(out["student"]["logits"], batch["target"]))


def test_terms_without_teacher_are_refused() -> None:
    term = WeightedTerm("kd", 1.0, build_term("kd", {}))
    with pytest.raises(ValueError, match="need a teacher"):
        Distiller(_model(0, (4,)), None, CrossEntropyTask(), [term])


def test_teacher_is_frozen_and_stays_in_eval_mode() -> None:
    distiller = _distiller()
    assert all(not p.requires_grad for p in distiller.teacher.parameters())
    distiller.train()
    assert distiller.training and distiller.student.training
    assert not distiller.teacher.training
    assert not any(m.training for m in distiller.teacher.modules())
    distiller.train(True)
    assert not distiller.teacher.training


def test_setup_restores_the_training_mode() -> None:
    distiller = _distiller().train()
    distiller.setup(_batch())
    assert distiller.training and distiller.student.training and not distiller.teacher.training
    distiller.eval()
    distiller.setup(_batch())
    assert not distiller.training


def test_backward_reaches_every_student_param_and_no_teacher_param() -> None:
    distiller, batch = _ready(fitnet_weight=1.0)
    distiller(batch)["loss"].backward()
    for name, param in distiller.teacher.named_parameters():
        assert param.grad is None, f"teacher {name} got a gradient"
    for name, param in distiller.student.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), f"student {name} got no gradient"
        assert param.grad.abs().sum() > 0, f"student {name} got a zero gradient"
    adapter = distiller.terms[1].adapter.proj.weight  # fitnet's 1x1 conv, 6 -> 12 channels
    assert adapter.grad is not None and adapter.grad.abs().sum() > 0


def test_trainable_parameters_are_student_and_adapters() -> None:
    distiller, _ = _ready(fitnet_weight=1.0)
    trainable = {id(p) for p in distiller.trainable_parameters()}
    expected = {id(p) for p in distiller.student.parameters()} | {id(p) for p in distiller.terms.parameters()}
    assert trainable == expected
    assert not trainable & {id(p) for p in distiller.teacher.parameters()}


def test_teacher_weights_and_buffers_unchanged_by_training_steps() -> None:
    distiller, batch = _ready(fitnet_weight=1.0)
    before = {k: v.clone() for k, v in distiller.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in distiller.student.state_dict().items()}
    optimizer = torch.optim.AdamW(distiller.trainable_parameters(), lr=0.05, weight_decay=0.1)
    for step in range(3):
        optimizer.zero_grad()
        distiller(_batch(seed=10 + step))["loss"].backward()
        optimizer.step()
    after = distiller.teacher.state_dict()
    for key, value in before.items():  # weights and BN running statistics alike
        assert torch.equal(after[key], value), f"teacher {key} changed"
    changed = [k for k, v in distiller.student.state_dict().items() if not torch.equal(v, student_before[k])]
    assert "model.head.weight" in changed and "model.stages.0.1.running_mean" in changed


def test_teacher_runs_under_inference_mode() -> None:
    distiller, batch = _ready()
    seen: list[tuple[str, bool]] = []
    distiller.teacher.register_forward_pre_hook(lambda *_: seen.append(("teacher", torch.is_inference_mode_enabled())))
    distiller.student.register_forward_pre_hook(lambda *_: seen.append(("student", torch.is_inference_mode_enabled())))
    out = distiller(batch)
    assert seen == [("teacher", True), ("student", False)]  # teachers first, outside the objective DDP wraps
    # Outputs are cloned out of inference mode so the terms may save them for backward.
    assert not any(v.is_inference() for v in out["teacher"].values())
    out["loss"].backward()


# --- unlabelled samples ---------------------------------------------------------------------------


def test_unlabelled_samples_get_only_the_distillation_term() -> None:
    distiller, _ = _ready()
    batch = _batch(target=[2, -1, 0, -1, -1, 3])
    out = distiller(batch)
    logits = out["student"]["logits"]
    labelled = batch["target"] != -1
    torch.testing.assert_close(out["parts"]["task"], F.cross_entropy(logits[labelled], batch["target"][labelled]))
    torch.testing.assert_close(out["parts"]["kd"], kd_divergence(logits, out["teacher"]["logits"], 2.0))


def test_unlabelled_sample_gradient_comes_from_kd_only() -> None:
    distiller, _ = _ready(kd_weight=0.0)
    batch = _batch(target=[1, -1, 2])
    out = distiller(batch)
    logits = out["student"]["logits"]
    (grad,) = torch.autograd.grad(out["loss"], logits)
    assert grad[1].abs().sum() == 0  # with kd off, the unlabelled row gets nothing
    assert grad[0].abs().sum() > 0 and grad[2].abs().sum() > 0


def test_all_unlabelled_batch_has_zero_task_loss_and_finite_total() -> None:
    distiller, _ = _ready()
    batch = _batch(target=[-1, -1, -1, -1])
    out = distiller(batch)
    assert out["parts"]["task"].item() == 0.0
    assert torch.isfinite(out["loss"])
    torch.testing.assert_close(out["loss"], 0.6 * out["parts"]["kd"])
    out["loss"].backward()
    assert distiller.student.model.head.weight.grad.abs().sum() > 0  # kd still trains the student


# --- the teacher's input adapter ------------------------------------------------------------------


def test_distiller_feeds_the_teacher_through_its_input_adapter() -> None:
    adapter = InputAdapter((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (0.4, 0.4, 0.4), (0.5, 0.5, 0.5), size=16)
    distiller, batch = _ready(teacher_input=adapter)
    seen: list[tuple[int, ...]] = []
    distiller.teacher.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    out = distiller(batch)
    assert seen == [(6, 3, 16, 16)]
    assert out["teacher"]["feat:f"].shape == (6, 12, 8, 8)  # the teacher saw 16x16 inputs
    assert out["student"]["feat:f"].shape == (6, 6, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(out["teacher"]["logits"], distiller.teacher(adapter(batch["input"]))["logits"])


def test_a_term_that_does_not_fit_the_models_is_named_at_setup() -> None:
    from kdforge.core.errors import ConfigError

    torch.manual_seed(0)
    student = TappedModel(cnn(num_classes=CLASSES, in_chans=3, widths=[4, 8]), {"p": "pool"})
    teacher = TappedModel(cnn(num_classes=CLASSES, in_chans=3, widths=[6, 12]))
    term = WeightedTerm("kd_on_pool", 1.0, build_term("kd", {"student": "feat:p"}))  # (B, 8) vs (B, 4) logits
    distiller = Distiller(student, teacher, CrossEntropyTask(), [term])
    with pytest.raises(ConfigError, match="'kd_on_pool' does not fit the models"):
        distiller.setup({"input": torch.randn(2, 3, 8, 8), "target": torch.zeros(2, dtype=torch.long)})
