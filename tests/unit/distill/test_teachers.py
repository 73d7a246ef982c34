"""Several named teachers: terms pick one, or read the ensemble of several."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kdforge.app.api import load_config
from kdforge.app.pipeline import train
from kdforge.core.errors import ConfigError
from kdforge.distill.distiller import Distiller, WeightedTerm, ensemble_outputs
from kdforge.distill.losses import build_term
from kdforge.tasks.classification import labelled_cross_entropy


def test_ensemble_softened_at_t_is_the_mean_of_softened_probabilities():
    torch.manual_seed(0)
    a, b = torch.randn(4, 6), torch.randn(4, 6) * 3
    merged = ensemble_outputs([{"logits": a, "feat:f": a}, {"logits": b, "feat:f": b}], temperature=2.0)
    expected = ((a / 2).softmax(1) + (b / 2).softmax(1)) / 2
    torch.testing.assert_close((merged["logits"] / 2).softmax(1), expected)
    torch.testing.assert_close(merged["feat:f"], (a + b) / 2)


def test_ensemble_drops_taps_whose_shapes_differ():
    merged = ensemble_outputs(
        [
            {"logits": torch.zeros(2, 3), "feat:f": torch.zeros(2, 4)},
            {"logits": torch.zeros(2, 3), "feat:f": torch.zeros(2, 5)},
        ]
    )
    assert set(merged) == {"logits"}


class _Counting(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale, self.calls = scale, 0
        self.linear = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        return {"logits": self.linear(x) * self.scale}


class _Task:
    def loss(self, outputs, batch):
        return labelled_cross_entropy(outputs["logits"], batch["target"])


def test_terms_read_their_teacher_or_the_ensemble_and_unused_teachers_are_not_run():
    torch.manual_seed(0)
    a, b, c = _Counting(1.0), _Counting(2.0), _Counting(3.0)
    terms = [
        WeightedTerm("kd_ab", 1.0, build_term("kd", {"temperature": 2.0}), ("a", "b")),
        WeightedTerm("kd_b", 1.0, build_term("kd", {"temperature": 2.0}), ("b",)),
    ]
    distiller = Distiller(_Counting(1.0), {"a": a, "b": b, "c": c}, _Task(), terms, task_weight=0.0)
    distiller.train()
    batch = {"input": torch.randn(5, 3), "target": torch.zeros(5, dtype=torch.long)}
    out = distiller(batch)
    assert set(out["teachers"]) == {"a", "b"} and (a.calls, b.calls, c.calls) == (1, 1, 0)
    student = out["student"]["logits"]
    ensemble = ensemble_outputs([out["teachers"]["a"], out["teachers"]["b"]], 2.0)
    kd = build_term("kd", {"temperature": 2.0})
    torch.testing.assert_close(out["parts"]["kd_ab"], kd({"logits": student}, ensemble, {}))
    torch.testing.assert_close(out["parts"]["kd_b"], kd({"logits": student}, out["teachers"]["b"], {}))
    assert all(not p.requires_grad for t in (a, b, c) for p in t.parameters())


def _raw(**extra):
    cnn = {"source": "import", "name": "kdforge.models.zoo:cnn"}
    return {"student": cnn, "teachers": {"big": cnn, "wide": cnn}, **extra}


def test_a_term_naming_an_unknown_teacher_is_named():
    raw = _raw(distill={"terms": [{"loss": "kd", "teachers": ["big", "wdie"]}]})
    with pytest.raises(ConfigError, match="reads teacher 'wdie'.*Did you mean 'wide'"):
        load_config(base=raw)


def test_teacher_and_teachers_together_are_refused():
    with pytest.raises(ConfigError, match="either teacher .* or teachers"):
        load_config(base=_raw(teacher={"name": "resnet18"}))


def test_two_teachers_train_end_to_end_and_are_both_reported(make_config):
    big = {
        "source": "import",
        "name": "kdforge.models.zoo:cnn",
        "kwargs": {"in_chans": 1, "widths": [16, 32]},
        "taps": {"f": "stages.1"},
    }
    wide = {**big, "kwargs": {"in_chans": 1, "widths": [24, 24]}}
    config = make_config(
        teacher=None,
        teachers={"big": big, "wide": wide},
        distill={
            "terms": [
                {"loss": "kd", "weight": 0.5, "teachers": ["big", "wide"]},
                {"loss": "fitnet", "weight": 0.1, "student": "f", "teacher": "f", "teachers": "wide"},
            ],
            "taps": {"student": {"f": "stages.1"}},
        },
        train={"epochs": 1, "max_steps_per_epoch": 3},
    )
    result = train(config)
    assert [t["teacher"] for t in result.summary["teachers"]] == ["big", "wide"]
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["teacher"] for r in records if r["kind"] == "teacher"] == ["big", "wide"]
    last_train = [r for r in records if r["kind"] == "train"][-1]
    assert {"loss/kd", "loss/fitnet"} <= set(last_train)


def test_only_logit_terms_read_an_ensemble_and_named_teachers_take_their_own_taps():
    with pytest.raises(ConfigError, match="'fitnet' cannot read an ensemble"):
        load_config(
            base=_raw(
                distill={"terms": [{"loss": "fitnet", "student": "f", "teacher": "f", "teachers": ["big", "wide"]}]}
            )
        )
    with pytest.raises(ConfigError, match="taps: \\{tap_name: module.path\\}"):
        load_config(base=_raw(distill={"taps": {"teacher": {"f": "stages.1"}}}))
