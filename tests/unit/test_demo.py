"""The demo's housekeeping: it clears only its own earlier runs. (The demo itself runs in tests/e2e.)"""

from __future__ import annotations

from pathlib import Path

from kdforge.app.demo import _clear_previous_runs, demo_configs
from kdforge.core.config import validate_config


def _run(folder: Path, with_config: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("{}\n")
    if with_config:
        (folder / "config.yaml").write_text("student: {name: x}\n")
    return folder


def test_clears_only_the_demo_runs(tmp_path: Path) -> None:
    ours = [_run(tmp_path / "teacher"), _run(tmp_path / "student-alone-seed0"), _run(tmp_path / "student-kd-seed1")]
    kept = [
        _run(tmp_path / "my-experiment"),  # someone else's run
        _run(tmp_path / "teacher-v2"),
        _run(tmp_path / "student-notes", with_config=False),  # not a run
        _run(tmp_path / "nested" / "teacher"),  # not directly in the demo folder
    ]
    (tmp_path / "README.txt").write_text("keep me")
    _clear_previous_runs(tmp_path)
    assert not any(p.exists() for p in ours)
    assert all((p / "metrics.jsonl").is_file() for p in kept)
    assert (tmp_path / "README.txt").read_text() == "keep me"


def test_missing_output_folder_is_fine(tmp_path: Path) -> None:
    _clear_previous_runs(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


def test_demo_configs_are_valid_and_name_the_folders_clear_removes(tmp_path: Path) -> None:
    configs = demo_configs(tmp_path, seed=2, teacher_checkpoint=tmp_path / "teacher" / "student.safetensors")
    names = {key: validate_config(raw).output.name for key, raw in configs.items()}
    assert names == {"teacher": "teacher", "student_alone": "student-alone-seed2", "student_kd": "student-kd-seed2"}
    for name in names.values():
        _run(tmp_path / name)
    _clear_previous_runs(tmp_path)
    assert list(tmp_path.iterdir()) == []
