"""Short flags refine a merged config instead of replacing parts of it."""

from __future__ import annotations

from pathlib import Path

from kdforge.app.flags import apply_short_flags
from kdforge.core.config import load_config, merge_files

CONFIGS = Path(__file__).parents[2] / "configs"


def _flags(**given: object) -> dict[str, object]:
    return given


def test_temperature_patches_the_kd_term_and_keeps_the_others():
    raw = apply_short_flags(merge_files([CONFIGS / "cross_arch_fitnet.yaml"]), _flags(temperature=2.0))
    terms = raw["distill"]["terms"]
    assert [t["loss"] for t in terms] == ["kd", "fitnet"]
    assert terms[0]["temperature"] == 2.0 and terms[0]["weight"] == 0.4
    assert raw["distill"]["task_weight"] == 0.5


def test_alpha_sets_the_kd_weight_and_the_task_weight():
    raw = apply_short_flags(merge_files([CONFIGS / "cross_arch_fitnet.yaml"]), _flags(alpha=0.9))
    assert raw["distill"]["terms"][0]["weight"] == 0.9
    assert abs(raw["distill"]["task_weight"] - 0.1) < 1e-12


def test_a_teacher_without_terms_gets_hinton_kd():
    raw = apply_short_flags({"student": {"name": "resnet18"}}, _flags(teacher="resnet50"))
    config = load_config(base=raw)
    assert config.teacher.name == "resnet50" and config.teacher.source == "timm"
    assert [(t.loss, t.weight, t.params()["temperature"]) for t in config.distill.terms] == [("kd", 0.7, 4.0)]
    assert abs(config.distill.task_weight - 0.3) < 1e-12


def test_teacher_none_removes_teacher_and_terms():
    raw = apply_short_flags(merge_files([CONFIGS / "digits_kd.yaml"]), _flags(teacher="none"))
    config = load_config(base=raw)
    assert config.teacher is None and config.distill.terms == [] and config.distill.task_weight == 1.0


def test_string_flags_stay_strings_and_sources_are_kept():
    raw = {"student": {"name": "x"}, "teacher": {"source": "torchvision", "name": "resnet50"}}
    raw = apply_short_flags(raw, _flags(name="001", data="~", teacher="resnet101"))
    assert raw["output"]["name"] == "001" and raw["data"]["root"] == "~"
    assert raw["teacher"] == {"source": "torchvision", "name": "resnet101"}
    raw = apply_short_flags(raw, _flags(student="pkg.mod:net"))
    assert raw["student"]["source"] == "import"


def test_teacher_checkpoint_flag_with_several_teachers_says_what_to_set():
    import pytest

    from kdforge.core.errors import ConfigError

    with pytest.raises(ConfigError, match="teachers.NAME.checkpoint"):
        apply_short_flags({"teachers": {"a": {"name": "resnet50"}}}, _flags(teacher_checkpoint="t.pth"))
