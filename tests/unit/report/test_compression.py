"""compression_report: each model's figures against independent counts, the ratios, and ``kdforge profile``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import yaml
from safetensors.torch import save_model
from torch import nn

from kdforge.app.cli import main
from kdforge.app.report.compression import compression_report, ratio_line
from kdforge.core.config import RunConfig, validate_config
from kdforge.core.errors import KDForgeError

LINEAR = "tests.unit.report.test_compression:linear_student"


def linear_student(num_classes: int = 1000) -> nn.Module:
    """3x8x8 inputs: 192 * num_classes MACs."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))


def _config(teacher: dict, student: dict, **data: object) -> RunConfig:
    return validate_config({"teacher": teacher, "student": student, "data": {"num_classes": 10, **data}})


def _safetensors_data_bytes(model: nn.Module, path: Path) -> int:
    """Length of the saved file less its 8-byte length prefix and its JSON header."""
    save_model(model, str(path))
    blob = path.read_bytes()
    return len(blob) - 8 - int.from_bytes(blob[:8], "little")


def test_timm_pair_matches_independent_counts(tmp_path: Path) -> None:
    config = _config({"name": "resnet18"}, {"name": "resnet10t"}, image_size=32)
    report = compression_report(config, runs=2)
    for profile, name in ((report["teachers"]["teacher"], "resnet18"), (report["student"], "resnet10t")):
        reference = timm.create_model(name, num_classes=10)
        assert profile["name"] == name and profile["input_shape"] == [3, 32, 32]
        assert profile["params"] == sum(p.numel() for p in reference.parameters())
        assert profile["size_bytes"] == _safetensors_data_bytes(reference, tmp_path / f"{name}.safetensors")
        assert profile["macs"] > 0 and profile["latency_ms"] > 0
    teacher, student = report["teachers"]["teacher"], report["student"]
    assert report["compression"] == pytest.approx(teacher["params"] / student["params"])
    assert report["size_ratio"] == pytest.approx(teacher["size_bytes"] / student["size_bytes"])
    assert report["macs_ratio"] == pytest.approx(teacher["macs"] / student["macs"])
    assert report["speedup"] == pytest.approx(teacher["latency_ms"] / student["latency_ms"])


def test_hand_counted_macs_and_input_sizes() -> None:
    teacher = {"name": "resnet10t", "input": {"size": 16}}
    report = compression_report(_config(teacher, {"source": "import", "name": LINEAR}, image_size=8), runs=1)
    assert report["student"]["macs"] == 3 * 8 * 8 * 10  # 1920
    assert report["student"]["input_shape"] == [3, 8, 8]
    assert report["teachers"]["teacher"]["input_shape"] == [3, 16, 16]  # its own input.size
    overridden = compression_report(_config(teacher, {"name": "resnet10t"}), input_size=24, runs=1)
    assert overridden["teachers"]["teacher"]["input_shape"] == overridden["student"]["input_shape"] == [3, 24, 24]


def test_without_teacher_no_ratios_and_bad_runs_refused() -> None:
    config = validate_config({"student": {"source": "import", "name": LINEAR}, "data": {"image_size": 8}})
    report = compression_report(config, runs=1)
    assert report["teachers"] == {} and report["compression"] is None and ratio_line(report) == ""
    assert report["student"]["params"] == 192 * 1000 + 1000  # the factory's default class count
    with pytest.raises(KDForgeError, match="runs must be at least 1"):
        compression_report(config, runs=0)


def test_cli_prints_table_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = {
        "teacher": {"name": "resnet10t"},
        "student": {"source": "import", "name": LINEAR},
        "data": {"num_classes": 10, "image_size": 8},
    }
    (tmp_path / "pair.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "report.json"
    args = ["profile", "-c", str(tmp_path / "pair.yaml"), "--set", "data.num_classes=5", "--runs", "1"]
    assert main([*args, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "resnet10t" in printed and "linear_student" in printed and "3x8x8" in printed
    report = json.loads(out.read_text())
    assert report["student"]["macs"] == 3 * 8 * 8 * 5
    assert f"{report['compression']:.1f}x fewer parameters" in printed and "faster on CPU" in printed
