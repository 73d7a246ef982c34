"""The ``kdforge`` command end to end on real image folders (the digits written as PNGs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdforge.app.cli import main
from kdforge.data.digits import write_image_folders

CNN = "kdforge.models.zoo:cnn"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folders(tmp_path_factory.mktemp("digits"), image_size=16)


def _train_args(folders: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        str(folders),
        "--student",
        CNN,
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--set",
        f"output.dir={out}",
        "--set",
        "data.image_size=16",
        "--set",
        "data.num_workers=0",
        "--set",
        "train.max_steps_per_epoch=4",
        "--set",
        "student.kwargs={widths: [8, 16]}",
        "--set",
        "log.progress=false",
        "--set",
        "threads=1",
        *extra,
    ]


def test_train_eval_export_from_short_flags(folders, tmp_path, capsys):
    assert (
        main(
            _train_args(
                folders,
                tmp_path,
                "--teacher",
                "none",
                "--name",
                "teacher",
                "--set",
                "student.kwargs={widths: [16, 32]}",
            )
        )
        == 0
    )
    teacher_weights = tmp_path / "teacher" / "student.safetensors"
    assert teacher_weights.is_file()

    args = _train_args(
        folders,
        tmp_path,
        "--teacher",
        CNN,
        "--teacher-checkpoint",
        str(teacher_weights),
        "--set",
        "teacher.kwargs={widths: [16, 32]}",
        "--alpha",
        "0.6",
        "--temperature",
        "3",
        "--name",
        "kd",
    )
    assert main(args) == 0
    run = tmp_path / "kd"
    config = (run / "config.yaml").read_text()
    assert "temperature: 3.0" in config and "task_weight: 0.4" in config
    summary = json.loads((run / "summary.json").read_text())
    assert summary["teacher"]["params"] > summary["student"]["params"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    assert {
        "loss/task",
        "loss/kd",
        "lr",
        "samples_per_s",
        "time/data_ms",
        "time/teacher_ms",
        "time/student_ms",
        "time/optimizer_ms",
    } <= set(train_records[-1])
    assert [r["epoch"] for r in records if r["kind"] == "val"] == [1]
    assert list((run / "tb").glob("events.out.tfevents.*")), "TensorBoard wrote no event file"

    capsys.readouterr()
    assert main(["eval", str(run), "--checkpoint", "best"]) == 0
    assert "val/acc1" in capsys.readouterr().out

    assert main(["export", str(run), "--format", "safetensors", "torchscript", "--out", str(tmp_path / "x")]) == 0
    scripted = torch.jit.load(str(tmp_path / "x" / "student.torchscript.pt"))
    assert scripted(torch.zeros(2, 3, 16, 16)).shape == (2, 10)


def _error_of(capsys: pytest.CaptureFixture, args: list[str]) -> str:
    capsys.readouterr()
    assert main(args) == 2
    return capsys.readouterr().err


def test_bad_config_key_names_the_nearest_key(folders, tmp_path, capsys):
    err = _error_of(capsys, _train_args(folders, tmp_path, "--set", "train.optimiser.lr=0.1"))
    assert "train.optimiser" in err and "'optimizer'" in err


def test_missing_data_folder_says_what_layout_is_expected(tmp_path, capsys):
    err = _error_of(capsys, _train_args(tmp_path / "nowhere", tmp_path))
    assert "does not exist" in err and "train/<class>" in err


def test_class_count_mismatch_is_named(folders, tmp_path, capsys):
    err = _error_of(capsys, _train_args(folders, tmp_path, "--teacher", CNN, "--set", "teacher.num_classes=5"))
    assert "teacher predicts 5 classes but the dataset has 10" in err


def _teacher_checkpoint_args(folders: Path, out: Path, checkpoint: Path) -> list[str]:
    """Distil from a 16-32 zoo CNN teacher loaded from `checkpoint`."""
    return _train_args(
        folders,
        out,
        "--teacher",
        CNN,
        "--teacher-checkpoint",
        str(checkpoint),
        "--set",
        "teacher.kwargs={widths: [16, 32]}",
    )


def test_checkpoint_that_does_not_fit_lists_the_keys(folders, tmp_path, capsys):
    from kdforge.models.zoo import cnn

    path = tmp_path / "wrong.pth"
    torch.save({"model": cnn(num_classes=3, widths=[16, 32]).state_dict()}, path)
    err = _error_of(capsys, _teacher_checkpoint_args(folders, tmp_path, path))
    assert "wrong shape" in err and "head.weight" in err and "(3, 32)" in err


def test_pickled_checkpoint_is_refused_without_trust(folders, tmp_path, capsys):
    from kdforge.models.zoo import cnn

    path = tmp_path / "whole_model.pt"
    torch.save(cnn(num_classes=10, widths=[16, 32]), path)
    args = _teacher_checkpoint_args(folders, tmp_path, path)
    assert "trust_checkpoint: true" in _error_of(capsys, args)
    assert main([*args, "--set", "teacher.trust_checkpoint=true"]) == 0


def test_demo_shows_a_real_distillation_gain(tmp_path):
    from kdforge.app.demo import run_demo

    result = run_demo(tmp_path / "demo", seeds=1)
    assert result["compression"] >= 4.0
    assert result["teacher_acc1"] > 95.0
    assert result["student_kd_acc1"][0] > result["student_alone_acc1"][0] + 5.0
