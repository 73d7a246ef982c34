"""Phases and scheduled values: pure functions of the epoch, and their effect on a real run."""

from __future__ import annotations

import json
import math

import pytest

from kdforge.app.pipeline import train
from kdforge.core.config import DistillConfig, ScheduledValue
from kdforge.core.errors import ConfigError
from kdforge.distill.schedule import epoch_settings, schedule_value


def test_linear_cosine_and_constant_schedules():
    linear = ScheduledValue(start=6.0, end=3.0, schedule="linear")
    assert [schedule_value(linear, e, 4) for e in range(4)] == [6.0, 5.0, 4.0, 3.0]
    cosine = ScheduledValue(start=6.0, end=3.0, schedule="cosine")
    assert schedule_value(cosine, 0, 5) == 6.0 and schedule_value(cosine, 4, 5) == 3.0
    assert math.isclose(schedule_value(cosine, 2, 5), 4.5)
    assert schedule_value(ScheduledValue(start=2.0, end=9.0, schedule="constant"), 3, 5) == 2.0
    assert schedule_value(0.7, 3, 5) == 0.7


def test_a_schedule_with_its_own_span_holds_its_end_value():
    value = ScheduledValue(start=1.0, end=0.0, epochs=3)
    assert [schedule_value(value, e, 10) for e in range(5)] == [1.0, 0.5, 0.0, 0.0, 0.0]


def _distill(**extra) -> DistillConfig:
    return DistillConfig.model_validate(
        {
            "task_weight": 0.6,
            "terms": [
                {"loss": "kd", "weight": 0.3, "temperature": {"start": 6.0, "end": 3.0}},
                {"loss": "fitnet", "weight": 0.1, "student": "f", "teacher": "f"},
            ],
            **extra,
        }
    )


def test_phases_override_task_weight_scale_terms_and_set_single_weights():
    cfg = _distill(
        phases=[
            {"until_epoch": 2, "task_weight": 1.0, "scale_terms": 0.0},
            {"until_epoch": 3, "weights": {"fitnet": 0.5}},
        ]
    )
    first, second, third = (epoch_settings(cfg, e, 4) for e in (0, 2, 3))
    assert (first.task_weight, first.weights, first.phase) == (1.0, {"kd": 0.0, "fitnet": 0.0}, 0)
    assert epoch_settings(cfg, 1, 4).phase == 0
    assert (second.task_weight, second.weights, second.phase) == (0.6, {"kd": 0.3, "fitnet": 0.5}, 1)
    assert (third.task_weight, third.weights, third.phase) == (0.6, {"kd": 0.3, "fitnet": 0.1}, None)
    assert [epoch_settings(cfg, e, 4).params["kd"]["temperature"] for e in range(4)] == [6.0, 5.0, 4.0, 3.0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"phases": [{"until_epoch": 3}, {"until_epoch": 2}]}, "increasing until_epoch"),
        ({"phases": [{"until_epoch": 2, "weights": {"kdd": 1.0}}]}, "unknown term 'kdd'.*Did you mean 'kd'"),
    ],
)
def test_bad_phases_are_named(extra, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        _distill(**extra)


def test_a_scheduled_value_is_checked_at_its_end_too(make_config):
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        make_config(distill={"terms": [{"loss": "kd", "temperature": {"start": 4.0, "end": 0.0}}]})


def test_run_logs_phases_and_scheduled_values_at_the_right_epochs(make_config):
    config = make_config(
        distill={
            "taps": {"teacher": {"f": "stages.1"}, "student": {"f": "stages.1"}},
            "task_weight": 0.6,
            "terms": [
                {"loss": "kd", "weight": 0.3, "temperature": {"start": 6.0, "end": 2.0, "schedule": "linear"}},
                {"loss": "fitnet", "weight": {"start": 0.2, "end": 0.0}, "student": "f", "teacher": "f"},
            ],
            "phases": [{"until_epoch": 2, "task_weight": 1.0, "scale_terms": 0.0}],
        },
        train={"epochs": 5, "max_steps_per_epoch": 3},
    )
    result = train(config)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    schedule = [r for r in records if r["kind"] == "schedule"]
    assert [r["epoch"] for r in schedule] == [1, 2, 3, 4, 5]
    assert [r["phase"] for r in schedule] == [0, 0, -1, -1, -1]
    assert [r["task_weight"] for r in schedule] == [1.0, 1.0, 0.6, 0.6, 0.6]
    assert [r["weight/kd"] for r in schedule] == [0.0, 0.0, 0.3, 0.3, 0.3]
    assert [r["kd/temperature"] for r in schedule] == [6.0, 5.0, 4.0, 3.0, 2.0]
    assert [round(r["weight/fitnet"], 6) for r in schedule] == [0.0, 0.0, 0.1, 0.05, 0.0]
    train_records = [r for r in records if r["kind"] == "train"]
    # task-only phase: the terms (and the teacher) are not computed at all; afterwards every weighted part is
    # logged, and a term whose weight reached 0 (fitnet in the last epoch) is skipped again
    assert [("loss/kd" in r, "loss/fitnet" in r) for r in train_records] == [
        (False, False),
        (False, False),
        (True, True),
        (True, True),
        (True, False),
    ]


def test_a_schedule_can_start_after_a_warm_up_phase():
    value = ScheduledValue(start=6.0, end=3.0, start_epoch=3)  # epochs 1-2 task only, change over 3..6
    assert [schedule_value(value, e, 6) for e in range(6)] == [6.0, 6.0, 6.0, 5.0, 4.0, 3.0]


def test_a_parameter_fixed_at_build_cannot_be_scheduled(make_config):
    crd = {"loss": "crd", "student": "f", "teacher": "f", "num_negatives": {"start": 8, "end": 16}}
    with pytest.raises(ConfigError, match="cannot schedule num_negatives.*schedulable: momentum"):
        make_config(distill={"terms": [crd]})
