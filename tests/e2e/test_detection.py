"""Detection end to end on CPU: a yolov8n student distilled from a yolov8s teacher on tiny generated shapes, through
the CLI, to a registry model that ``ultralytics.YOLO`` validates; and the student alone (Ultralytics' own loss)."""

from __future__ import annotations

import json
import os
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml

import kdforge.app.detection  # noqa: F401  (offline settings before ultralytics is imported)
from kdforge.app.cli import main
from kdforge.app.report.runs import read_records
from kdforge.data.shapes import write_detection_shapes

pytestmark = pytest.mark.skipif(find_spec("ultralytics") is None, reason="needs the yolo extra (ultralytics)")


def _config(tmp_path, **detect) -> dict:
    root = write_detection_shapes(tmp_path / "shapes", image_size=64, train=8, val=4)
    return {
        "task": "detection",
        "device": "cpu",
        "threads": 1,
        "teacher": {"source": "ultralytics", "name": "yolov8s.yaml"},
        "student": {"source": "ultralytics", "name": "yolov8n.yaml"},
        "output": {"dir": str(tmp_path / "runs"), "name": "kd"},
        "log": {"every_steps": 1, "verbose": False, "loggers": []},
        "detect": {
            "data": {"root": str(root)},
            "epochs": 2,
            "batch": 4,
            "imgsz": 64,
            "workers": 0,
            "log_every": "batch",
            "allow_random_teacher": True,  # a yolov8s.yaml teacher: random weights, enough to test the plumbing
            "distill": {"topk": 0.05, "feature_weight": 1.0},
            "registry": {"dir": str(tmp_path / "registry")},
            **detect,
        },
    }


def _recording(function, calls: list, result: bool = False):
    """`function`, recording each call's keyword arguments (or, with `result`, what it returned)."""

    def wrapper(*args, **kwargs):
        value = function(*args, **kwargs)
        calls.append(value if result else kwargs)
        return value

    return wrapper


def _inside(path, folder) -> bool:
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def test_distilled_student_reaches_the_registry_and_ultralytics_validates_it(tmp_path, capsys, monkeypatch) -> None:
    import ultralytics.engine.trainer
    import ultralytics.engine.validator
    import ultralytics.utils

    import kdforge.app.detection.run
    from kdforge.app.detection.offline import config_dir

    path = tmp_path / "kd.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path)))
    # Nothing may land outside the run dir, the registry and kdforge's cache: not in the working directory, nor
    # in Ultralytics' default folders. Under pytest Ultralytics redirects its default save folders to its own
    # tests/tmp, so what is checked is that every folder it is given or derives lies in the run directory.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    saved_to, validators, amp_checks = [], [], []
    for module in (ultralytics.engine.trainer, ultralytics.engine.validator):
        monkeypatch.setattr(module, "get_save_dir", _recording(module.get_save_dir, saved_to, result=True))
    validator = _recording(kdforge.app.detection.run.DetectionValidator, validators)
    monkeypatch.setattr(kdforge.app.detection.run, "DetectionValidator", validator)
    monkeypatch.setattr(ultralytics.engine.trainer, "check_amp", _recording(lambda model: True, amp_checks))

    assert main(["train", "-c", str(path)]) == 0
    model = tmp_path / "registry" / "distilled" / "latest" / "model.pt"
    assert capsys.readouterr().out.strip().endswith(str(model))
    assert (tmp_path / "registry" / "distilled" / "v1" / "model.pt").is_file()
    run = tmp_path / "runs" / "kd"
    assert not list(cwd.iterdir())
    assert saved_to and all(_inside(folder, run) for folder in saved_to)
    assert len(validators) == 1 and _inside(validators[0]["save_dir"], run)  # the teacher's validation
    folders = [ultralytics.utils.SETTINGS[key] for key in ("runs_dir", "weights_dir", "datasets_dir")]
    assert all(_inside(folder, config_dir()) or _inside(folder, os.environ["YOLO_CONFIG_DIR"]) for folder in folders)
    assert not amp_checks  # the AMP self-check (it downloads yolo26n.pt) is never called, even when AMP is on

    records = read_records(run / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 4  # 8 images / batch 4, 2 epochs, logged every batch
    for record in train:
        assert record["loss/kd_ciou"] > 0 and record["loss/kd_kl"] > 0 and record["loss/kd_feat"] > 0
        assert record["wloss/box"] == pytest.approx(2.0 * record["loss/box"])  # lambda_detection
        assert record["grad_norm"] > 0
    vals = [r for r in records if r["kind"] == "val"]
    assert [r["epoch"] for r in vals] == [1, 2]
    assert {"precision", "recall", "mAP50", "mAP50-95", "fitness"} <= set(vals[0])
    assert any(r["kind"] == "teacher" for r in records)

    metadata = json.loads((model.parent / "metadata.json").read_text())
    assert metadata["version"] == "v1" and metadata["data"]["names"] == ["circle", "square", "triangle"]
    assert metadata["teacher"]["name"] == "yolov8s.yaml" and "mAP50-95" in metadata["metrics"]
    assert metadata["config"]["detect"]["distill"]["lambda_detection"] == 2.0
    assert (run / "report.html").is_file() and (run / "data.yaml").is_file()

    from ultralytics import YOLO

    yolo = YOLO(str(model))
    results = yolo.val(data=str(run / "data.yaml"), imgsz=64, batch=4, device="cpu", plots=False, project=str(tmp_path))
    assert 0.0 <= results.box.map <= 1.0
    assert len(yolo.predict(str(tmp_path / "shapes" / "val" / "images" / "0000.png"), imgsz=64, verbose=False)) == 1


def test_student_alone_uses_ultralytics_loss_without_distillation_terms(tmp_path, capsys) -> None:
    config = _config(tmp_path, epochs=1, val_teacher=False)  # the registry left at its default
    config["teacher"] = None
    path = tmp_path / "alone.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "-c", str(path)]) == 0
    records = read_records(tmp_path / "runs" / "kd" / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert train and not any(key.startswith("loss/kd_") for r in train for key in r)
    assert train[0]["wloss/box"] == train[0]["loss/box"]  # no lambda_detection without a teacher
    assert not (tmp_path / "registry").exists()  # not a distilled model: never distilled/latest
    assert capsys.readouterr().out.strip().endswith(str(tmp_path / "runs" / "kd"))
    summary = json.loads((tmp_path / "runs" / "kd" / "summary.json").read_text())
    assert summary["teacher"] is None and summary["epochs_run"] == 1


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tmp_path, monkeypatch, capsys) -> None:
    import torch

    from kdforge.app.detection.logbridge import LogBridge
    from kdforge.app.detection.trainer import KDDetectionTrainer

    config = _config(tmp_path, val_teacher=False)  # feature_weight 1.0: projectors with their own optimizer state
    path = tmp_path / "kd.yaml"
    path.write_text(yaml.safe_dump(config))
    original = LogBridge.on_epoch_end

    def stop_after_first_epoch(bridge, trainer) -> None:
        original(bridge, trainer)
        if trainer.epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(LogBridge, "on_epoch_end", stop_after_first_epoch)
    run = tmp_path / "runs" / "kd"
    assert main(["train", "-c", str(path)]) == 130
    assert (run / "yolo" / "weights" / "last.pt").is_file()
    saved = torch.load(run / "yolo" / "weights" / "kdforge_state.pt", weights_only=True)
    assert saved["batches"] == 2 and saved["epoch"] == 0

    monkeypatch.setattr(LogBridge, "on_epoch_end", original)
    assert main(["train", "--resume", str(run), "--epochs", "5"]) == 2  # a change the checkpoint would ignore
    assert "cannot change ['detect.epochs']" in capsys.readouterr().err
    config_text = (run / "config.yaml").read_text()

    restored = []
    load_state = KDDetectionTrainer._load_checkpoint_state

    def record_projectors(trainer, ckpt) -> None:
        load_state(trainer, ckpt)
        restored.append({k: v.clone() for k, v in trainer.projectors.state_dict().items()})

    monkeypatch.setattr(KDDetectionTrainer, "_load_checkpoint_state", record_projectors)
    assert main(["train", "--resume", str(run)]) == 0
    assert restored and all(torch.equal(restored[0][k], v) for k, v in saved["projectors"].items())
    records = read_records(run / "metrics.jsonl")
    assert [r["epoch"] for r in records if r["kind"] == "val"] == [1, 2]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]  # counted on across the resume
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 2
    assert len(json.loads((run / "meta.json").read_text())["resumes"]) == 1
    assert (run / "config.yaml").read_text() == config_text

    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "finished its 2 epochs" in err and "--student" in err and "last.pt" in err


def test_detection_flags_map_to_detect_keys_and_alpha_is_refused(tmp_path, monkeypatch, capsys) -> None:
    from kdforge.app.finalize import RunResult

    seen = []

    def train(config, run_dir=None, resume=False) -> RunResult:
        seen.append(config)
        return RunResult(tmp_path, {}, {})

    monkeypatch.setattr(kdforge.app.detection, "train_detection", train)
    path = tmp_path / "kd.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path)))
    assert main(["train", "-c", str(path), "--temperature", "3.5", "--epochs", "7"]) == 0
    assert (seen[0].detect.distill.temperature, seen[0].detect.epochs) == (3.5, 7)
    assert main(["train", "-c", str(path), "--alpha", "0.5"]) == 2
    assert "--alpha" in capsys.readouterr().err
    assert main(["train", "-c", str(path), "--data", "images/"]) == 2
    assert "detect.data.root" in capsys.readouterr().err
    assert main(["compare", "-c", str(path)]) == 2
    assert "trains on a loop of its own" in capsys.readouterr().err and len(seen) == 1
