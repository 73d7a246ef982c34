"""Process-level settings: device, CPU threads, seeds, run directory and its metadata."""

from __future__ import annotations

import json
import os
import platform
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from kdforge import __version__
from kdforge.core.config import RunConfig, save_config
from kdforge.core.distributed import init_distributed
from kdforge.core.errors import ConfigError


def default_threads() -> int:
    """Half the usable cores (at least 1): on a busy machine OpenMP's default of every core often runs slower."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, usable // 2)


def resolve_device(name: str) -> torch.device:
    """The torch device `name` means; under torchrun a bare ``cuda`` is this process's GPU (LOCAL_RANK)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{os.environ['LOCAL_RANK']}"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device {name!r} is not a valid torch device (use auto, cpu, cuda or cuda:N).") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but CUDA is not available here; use device: cpu or auto.")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_process(config: RunConfig) -> torch.device:
    """Set threads and seeds, join the torchrun process group when there is one; return the device."""
    torch.set_num_threads(config.threads or default_threads())
    device = resolve_device(config.device)
    world = init_distributed(device.type == "cuda")
    # Each process draws its own dropout and augmentation; DDP gives every process rank 0's initial weights.
    seed_everything(config.seed + 1_000_003 * world.rank)
    return device


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
    save_config(config, run_dir / "config.yaml")
    this = {
        "git": git_commit(),
        "kdforge": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    meta_path = run_dir / "meta.json"
    if resumed and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        meta.setdefault("resumes", []).append(this)
    else:
        meta = this
    meta_path.write_text(json.dumps(meta, indent=2))
