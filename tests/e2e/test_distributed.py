"""torchrun with 2 CPU processes (gloo): the same student as one process with the same global batch, files
written by rank 0 only, and resume under DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kdforge.app.pipeline import train
from kdforge.core.config import validate_config
from kdforge.engine.checkpoint import load_checkpoint

ROOT = Path(__file__).parents[2]
MLP = {"source": "import", "name": "tests.unit.factories:mlp"}  # no batch statistics: per-process BN would differ


def _config(tmp_path: Path, batch_size: int, name: str) -> dict:
    return {
        "threads": 1,
        "teacher": {**MLP, "kwargs": {"hidden": 64}},
        "student": {**MLP, "kwargs": {"hidden": 16}},
        "data": {
            "dataset": "digits",
            "image_size": 8,
            "in_chans": 1,
            "mean": [0.0],
            "std": [1.0],
            "batch_size": batch_size,
            "num_workers": 0,
        },
        "distill": {"task_weight": 0.5, "terms": [{"loss": "kd", "weight": 0.5, "temperature": 4.0}]},
        "train": {
            "epochs": 2,
            "max_steps_per_epoch": 5,
            "optimizer": {"name": "adamw", "lr": 0.01},
            "schedule": {"name": "constant"},
        },
        "output": {"dir": str(tmp_path / "runs"), "name": name},
        "log": {"progress": False, "loggers": [], "every_steps": 1},
    }


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "kdforge",
        "train",
        *args,
    ]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_train_the_same_student_as_one_and_resume(tmp_path):
    single = train(validate_config(_config(tmp_path, batch_size=32, name="single")))
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, batch_size=16, name="ddp")))  # 2 x 16 = the global 32

    first = _torchrun("-c", str(path), "--set", "train.epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    second = _torchrun("--resume", str(tmp_path / "runs" / "ddp"), "--set", "train.epochs=2")
    assert second.returncode == 0, second.stderr[-3000:]

    ours = load_checkpoint(tmp_path / "runs" / "ddp" / "checkpoints" / "last.pt")
    reference = load_checkpoint(single.run_dir / "checkpoints" / "last.pt")
    assert ours["state"]["global_step"] == reference["state"]["global_step"] == 10
    for key, value in reference["student"].items():
        torch.testing.assert_close(ours["student"][key], value, rtol=1e-5, atol=1e-5, msg=key)
    # Metrics were summed over both processes' halves of the val set: the full set's accuracy.
    records = [json.loads(line) for line in (tmp_path / "runs" / "ddp" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["kind"] == "val"]
    single_val = [json.loads(line) for line in (single.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in val] == [1, 2]
    assert val[-1]["val/acc1"] == pytest.approx([r for r in single_val if r["kind"] == "val"][-1]["val/acc1"], abs=0.5)
    # Only rank 0 wrote: one run directory, one record per optimizer step.
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp", "single"]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 11))
