"""Segmentation end to end: a SegFormer-B0 student distilled from a larger smp teacher on the generated shapes,
with the task-only phase and the temperature schedule visible in the logs at the right epochs."""

from __future__ import annotations

import json

import pytest
import yaml

from kdforge.app.cli import main
from kdforge.app.pipeline import train
from kdforge.core.config import validate_config
from kdforge.data.shapes import write_segmentation_shapes


def _config(tmp_path, **overrides) -> dict:
    root = write_segmentation_shapes(tmp_path / "shapes", image_size=32, train=16, val=8)
    config = {
        "task": "segmentation",
        "threads": 1,
        "teacher": {"source": "smp", "name": "Unet", "kwargs": {"encoder_name": "resnet18"}},
        "student": {"source": "smp", "name": "Segformer", "kwargs": {"encoder_name": "mit_b0"}},
        "data": {"dataset": "segfolder", "root": str(root), "image_size": 32, "batch_size": 4, "num_workers": 0},
        "distill": {
            "task_weight": 0.6,
            "taps": {"teacher": {"enc4": "encoder.layer4"}, "student": {"enc4": "encoder.norm4"}},
            "terms": [
                {
                    "loss": "pixel_kl",
                    "name": "kd",
                    "weight": 0.3,
                    "temperature": {"start": 6.0, "end": 3.0, "schedule": "linear", "start_epoch": 2},
                },
                {"loss": "fitnet", "name": "feature", "weight": 0.1, "student": "enc4", "teacher": "enc4"},
                {"loss": "at", "name": "attention", "weight": 0.05, "student": "enc4", "teacher": "enc4"},
            ],
            "phases": [{"until_epoch": 1, "task_weight": 1.0, "scale_terms": 0.0}],
        },
        "train": {
            "epochs": 3,
            "max_steps_per_epoch": 2,
            "clip_grad_norm": 1.0,
            "optimizer": {"name": "adamw", "lr": 1e-4, "weight_decay": 0.01},
        },
        "output": {"dir": str(tmp_path / "runs"), "name": "seg"},
        "log": {"progress": False, "loggers": [], "every_steps": 1},
    }
    config.update(overrides)
    return config


def test_segformer_student_distils_from_an_smp_teacher_with_phases_and_a_temperature_schedule(tmp_path):
    result = train(validate_config(_config(tmp_path)))
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    schedule = {r["epoch"]: r for r in records if r["kind"] == "schedule"}
    assert schedule[1]["task_weight"] == 1.0 and schedule[1]["weight/kd"] == 0.0  # task-only phase
    assert (schedule[2]["task_weight"], schedule[2]["weight/kd"], schedule[2]["weight/feature"]) == (0.6, 0.3, 0.1)
    assert (schedule[2]["kd/temperature"], schedule[3]["kd/temperature"]) == (6.0, 3.0)
    train_records = [r for r in records if r["kind"] == "train"]
    assert "loss/kd" not in train_records[0] and "loss/kd" in train_records[-1]  # terms skipped while weighted 0
    assert {"val/miou", "val/pixel_acc", "fitness"} <= set(result.metrics)
    assert 0.0 <= result.metrics["val/miou"] <= 100.0
    assert (result.run_dir / "student.safetensors").is_file() and (result.run_dir / "report.html").is_file()


def test_compare_trains_the_baseline_on_the_same_budget_and_reports_the_difference(tmp_path, capsys):
    config = _config(tmp_path)
    config["train"]["epochs"] = 2
    path = tmp_path / "seg.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["compare", "-c", str(path)]) == 0
    comparison = json.loads((tmp_path / "runs" / "seg-compare.json").read_text())
    baseline, distilled = comparison["baseline"], comparison["distilled"]
    assert baseline["run_dir"].endswith("seg-baseline") and distilled["run_dir"].endswith("seg")
    assert comparison["difference"]["val/miou"] == pytest.approx(
        distilled["metrics"]["val/miou"] - baseline["metrics"]["val/miou"]
    )
    for row in (baseline, distilled):
        improvement = 100 * (row["task_loss_first"] - row["task_loss_last"]) / row["task_loss_first"]
        assert row["task_loss_improvement_pct"] == pytest.approx(improvement)
    baseline_config = yaml.safe_load((tmp_path / "runs" / "seg-baseline" / "config.yaml").read_text())
    assert baseline_config["teacher"] is None and baseline_config["distill"]["terms"] == []
    assert baseline_config["train"] == yaml.safe_load((tmp_path / "runs" / "seg" / "config.yaml").read_text())["train"]
    out = " ".join(capsys.readouterr().out.split())
    assert "distilled - baseline" in out and (tmp_path / "runs" / "seg-compare.html").is_file()


def test_pixel_kl_skips_the_datasets_unlabelled_value_unless_told_otherwise(tmp_path):
    from kdforge.distill.schedule import epoch_settings
    from kdforge.distill.terms import build_terms

    config = validate_config(_config(tmp_path, data={"dataset": "segfolder", "root": str(tmp_path), "ignore_index": 7}))
    terms = {t.name: t.term for t in build_terms(config, epoch_settings(config.distill, 0, config.train.epochs))}
    assert terms["kd"].ignore_index == 7


def test_compare_without_distillation_terms_is_refused(tmp_path, capsys):
    config = _config(tmp_path)
    config["distill"] = {"terms": []}
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["compare", "-c", str(path)]) == 2
    assert "distill.terms is empty" in capsys.readouterr().err


def test_a_bad_mask_read_in_a_worker_is_reported_without_the_worker_traceback(tmp_path, capsys):
    from PIL import Image

    config = _config(tmp_path, teacher=None, distill={"terms": []})
    mask = next((tmp_path / "shapes" / "train" / "masks").glob("*.png"))
    Image.new("L", Image.open(mask).size, 9).save(mask)  # class id 9 of 4
    config["data"]["num_workers"] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "-c", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert mask.name in err and "Traceback" not in err
