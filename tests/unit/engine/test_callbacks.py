"""Callbacks: a user's own from an import path runs on every hook, changes the run, keeps its state across a
resume; a bad one is a named error."""

from __future__ import annotations

from typing import Any

import pytest

from kdforge.app.pipeline import train
from kdforge.app.resume import resume_config
from kdforge.core.errors import ConfigError
from kdforge.engine.callbacks import Callback
from kdforge.engine.checkpoint import load_checkpoint

HERE = __name__  # the import path of this module, as a config names it
CALLS: list[tuple[str, int]] = []  # (hook, global_step) of the last run's StopAfter


class StopAfter(Callback):
    """Stops the run after `steps` optimizer steps and records every hook it sees."""

    def __init__(self, steps: int, note: str = "") -> None:
        self.steps, self.note = steps, note
        self.seen_steps = 0
        CALLS.clear()

    def _record(self, hook: str, trainer: Any) -> None:
        CALLS.append((hook, trainer.state.global_step))

    def on_fit_start(self, trainer: Any) -> None:
        self._record("fit_start", trainer)

    def on_epoch_start(self, trainer: Any) -> None:
        self._record("epoch_start", trainer)

    def on_before_backward(self, trainer: Any, out: dict[str, Any]) -> None:
        assert out["loss"].requires_grad and "task" in out["parts"]
        self._record("before_backward", trainer)

    def on_step_end(self, trainer: Any, applied: bool, record: dict[str, float] | None) -> None:
        self._record("step_end", trainer)
        self.seen_steps += 1
        if trainer.state.global_step == self.steps:
            trainer.request_stop(f"{self.note}stopped by StopAfter at step {self.steps}")

    def on_evaluation_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        assert "val/acc1" in metrics
        self._record("evaluation_end", trainer)

    def on_epoch_end(self, trainer: Any) -> None:
        self._record("epoch_end", trainer)

    def on_save_checkpoint(self, trainer: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint["stop_after"] = {"seen_steps": self.seen_steps}

    def on_load_checkpoint(self, trainer: Any, checkpoint: dict[str, Any]) -> None:
        self.seen_steps = checkpoint["stop_after"]["seen_steps"]
        self._record("load_checkpoint", trainer)

    def on_fit_end(self, trainer: Any) -> None:
        self._record("fit_end", trainer)


class NotACallback:
    pass


def _stop_after(steps: int, **kwargs: Any) -> dict[str, Any]:
    return {"callbacks": [{"name": f"{HERE}:StopAfter", "kwargs": {"steps": steps, **kwargs}}]}


def test_a_callback_from_an_import_path_sees_every_hook_and_stops_the_run(make_config):
    result = train(make_config(train={"epochs": 3, "max_steps_per_epoch": 4, **_stop_after(6)}))
    assert result.summary["steps"] == 6 and result.summary["stopped_early"]
    assert result.summary["epochs_run"] == 2  # stopped inside epoch 2, which then ended as usual
    hooks = [hook for hook, _ in CALLS]
    assert hooks[0] == "fit_start" and hooks[-1] == "fit_end"
    assert hooks.count("step_end") == hooks.count("before_backward") == 6
    assert hooks.count("epoch_start") == 2 and hooks.count("evaluation_end") == 2 and hooks.count("epoch_end") == 2
    # the epoch's end comes after its last step and its evaluation
    assert CALLS[CALLS.index(("evaluation_end", 4)) - 1] == ("step_end", 4)
    assert ("epoch_end", 4) in CALLS


def test_the_callbacks_state_travels_in_checkpoints_and_comes_back_on_resume(make_config, tmp_path):
    first = train(make_config(train={"epochs": 1, "max_steps_per_epoch": 4, **_stop_after(100)}))
    saved = load_checkpoint(first.run_dir / "checkpoints" / "last.pt")
    assert saved["stop_after"] == {"seen_steps": 4}
    config, run_dir, checkpoint = resume_config(first.run_dir, ["train.epochs=2"])
    train(config, resume=checkpoint, run_dir=run_dir)
    assert CALLS[0] == ("load_checkpoint", 4)  # restored before the fit starts
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["stop_after"] == {"seen_steps": 8}


def test_user_callbacks_run_after_the_built_in_ones(make_config):
    from kdforge.engine.callbacks import build_callbacks, standard_callbacks
    from kdforge.engine.callbacks.checkpointing import Checkpointing
    from kdforge.engine.callbacks.ema import EMA

    config = make_config(train={"ema": {"decay": 0.9}, **_stop_after(1)})
    reported = {"fitness": 0.0}
    built = standard_callbacks(config, show_progress=False, reported=reported) + build_callbacks(config.train.callbacks)
    assert isinstance(built[0], EMA) and isinstance(built[-1], StopAfter)
    assert any(isinstance(c, Checkpointing) for c in built)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": f"{HERE}:StopAftr"}, r"train\.callbacks\.0.*no attribute 'StopAftr'.*Did you mean 'StopAfter'"),
        ({"name": "stop_after"}, r"train\.callbacks\.0.*not an import path.*package\.module:ClassName"),
        ({"name": f"{HERE}:NotACallback"}, r"not a kdforge\.engine\.callbacks\.Callback subclass"),
        ({"name": f"{HERE}:StopAfter", "kwargs": {"step": 3}}, r"no parameter 'step'.*Did you mean 'steps'"),
        ({"name": f"{HERE}:StopAfter"}, r"callback .*StopAfter' needs steps"),
        ({"name": "no_such_package.cb:Thing"}, r"cannot import module 'no_such_package\.cb'"),
    ],
)
def test_a_bad_callback_is_named_before_anything_is_built(make_config, entry, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        make_config(train={"callbacks": [entry]})
    assert not (tmp_path / "runs").exists()
