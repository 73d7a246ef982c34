"""``kdforge eval`` and ``kdforge export`` without the training data: val/ alone, or no data at all."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image

from kdforge.app import evaluation
from kdforge.app.cli import main
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.models.zoo import cnn

CLASSES = ["a", "b", "c"]
STUDENT = {"source": "import", "name": "kdforge.models.zoo:cnn", "kwargs": {"widths": [4, 8]}}


def _image_folders(root: Path, counts: dict[str, dict[str, int]]) -> Path:
    """``root/<split>/<class>/<n>.png``: 8x8 RGB images, a different gray level per image."""
    for split, per_class in counts.items():
        for cls, count in per_class.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                level = 40 * CLASSES.index(cls) + 10 * i
                Image.new("RGB", (8, 8), (level, level, level)).save(root / split / cls / f"{i}.png")
    return root


def _config(root: Path, out: Path) -> dict[str, Any]:
    return {
        "threads": 1,
        "device": "cpu",
        "student": STUDENT,
        "data": {"dataset": "imagefolder", "root": str(root), "image_size": 8, "batch_size": 4, "num_workers": 0},
        "train": {"epochs": 1, "max_steps_per_epoch": 2},
        "output": {"dir": str(out), "name": "run"},
        "log": {"progress": False, "loggers": [], "verbose": False},
    }


def test_eval_with_a_config_and_a_weights_file_needs_only_the_val_split(tmp_path, monkeypatch) -> None:
    root = _image_folders(tmp_path / "data", {"val": {"a": 2, "b": 1, "c": 1}})
    assert not (root / "train").exists()
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(_config(tmp_path / "elsewhere", tmp_path / "runs")))
    net = cnn(num_classes=3, widths=[4, 8])
    with torch.no_grad():  # always predicts class 0 ('a'): 2 of the 4 val images are right
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    weights = tmp_path / "weights.pt"
    torch.save(net.state_dict(), weights)
    summaries: list[dict[str, Any]] = []
    monkeypatch.setattr(evaluation, "print_summary", summaries.append)

    args = ["eval", "-c", str(config_path), "--checkpoint", str(weights), "--data", str(root)]
    assert main(args) == 0
    metrics = summaries[0]["student"]["metrics"]
    assert metrics["val/acc1"] == pytest.approx(50.0)
    assert metrics["val/acc3"] == pytest.approx(100.0)


@pytest.fixture
def trained_run(tmp_path: Path) -> Path:
    root = _image_folders(tmp_path / "data", {"train": dict.fromkeys(CLASSES, 4), "val": dict.fromkeys(CLASSES, 1)})
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(_config(root, tmp_path / "runs")))
    assert main(["train", "-c", str(config_path)]) == 0
    return tmp_path / "runs" / "run"


def test_export_works_after_the_dataset_was_deleted(trained_run: Path, tmp_path: Path, capsys) -> None:
    shutil.rmtree(tmp_path / "data")
    out = tmp_path / "exported"
    assert main(["export", str(trained_run), "--out", str(out), "--format", "safetensors", "torchscript"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["student.safetensors", "student.torchscript.pt"]

    ckpt = load_checkpoint(trained_run / "checkpoints" / "best.pt")
    assert ckpt["classes"] == CLASSES
    net = cnn(num_classes=3, widths=[4, 8]).eval()
    net.load_state_dict(ckpt["student"])
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(out / "student.torchscript.pt"))(x), net(x))
    assert "not exported" not in capsys.readouterr().out


def test_eval_of_a_missing_checkpoint_names_it(trained_run: Path, capsys) -> None:
    capsys.readouterr()
    assert main(["eval", str(trained_run), "--checkpoint", str(trained_run / "nope.pt")]) == 2
    assert "nope.pt' does not exist" in capsys.readouterr().err
