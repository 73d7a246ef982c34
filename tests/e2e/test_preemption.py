"""A stop signal mid-epoch: the step finishes, last.pt is complete, and the same command resumes to the very
weights an uninterrupted run ends with."""

from __future__ import annotations

import signal

import pytest
import torch
import yaml

from kdforge.app.cli import main
from kdforge.core.runfiles import PREEMPTED as PREEMPTED_MARKER
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.engine.preemption import StopSignals

STEPS, BATCH = 6, 32


def _config(tmp_path, name: str, flag: str) -> dict:
    return {
        "threads": 1,
        "teacher": {
            "source": "import",
            "name": "kdforge.models.zoo:cnn",
            "kwargs": {"in_chans": 1, "widths": [16, 32]},
        },
        "student": {"source": "import", "name": "kdforge.models.zoo:cnn", "kwargs": {"in_chans": 1, "widths": [8, 16]}},
        "data": {
            "dataset": "import",
            "factory": "tests.unit.factories:digits_that_signal",
            "kwargs": {"after": BATCH * 3 + 5, "flag": flag},  # while loading batch 4 of epoch 1
            "num_classes": 10,
            "in_chans": 1,
            "image_size": 8,
            "mean": [0.0],
            "std": [1.0],
            "batch_size": BATCH,
            "num_workers": 0,
        },
        "distill": {"task_weight": 0.5, "terms": [{"loss": "kd", "weight": 0.5}]},
        "train": {"epochs": 2, "max_steps_per_epoch": STEPS, "optimizer": {"name": "adamw", "lr": 0.01}},
        "output": {"dir": str(tmp_path / "runs"), "name": name},
        "log": {"progress": False, "loggers": []},
    }


def _write(tmp_path, name: str, config: dict):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_sigterm_mid_epoch_writes_last_and_the_same_command_resumes_exactly(tmp_path, capsys):
    never = tmp_path / "never.flag"
    never.touch()  # the reference run's dataset never signals
    assert main(["train", "-c", _write(tmp_path, "ref", _config(tmp_path, "ref", str(never)))]) == 0

    command = ["train", "-c", _write(tmp_path, "run", _config(tmp_path, "run", str(tmp_path / "once.flag")))]
    assert main(command) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "stopped by SIGTERM after optimizer step 4 (epoch 1, batch 4)" in " ".join(err.split())
    run = tmp_path / "runs" / "run"
    stopped = load_checkpoint(run / "checkpoints" / "last.pt")  # complete: it loads and holds the position
    assert (stopped["state"]["epoch"], stopped["state"]["step_in_epoch"], stopped["state"]["global_step"]) == (0, 4, 4)
    assert (run / PREEMPTED_MARKER).is_file() and not (run / "summary.json").exists()

    assert main(command) == 0  # the same command: resumes the stopped run, not a new "run-2"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ref", "run"]
    assert not (run / PREEMPTED_MARKER).exists() and (run / "summary.json").is_file()
    resumed = load_checkpoint(run / "checkpoints" / "last.pt")
    reference = load_checkpoint(tmp_path / "runs" / "ref" / "checkpoints" / "last.pt")
    assert resumed["state"]["global_step"] == reference["state"]["global_step"] == 2 * STEPS
    for key, value in reference["student"].items():
        assert torch.equal(resumed["student"][key], value), key


def test_a_stopped_run_with_another_config_is_not_resumed_silently(tmp_path, capsys):
    config = _config(tmp_path, "run", str(tmp_path / "once.flag"))
    assert main(["train", "-c", _write(tmp_path, "run", config)]) == 128 + signal.SIGTERM
    config["train"]["epochs"] = 3
    assert main(["train", "-c", _write(tmp_path, "other", config)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "waits to be resumed" in err and "train.epochs" in err and "--resume" in err


def test_stop_signals_record_the_first_signal_and_a_second_ctrl_c_interrupts():
    previous = signal.getsignal(signal.SIGUSR1)
    with StopSignals() as stop:
        signal.raise_signal(signal.SIGUSR1)
        assert stop.requested and stop.received == signal.SIGUSR1
    with StopSignals() as stop, pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
        assert stop.received == signal.SIGINT
        signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGUSR1) is previous  # handlers restored
