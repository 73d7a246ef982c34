"""Process settings and the run directory: threads, devices, run folder names, meta.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from kdforge.app import rundir
from kdforge.app.rundir import new_run_dir, write_run_files
from kdforge.core.context import default_threads, resolve_device
from kdforge.core.errors import ConfigError


def _head_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def test_default_threads_is_half_the_usable_cores_and_at_least_one(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_threads() >= 1
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
        assert default_threads() == 1
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)))
        assert default_threads() == 4


def test_new_run_dir_appends_a_counter_when_the_folder_exists(make_config, tmp_path) -> None:
    config = make_config(output={"name": "exp"})
    made = [new_run_dir(config) for _ in range(3)]
    assert [p.name for p in made] == ["exp", "exp-2", "exp-3"]
    assert all(p.is_dir() and p.parent == tmp_path / "runs" for p in made)


def test_new_run_dir_reuses_the_folder_with_exist_ok(make_config) -> None:
    config = make_config(output={"name": "exp", "exist_ok": True})
    assert new_run_dir(config) == new_run_dir(config)


def test_new_run_dir_is_named_after_the_student_by_default(make_config) -> None:
    config = make_config(output={"name": None})
    assert new_run_dir(config).name == "cnn"  # from kdforge.models.zoo:cnn


def test_meta_records_commit_command_and_versions(make_config, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(sys, "argv", ["kdforge", "train", "-c", "a.yaml"])
    write_run_files(tmp_path, make_config())
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["command"] == ["kdforge", "train", "-c", "a.yaml"]
    assert meta["git"]["commit"] == _head_commit()
    assert meta["torch"] == torch.__version__
    assert "resumes" not in meta
    assert (tmp_path / "config.yaml").is_file()


def test_meta_without_git_says_so(make_config, monkeypatch, tmp_path) -> None:
    def no_git(*_args, **_kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(rundir.subprocess, "run", no_git)
    write_run_files(tmp_path, make_config())
    assert json.loads((tmp_path / "meta.json").read_text())["git"] == {"commit": None, "dirty": None}


def test_resume_appends_to_meta_and_keeps_the_original(make_config, monkeypatch, tmp_path) -> None:
    config = make_config()
    monkeypatch.setattr(sys, "argv", ["kdforge", "train", "--name", "x"])
    write_run_files(tmp_path, config)
    original = json.loads((tmp_path / "meta.json").read_text())
    for n in (1, 2):
        monkeypatch.setattr(sys, "argv", ["kdforge", "train", "--resume", f"try{n}"])
        write_run_files(tmp_path, config, resumed=True)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert {k: v for k, v in meta.items() if k != "resumes"} == original
    assert [r["command"][-1] for r in meta["resumes"]] == ["try1", "try2"]


def test_invalid_devices_are_config_errors() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="not a valid torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
