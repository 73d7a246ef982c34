"""A run's directory: where it goes, and the record of what produced it."""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from kdforge import __version__
from kdforge.core import runfiles
from kdforge.core.config import RunConfig, save_config


def run_base(config: RunConfig) -> Path:
    """``output.dir/output.name`` (the student's name when no name is given), before any ``-2`` suffix."""
    name = config.output.name or re.sub(r"[^A-Za-z0-9_.-]+", "-", config.student.name.split(":")[-1])
    return Path(config.output.dir) / name


def new_run_dir(config: RunConfig) -> Path:
    """``output.dir/output.name``, with ``-2``, ``-3``... appended when it exists (unless exist_ok)."""
    base = run_base(config)
    path, n = base, 2
    while path.exists() and not config.output.exist_ok:
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    path.mkdir(parents=True, exist_ok=True)
    return path


def git_commit(cwd: Path | None = None) -> dict[str, object]:
    """The commit (and whether the tree was dirty) of the git repository the run was started from."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if sha.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def write_run_files(run_dir: Path, config: RunConfig, resumed: bool = False) -> None:
    """The resolved config and what produced the run (git commit, versions, command line); a resume is
    appended to ``meta.json``'s ``resumes`` so the original record is kept."""
    save_config(config, run_dir / runfiles.CONFIG)
    this = {
        "git": git_commit(),
        "kdforge": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    meta_path = run_dir / runfiles.META
    if resumed and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        meta.setdefault("resumes", []).append(this)
    else:
        meta = this
    meta_path.write_text(json.dumps(meta, indent=2))
