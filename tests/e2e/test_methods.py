"""Distillation methods end to end on the bundled digits: mixed terms with phases and schedules, and a
cross-architecture pair (ConvNeXt-like teacher, ViT student)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from kdforge.app.pipeline import train
from kdforge.core.config import RunConfig, validate_config


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _with_models(config: RunConfig, teacher: dict, student: dict) -> RunConfig:
    """The config with whole model specs replaced (make_config merges kwargs into the tiny CNN's)."""
    raw = config.to_dict()
    raw["teacher"], raw["student"] = teacher, student
    return validate_config(raw)


def test_four_terms_with_phases_and_a_temperature_schedule(make_config):
    taps = {"f": "stages.1", "p": "pool"}
    config = make_config(
        distill={
            "taps": {"teacher": taps, "student": taps},
            "task_weight": 0.6,
            "terms": [
                {"loss": "kd", "weight": 0.3, "temperature": {"start": 6.0, "end": 3.0, "schedule": "linear"}},
                {"loss": "fitnet", "weight": 0.1, "student": "f", "teacher": "f"},
                {"loss": "at", "weight": 0.05, "student": "f", "teacher": "f"},
                {"loss": "rkd", "weight": 0.02, "student": "p", "teacher": "p"},
            ],
            "phases": [{"until_epoch": 2, "task_weight": 1.0, "scale_terms": 0.0}],
        },
        train={"epochs": 4, "max_steps_per_epoch": 3},
    )
    result = train(config)
    records = _records(result.run_dir)
    schedule = {r["epoch"]: r for r in records if r["kind"] == "schedule"}
    assert [schedule[e]["task_weight"] for e in (1, 2, 3, 4)] == [1.0, 1.0, 0.6, 0.6]
    assert [schedule[e]["weight/at"] for e in (1, 2, 3, 4)] == [0.0, 0.0, 0.05, 0.05]
    assert [schedule[e]["kd/temperature"] for e in (1, 2, 3, 4)] == [6.0, 5.0, 4.0, 3.0]
    by_epoch = {math.ceil(r["epoch"]): r for r in records if r["kind"] == "train"}
    assert not any(k.startswith("loss/") and k != "loss/task" for k in by_epoch[1])  # task-only phase
    parts = {k: v for k, v in by_epoch[4].items() if k.startswith("loss/")}
    assert set(parts) == {"loss/task", "loss/kd", "loss/fitnet", "loss/at", "loss/rkd"}
    assert all(math.isfinite(v) and v >= 0 for v in parts.values())
    assert result.metrics["val/acc1"] > 10.0


def test_convnext_teacher_distils_a_vit_student(make_config):
    teacher = {"source": "timm", "name": "test_convnext"}
    student = {"source": "timm", "name": "test_vit", "kwargs": {"img_size": 32, "patch_size": 8}}
    config = make_config(
        data={"image_size": 32, "in_chans": 3},
        distill={
            "taps": {"teacher": {"f": "stages.1"}, "student": {"f": "blocks.5"}},  # a 4x4 map vs 1 + 4x4 tokens
            "task_weight": 0.5,
            "terms": [
                {"loss": "kd", "weight": 0.3, "temperature": 4.0},
                {"loss": "fitnet", "weight": 0.1, "student": "f", "teacher": "f"},
                {"loss": "cosine", "weight": 0.1, "student": "f", "teacher": "f", "tokens": "grid"},
            ],
        },
        train={"epochs": 1, "max_steps_per_epoch": 3},
    )
    result = train(_with_models(config, teacher, student))
    last = [r for r in _records(result.run_dir) if r["kind"] == "train"][-1]
    assert all(math.isfinite(last[f"loss/{k}"]) for k in ("task", "kd", "fitnet", "cosine"))
    assert result.summary["teacher"]["name"] == "test_convnext" and result.summary["student"]["name"] == "test_vit"


def test_attention_maps_of_a_vit_teacher_distil_into_a_smaller_vit(make_config):
    vit = {"source": "timm", "name": "test_vit", "kwargs": {"img_size": 32, "patch_size": 8}}
    small = {**vit, "kwargs": {**vit["kwargs"], "depth": 2, "num_heads": 2, "embed_dim": 32}}
    config = make_config(
        data={"image_size": 32, "in_chans": 3},
        distill={
            "taps": {"teacher": {"a": "blocks.5.attn.attn_drop"}, "student": {"a": "blocks.1.attn.attn_drop"}},
            "terms": [{"loss": "attention", "weight": 1.0, "student": "a", "teacher": "a"}],
        },
        train={"epochs": 1, "max_steps_per_epoch": 2},
    )
    result = train(_with_models(config, vit, small))
    last = [r for r in _records(result.run_dir) if r["kind"] == "train"][-1]
    assert math.isfinite(last["loss/attention"]) and last["loss/attention"] > 0
