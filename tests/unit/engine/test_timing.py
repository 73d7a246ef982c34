"""StepTimer, and the per-step time breakdown the Trainer logs and shows."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from kdforge.app.pipeline import train
from kdforge.data.digits import DigitsDataset
from kdforge.engine.timing import StepTimer, progress_info
from kdforge.models.zoo import cnn

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
TIME_KEYS = ("time/data_ms", "time/teacher_ms", "time/student_ms", "time/optimizer_ms")


class _Sleepy(nn.Module):
    """A model that sleeps before each forward: a stand-in for a slow teacher."""

    def __init__(self, model: nn.Module, seconds: float) -> None:
        super().__init__()
        self.model, self.seconds = model, seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return self.model(x)


def slow_teacher(num_classes: int, in_chans: int, widths: list[int], sleep_ms: float = 20.0) -> nn.Module:
    return _Sleepy(cnn(num_classes, in_chans, widths), sleep_ms / 1e3)


class _SlowDigits(DigitsDataset):
    def __init__(self, split: str, sleep_ms: float) -> None:
        super().__init__(split)
        self.seconds = sleep_ms / 1e3

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        time.sleep(self.seconds)
        return super().__getitem__(index)


def slow_digits(split: str, sleep_ms: float = 2.0) -> DigitsDataset:
    """Digits whose training samples each take `sleep_ms` to load (validation stays fast)."""
    return _SlowDigits(split, sleep_ms) if split == "train" else DigitsDataset(split)


def _train_records(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "train"]


# --- StepTimer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_nested_sections_add_up(device):
    timer = StepTimer(torch.device(device))
    for _ in range(2):
        with timer.section("outer"):
            with timer.section("inner"):
                time.sleep(0.02)
            time.sleep(0.01)
    totals = timer.totals()
    assert totals["inner"] == pytest.approx(0.04, abs=0.015)
    assert totals["outer"] - totals["inner"] == pytest.approx(0.02, abs=0.015)
    assert dict(timer.calls) == {"outer": 2, "inner": 2}
    timer.reset()
    assert timer.totals() == {} and not timer.calls


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_sections_do_not_synchronize():
    timer = StepTimer(torch.device("cuda"))
    x = torch.randn(256, 256, device="cuda")
    torch.cuda.set_sync_debug_mode("error")  # any host-device sync inside raises
    try:
        for _ in range(3):
            with timer.section("matmul"):
                x = x @ x / 256
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert timer.totals()["matmul"] > 0


# --- the Trainer's breakdown ----------------------------------------------------------------------


def test_a_slow_teacher_dominates_the_step(make_config):
    teacher = {"source": "import", "name": f"{__name__}:slow_teacher", "kwargs": {"sleep_ms": 20.0}}
    result = train(make_config(teacher=teacher, train={"epochs": 1}))

    last = _train_records(result.run_dir)[-1]
    assert all(math.isfinite(last[key]) and last[key] >= 0 for key in TIME_KEYS), last
    assert 19.5 <= last["time/teacher_ms"] <= 40.0  # one 20 ms teacher forward per step
    assert last["time/teacher_ms"] > last["time/data_ms"] + last["time/student_ms"] + last["time/optimizer_ms"]
    step_ms = 1e3 * 32 / last["samples_per_s"]  # wall-clock per step of 32 samples
    assert 0.8 * step_ms <= sum(last[key] for key in TIME_KEYS) <= step_ms  # the parts cover the step
    shown = progress_info(last)  # the progress bar's text
    shares = dict(re.findall(r"(data|teacher|student|opt) (\d+)%", shown))
    assert set(shares) == {"data", "teacher", "student", "opt"} and int(shares["teacher"]) > 50, shown


def test_a_slow_dataset_shows_as_data_time(make_config):
    config = make_config(
        data={"dataset": "import", "factory": f"{__name__}:slow_digits", "kwargs": {"sleep_ms": 2.0}, "batch_size": 8},
        train={"epochs": 1, "max_steps_per_epoch": 4},
    )
    records = _train_records(train(config).run_dir)
    assert all(set(TIME_KEYS) <= set(r) and "data_s" not in r for r in records)
    last = records[-1]
    assert last["time/data_ms"] >= 15.0  # 8 samples x 2 ms
    assert last["time/data_ms"] > last["time/teacher_ms"] + last["time/student_ms"] + last["time/optimizer_ms"]
