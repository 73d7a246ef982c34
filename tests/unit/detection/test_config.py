"""The detect: section: defaults from the issue, typos named with the nearest key, ignored sections refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kdforge.core.config import load_config
from kdforge.core.errors import ConfigError


def _config(**detect: Any) -> dict[str, Any]:
    return {
        "task": "detection",
        "teacher": {"source": "ultralytics", "name": "teacher.pt", "trust_checkpoint": True},
        "student": {"source": "ultralytics", "name": "yolov8n.yaml"},
        "detect": {"data": {"root": "distillation_dataset"}, **detect},
    }


def test_defaults_are_the_issue_recipe() -> None:
    detect = load_config(base=_config()).detect
    assert (detect.batch, detect.imgsz, detect.clip_grad_norm) == (32, 640, 10.0)
    assert (detect.optimizer.name, detect.optimizer.lr0, detect.optimizer.lrf, detect.optimizer.momentum) == (
        "SGD",
        0.01,
        0.01,
        0.937,
    )
    kd = detect.distill
    assert (kd.lambda_detection, kd.lambda_distillation, kd.lambda_dist_ciou, kd.lambda_dist_kl) == (2.0, 1.0, 1.0, 1.0)
    assert kd.temperature == 2.0 and kd.feature_weight == 0.0
    assert (detect.fitness.map50, detect.fitness.map50_95) == (0.1, 0.9)


def test_a_typo_names_the_nearest_key() -> None:
    with pytest.raises(ConfigError, match="lambda_detection"):
        load_config(base=_config(distill={"lamda_detection": 1.0}))


@pytest.mark.parametrize(("topk", "ok"), [(100, True), (0.05, True), (1.0, True), (0, False), (1.5, False)])
def test_topk_is_a_count_or_a_fraction(topk: Any, ok: bool) -> None:
    if ok:
        assert load_config(base=_config(distill={"topk": topk})).detect.distill.topk == topk
    else:
        with pytest.raises(ConfigError, match="topk"):
            load_config(base=_config(distill={"topk": topk}))


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"distill": {"terms": [{"loss": "kd"}]}}, "distill.terms is not read by task: detection"),
        ({"data": {"root": "x"}}, "use detect.data.root"),
        ({"teacher": {"source": "timm", "name": "resnet18"}}, "set teacher.source: ultralytics"),
    ],
)
def test_settings_detection_would_ignore_are_refused(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(base={**_config(), **section})


def test_data_needs_exactly_one_source_and_the_section_its_task() -> None:
    with pytest.raises(ConfigError, match="exactly one of root"):
        load_config(base=_config(data={"root": "a", "yaml": "b.yaml"}))
    with pytest.raises(ConfigError, match="needs a detect: section"):
        load_config(base={k: v for k, v in _config().items() if k != "detect"})
    with pytest.raises(ConfigError, match="applies to task: detection only"):
        load_config(base={**_config(), "task": "classification", "student": {"name": "resnet18"}})


@pytest.mark.parametrize(
    "name",
    ["distill_model", "epochs", "batch", "imgsz", "device", "amp", "freeze", "seed", "lr0", "mosaic", "optimizer"],
)
def test_extra_may_not_override_what_kdforge_sets(name: str) -> None:
    with pytest.raises(ConfigError, match=f"may not set.*{name}"):
        load_config(base=_config(extra={name: 1}))
    assert load_config(base=_config(extra={"cls": 0.7})).detect.extra == {"cls": 0.7}


def test_every_argument_kdforge_passes_to_ultralytics_is_reserved(tmp_path: Path) -> None:
    pytest.importorskip("ultralytics")
    from kdforge.app.detection.args import ultralytics_args
    from kdforge.core.config.detection import RESERVED_ARGS

    config = load_config(base={**_config(), "device": "cpu"})
    assert set(ultralytics_args(config, tmp_path / "data.yaml", tmp_path)) <= RESERVED_ARGS


def test_a_random_weight_teacher_is_refused_unless_allowed() -> None:
    random_teacher = {"teacher": {"source": "ultralytics", "name": "yolov8s.yaml"}}
    with pytest.raises(ConfigError, match="random weights.*Train the teacher first.*allow_random_teacher"):
        load_config(base={**_config(), **random_teacher})
    config = {**_config(allow_random_teacher=True), **random_teacher}
    assert load_config(base=config).teacher.name == "yolov8s.yaml"


def test_a_run_without_teacher_exports_only_under_a_name_of_its_own() -> None:
    alone = {**_config(registry={"enabled": True}), "teacher": None}
    with pytest.raises(ConfigError, match="not distilled.*set detect.registry.name"):
        load_config(base=alone)
    alone["detect"]["registry"]["name"] = "yolov8n-alone"
    assert load_config(base=alone).detect.registry.name == "yolov8n-alone"
    assert load_config(base=_config()).detect.registry.enabled is None  # default: export distilled runs only
