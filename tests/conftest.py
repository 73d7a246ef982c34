"""Shared fixtures: tiny, seeded runs on the bundled digits (CPU, a few seconds each)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from kdforge.app.checks import check_config
from kdforge.core.config import RunConfig, deep_merge, validate_config

TINY_CNN = {
    "source": "import",
    "name": "kdforge.models.zoo:cnn",
    "kwargs": {"in_chans": 1, "widths": [8, 16]},
}
TEACHER_CNN = {
    "source": "import",
    "name": "kdforge.models.zoo:cnn",
    "kwargs": {"in_chans": 1, "widths": [16, 32]},
}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def make_config(tmp_path: Path):
    """``make_config(**sections)``: a small digits KD config, deep-merged with the given sections."""

    def make(**sections: Any) -> RunConfig:
        base = {
            "threads": 1,
            "teacher": TEACHER_CNN,
            "student": TINY_CNN,
            "data": {
                "dataset": "digits",
                "image_size": 8,
                "in_chans": 1,
                "batch_size": 32,
                "num_workers": 0,
                "mean": [0.0],
                "std": [1.0],
            },
            "distill": {"task_weight": 0.5, "terms": [{"loss": "kd", "weight": 0.5, "temperature": 4.0}]},
            "train": {"epochs": 2, "max_steps_per_epoch": 6, "optimizer": {"name": "adamw", "lr": 0.01}},
            "output": {"dir": str(tmp_path / "runs"), "name": "run"},
            "log": {"progress": False, "loggers": []},
        }
        return check_config(validate_config(deep_merge(base, sections)))

    return make
