"""The swapped criterion, fitness, logging records, registry export and offline settings."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

from kdforge.app.detection.export import export_to_registry, next_version
from kdforge.core.config.detection import DetectConfig, DetectDistillConfig, RegistryConfig

needs_ultralytics = pytest.mark.skipif(find_spec("ultralytics") is None, reason="needs the yolo extra (ultralytics)")


def _models():
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    student = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    student.args = get_cfg(overrides={"imgsz": 64})
    teacher = copy.deepcopy(student).eval()
    return student, teacher


def _batch() -> dict[str, torch.Tensor]:
    return {
        "img": torch.rand(2, 3, 64, 64),
        "batch_idx": torch.tensor([0.0, 1.0]),
        "cls": torch.tensor([[0.0], [2.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.3, 0.6, 0.2, 0.4]]),
    }


@needs_ultralytics
def test_distillation_is_zero_when_the_student_outputs_equal_the_teachers() -> None:
    from kdforge.app.detection.criterion import DistillationCriterion
    from kdforge.app.detection.teacher import teacher_forward

    student, teacher = _models()
    criterion = DistillationCriterion(student, teacher, DetectDistillConfig(topk=10), None)
    images = _batch()["img"]
    same = teacher_forward(teacher, images)  # the student's raw outputs, as if it matched the teacher exactly
    parts = criterion.distill_parts({k: v.clone() if k != "feats" else v for k, v in same.items()}, images)
    assert parts["kd_ciou"].item() == pytest.approx(0.0, abs=1e-5)
    assert parts["kd_kl"].item() == pytest.approx(0.0, abs=1e-6)


@needs_ultralytics
def test_the_loss_is_weighted_detection_plus_distillation_and_eval_reads_zero() -> None:
    from kdforge.app.detection.criterion import DistillationCriterion

    student, teacher = _models()
    cfg = DetectDistillConfig(lambda_detection=2.0, lambda_distillation=0.5, lambda_dist_ciou=3.0, topk=0.1)
    criterion = DistillationCriterion(student, teacher, cfg, None)
    plain = student.init_criterion()
    batch = _batch()
    student.train()
    preds = student(batch["img"])
    total, items = criterion(preds, batch)
    detection, _ = plain(preds, batch)
    assert torch.allclose(total[:3], 2.0 * detection)
    expected = 0.5 * (3.0 * items["kd_ciou"] + items["kd_kl"]) * 2  # per image x batch size
    assert total[3].item() == pytest.approx(expected.item(), rel=1e-5)
    total.sum().backward()
    assert all(p.grad is None for p in teacher.parameters())
    student.eval()
    with torch.no_grad():
        _, eval_items = criterion(student(batch["img"]), batch)
    assert set(eval_items) == set(items) and eval_items["kd_kl"] == 0


@needs_ultralytics
@pytest.mark.parametrize("part", ["kd_ciou", "kd_kl"])
def test_each_distillation_term_sends_gradient_to_the_students_head(part: str) -> None:
    from kdforge.app.detection.criterion import DistillationCriterion

    student, teacher = _models()
    with torch.no_grad():  # a teacher that differs from the student, so every term is non-zero
        for param in teacher.parameters():
            param.add_(0.05 * torch.randn_like(param))
    criterion = DistillationCriterion(student, teacher, DetectDistillConfig(topk=0.1, kl="sigmoid"), None)
    student.train()
    images = _batch()["img"]
    criterion.distill_parts(student(images), images)[part].backward()
    head = student.model[-1]
    branch = head.cv2 if part == "kd_ciou" else head.cv3  # box branch for CIoU, class branch for KL
    grads = [p.grad for p in branch.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in teacher.parameters())


@needs_ultralytics
def test_feature_projectors_map_student_to_teacher_channels() -> None:
    from ultralytics.nn.tasks import DetectionModel

    from kdforge.app.detection.criterion import build_projectors

    student = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    teacher = DetectionModel("yolov8s.yaml", nc=3, verbose=False)
    projectors = build_projectors(student, teacher)
    assert [p[0].in_channels for p in projectors] == [64, 128, 256]
    assert [p[-1].out_channels for p in projectors] == [128, 256, 512]


def test_fitness_uses_the_configured_weights() -> None:
    pytest.importorskip("ultralytics")
    from kdforge.app.detection.trainer import fitness_of

    metrics = {
        "metrics/precision(B)": 0.8,
        "metrics/recall(B)": 0.6,
        "metrics/mAP50(B)": 0.5,
        "metrics/mAP50-95(B)": 0.3,
    }
    detect = DetectConfig(data={"root": "x"})
    assert fitness_of(metrics, detect) == pytest.approx(0.1 * 0.5 + 0.9 * 0.3)
    detect = DetectConfig(data={"root": "x"}, fitness={"precision": 1.0, "recall": 1.0, "map50": 0, "map50_95": 0})
    assert fitness_of(metrics, detect) == pytest.approx(1.4)


def test_loss_and_val_records_use_kdforge_names() -> None:
    pytest.importorskip("ultralytics")
    from kdforge.app.detection.logbridge import loss_record, val_record

    record = loss_record({"box_loss": 1.0, "cls_loss": 2.0, "kd_kl": 0.5}, {"box": 2.0, "cls": 2.0, "kd_kl": 1.5})
    assert record == {
        "loss/total": 2.0 + 4.0 + 0.75,
        "loss/box": 1.0,
        "loss/cls": 2.0,
        "loss/kd_kl": 0.5,
        "wloss/box": 2.0,
        "wloss/cls": 4.0,
        "wloss/kd_kl": 0.75,
    }
    val = val_record({"metrics/mAP50-95(B)": 0.4, "val/box_loss": 1.2, "val/kd_kl": 0.0}, 0.41)
    assert val == {"mAP50-95": 0.4, "fitness": 0.41, "loss/box": 1.2}


def test_registry_versions_count_up_and_latest_follows(tmp_path: Path) -> None:
    model = tmp_path / "best.pt"
    registry = RegistryConfig(dir=str(tmp_path / "reg"), name="distilled")
    for n in (1, 2):
        model.write_bytes(f"weights {n}".encode())
        latest = export_to_registry(model, registry, {"metrics": {"mAP50-95": n / 10}})
    base = tmp_path / "reg" / "distilled"
    assert next_version(base) == 3
    assert latest.read_bytes() == b"weights 2" and (base / "v1" / "model.pt").read_bytes() == b"weights 1"
    meta = json.loads((base / "latest" / "metadata.json").read_text())
    assert meta["version"] == "v2" and meta["metrics"] == {"mAP50-95": 0.2}
    assert (base / "latest").is_symlink() and os.readlink(base / "latest") == "v2"  # one link: model + metadata
    assert sorted(p.name for p in base.iterdir()) == ["latest", "v1", "v2"]  # no temporary left behind


def test_racing_exports_claim_distinct_versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kdforge.app.detection.export as export

    monkeypatch.setattr(export, "next_version", lambda base: 1)  # both read the folder before either wrote
    model = tmp_path / "best.pt"
    registry = RegistryConfig(dir=str(tmp_path / "reg"))
    for n in (1, 2):
        model.write_bytes(f"weights {n}".encode())
        export_to_registry(model, registry, {"run": n})
    base = tmp_path / "reg" / "distilled"
    assert [json.loads((base / v / "metadata.json").read_text())["run"] for v in ("v1", "v2")] == [1, 2]
    assert json.loads((base / "latest" / "metadata.json").read_text()) == json.loads(
        (base / "v2" / "metadata.json").read_text()
    )


def test_a_registry_with_a_latest_folder_moves_to_the_link(tmp_path: Path) -> None:
    base = tmp_path / "reg" / "distilled"
    (base / "latest").mkdir(parents=True)
    (base / "latest" / "model.pt").write_bytes(b"old")
    (tmp_path / "best.pt").write_bytes(b"new")
    latest = export_to_registry(tmp_path / "best.pt", RegistryConfig(dir=str(tmp_path / "reg")), {})
    assert latest.read_bytes() == b"new" and (base / "latest").is_symlink()
    assert sorted(p.name for p in base.iterdir()) == ["latest", "v1"]


@needs_ultralytics
def test_a_deep_copy_of_the_student_carries_no_criterion_nor_teacher() -> None:
    from kdforge.app.detection.criterion import DistillationCriterion

    student, teacher = _models()
    student.criterion = DistillationCriterion(student, teacher, DetectDistillConfig(), None)
    copied = copy.deepcopy(student)  # what Ultralytics' ModelEMA does, also on NaN recovery
    assert copied.criterion is None and isinstance(student.criterion, DistillationCriterion)
    student.eval()
    copied.eval()
    with torch.no_grad():  # the copy builds Ultralytics' plain loss when validation asks for one
        assert set(copied.loss(_batch())[1]) == {"box_loss", "cls_loss", "dfl_loss"}


@needs_ultralytics
def test_softmax_kl_is_refused_for_one_class() -> None:
    from kdforge.app.detection.criterion import check_kl_mode
    from kdforge.core.errors import ConfigError

    with pytest.raises(ConfigError, match="kl: sigmoid"):
        check_kl_mode(DetectDistillConfig(), nc=1)
    check_kl_mode(DetectDistillConfig(kl="sigmoid"), nc=1)
    check_kl_mode(DetectDistillConfig(lambda_dist_kl=0.0), nc=1)
    check_kl_mode(DetectDistillConfig(), nc=3)


def test_detection_is_refused_on_several_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    from kdforge.app.detection.args import check_single_process, device_arg
    from kdforge.core.errors import ConfigError

    assert device_arg("cuda:1") == "1"
    with pytest.raises(ConfigError, match="several devices"):
        device_arg("cuda:0,1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="WORLD_SIZE=2"):
        check_single_process()
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_single_process()


def test_non_finite_values_are_left_out_of_records() -> None:
    pytest.importorskip("ultralytics")
    from kdforge.app.detection.logbridge import finite

    assert finite({"grad_norm": float("inf"), "lr": 0.01, "fitness": float("nan"), "epoch": 1}) == {
        "lr": 0.01,
        "epoch": 1,
    }


@needs_ultralytics
def test_ultralytics_starts_offline_with_its_settings_in_kdforges_folder(tmp_path: Path) -> None:
    code = (
        "import os, kdforge.app.detection, ultralytics.utils as u;"
        "print(*(u.SETTINGS[k] for k in ('runs_dir', 'weights_dir', 'datasets_dir')), u.RUNS_DIR, u.DATASETS_DIR);"
        "print(u.ONLINE, u.AUTOINSTALL, u.USER_CONFIG_DIR, (u.USER_CONFIG_DIR / 'Arial.ttf').is_file())"
    )
    env = {**os.environ, "KDFORGE_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path / "home")}
    for key in ("YOLO_CONFIG_DIR", "YOLO_OFFLINE", "YOLO_AUTOINSTALL"):
        env.pop(key, None)
    work = tmp_path / "work"
    work.mkdir()
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    online, autoinstall, folder, font = lines[-1].split()  # after its settings notice
    assert (online, autoinstall, font) == ("False", "False", "True")
    assert Path(folder) == tmp_path / "cache" / "Ultralytics" and (Path(folder) / "settings.json").is_file()
    assert not list(work.iterdir()) and not list((tmp_path / "home").rglob("Ultralytics"))
    # runs, weights and datasets folders under kdforge's cache, not the git root or working directory
    assert [Path(p) for p in lines[-2].split()] == [Path(folder) / n for n in ("runs", "weights", "datasets")] + [
        Path(folder) / "runs",
        Path(folder) / "datasets",
    ]
