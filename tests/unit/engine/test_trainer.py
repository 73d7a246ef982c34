"""Trainer behaviour: exact resume, NaN guard, early stopping, checkpoints, frozen teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from kdforge.app.pipeline import train
from kdforge.app.resume import resume_config
from kdforge.core.config import ModelSpec
from kdforge.core.errors import ConfigError, NonFiniteLossError
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.engine.evaluate import to_device
from kdforge.engine.trainer import Trainer
from kdforge.engine.update import GuardedUpdate


class _Crash(RuntimeError):
    pass


def _crash_after(monkeypatch: pytest.MonkeyPatch, steps: int) -> None:
    """Make the trainer die (like a killed process) after `steps` optimizer steps."""
    original = GuardedUpdate.__call__

    def step(self: GuardedUpdate, state, *args) -> tuple[bool, bool]:
        if state.global_step == steps:
            raise _Crash("simulated crash")
        return original(self, state, *args)

    monkeypatch.setattr(GuardedUpdate, "__call__", step)


def _final_student(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["student"]


def test_resume_inside_an_epoch_gives_identical_weights(make_config, monkeypatch, tmp_path):
    sections = dict(
        student={"kwargs": {"dropout": 0.3}},  # consumes the RNG every step
        train={
            "epochs": 2,
            "max_steps_per_epoch": 7,
            "grad_accum": 2,
            "ema": {"decay": 0.9},
            "checkpoint": {"every_steps": 5},
            "clip_grad_norm": 1.0,
        },
    )
    uninterrupted = train(make_config(**sections, output={"name": "full"}))

    _crash_after(monkeypatch, 6)  # 4 optimizer steps per epoch: step 5 is saved 2 batches into epoch 2
    with pytest.raises(_Crash):
        train(make_config(**sections, output={"name": "crashed"}))
    monkeypatch.undo()
    config, run_dir, ckpt = resume_config(tmp_path / "runs" / "crashed")
    state = load_checkpoint(ckpt)["state"]
    assert (state["global_step"], state["epoch"], state["step_in_epoch"]) == (5, 1, 2)
    resumed = train(config, resume=ckpt, run_dir=run_dir)

    full, again = _final_student(uninterrupted.run_dir), _final_student(resumed.run_dir)
    assert full.keys() == again.keys()
    for key in full:
        assert torch.equal(full[key], again[key]), key
    ema_full = load_checkpoint(uninterrupted.run_dir / "checkpoints" / "last.pt")["ema"]["module"]
    ema_again = load_checkpoint(resumed.run_dir / "checkpoints" / "last.pt")["ema"]["module"]
    assert all(torch.equal(ema_full[k], ema_again[k]) for k in ema_full)
    assert resumed.metrics == uninterrupted.metrics


def test_nan_batch_is_skipped_and_counted(make_config):
    # One training image with NaN pixels: the batch holding it is skipped once per epoch.
    config = make_config(
        data={"dataset": "import", "factory": "tests.unit.factories:digits_with_nan", "kwargs": {"bad": 1}},
        train={"epochs": 2, "max_steps_per_epoch": None},
    )
    result = train(config)
    assert result.summary["nonfinite_steps"] == 2
    weights = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["student"]
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    last_val = [r for r in records if r["kind"] == "val"][-1]
    assert last_val["val/acc1"] > 30.0  # it still learned


def test_nan_every_step_stops_with_a_clear_error(make_config):
    config = make_config(
        data={
            "dataset": "import",
            "factory": "tests.unit.factories:digits_with_nan",
            "kwargs": {"bad": 10_000},
        },
        train={"max_nonfinite_steps": 3},
    )
    with pytest.raises(NonFiniteLossError, match="3 steps in a row"):
        train(config)


def test_early_stopping_stops_at_the_expected_epoch(make_config):
    # A learning rate of ~0 keeps the metric constant, so it never improves after epoch 1.
    config = make_config(
        train={
            "epochs": 10,
            "optimizer": {"lr": 1e-30},
            "early_stopping": {"metric": "val/acc1", "mode": "max", "patience": 3},
        }
    )
    result = train(config)
    assert result.summary["epochs_run"] == 4
    assert result.summary["stopped_early"] is True
    state = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["state"]
    assert state["bad_epochs"] == 3 and state["stopped_early"]


def test_checkpoint_files_and_pruning(make_config):
    config = make_config(
        train={
            "epochs": 4,
            "max_steps_per_epoch": 2,
            "checkpoint": {"every_epochs": 1, "every_steps": 1, "keep_last": 2},
        }
    )
    result = train(config)
    names = sorted(p.name for p in (result.run_dir / "checkpoints").iterdir())
    assert names == ["best.pt", "epoch_3.pt", "epoch_4.pt", "last.pt", "step_7.pt", "step_8.pt"]
    ckpt = load_checkpoint(result.run_dir / "checkpoints" / "best.pt")
    assert ckpt["metrics"]["val/acc1"] == result.best_metrics["val/acc1"]
    for name in ("config.yaml", "meta.json", "metrics.jsonl", "summary.json", "student.safetensors"):
        assert (result.run_dir / name).is_file(), name
    assert "commit" in json.loads((result.run_dir / "meta.json").read_text())["git"]


def test_teacher_weights_are_bit_identical_after_training(make_config, monkeypatch, tmp_path):
    from kdforge.app import build
    from kdforge.distill import teachers
    from kdforge.models.zoo import cnn

    torch.manual_seed(3)
    path = tmp_path / "teacher.pt"
    torch.save({"state_dict": cnn(num_classes=10, in_chans=1, widths=[16, 32]).state_dict()}, path)
    built: dict[str, nn.Module] = {}  # the live modules the run trains with, by role
    real_build_model = build.build_model

    def recording_build_model(spec, num_classes=None, role="model"):
        built[role] = real_build_model(spec, num_classes, role)
        return built[role]

    monkeypatch.setattr(build, "build_model", recording_build_model)
    monkeypatch.setattr(teachers, "build_model", recording_build_model)
    result = train(make_config(teacher={"checkpoint": str(path)}))

    assert result.summary["steps"] == 12  # the student did train
    saved = torch.load(path, weights_only=True)["state_dict"]
    live = built["teacher"].state_dict()  # the module the run used, BN statistics included
    assert live.keys() == saved.keys()
    for key in saved:
        assert torch.equal(live[key], saved[key]), key
    assert all(p.grad is None for p in built["teacher"].parameters())


def test_grad_accumulation_matches_a_big_batch(make_config):
    # Two micro-batches of 16 with accumulation take the same steps as batches of 32.
    mlp = ModelSpec(source="import", name="tests.unit.factories:mlp", kwargs={"hidden": 32})
    big = make_config(data={"batch_size": 32}, train={"epochs": 1, "max_steps_per_epoch": 4})
    small = make_config(
        data={"batch_size": 16},
        output={"name": "accum"},
        train={"epochs": 1, "max_steps_per_epoch": 8, "grad_accum": 2},
    )
    big.student = small.student = mlp
    big, small = train(big), train(small)
    a, b = _final_student(big.run_dir), _final_student(small.run_dir)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    assert big.summary["steps"] == small.summary["steps"] == 4


# --- non-finite gradients -------------------------------------------------------------------------

BAD_GRADS = "tests.unit.factories:mlp_with_infinite_grads"


def test_infinite_gradients_with_a_finite_loss_are_skipped_without_clipping(make_config):
    # Every third backward pass gives an infinite gradient: 4 of the 12 steps are skipped.
    config = make_config(train={"epochs": 2, "max_steps_per_epoch": 6, "clip_grad_norm": None})
    config.student = ModelSpec(source="import", name=BAD_GRADS, kwargs={"every": 3})
    result = train(config)
    assert result.summary["nonfinite_steps"] == 4
    assert result.summary["steps"] == 12
    ckpt = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")
    assert ckpt["state"]["nonfinite_total"] == 4
    assert all(torch.isfinite(w).all() for w in ckpt["student"].values() if w.is_floating_point())
    assert all(
        torch.isfinite(v).all()
        for s in ckpt["optimizer"]["state"].values()
        for v in s.values()
        if isinstance(v, torch.Tensor) and v.is_floating_point()
    )  # AdamW's moments never saw an infinite gradient
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["nonfinite_total"] for r in records if r["kind"] == "train"][-1] == 4


def test_infinite_gradients_every_step_stop_with_an_error_naming_gradients(make_config):
    config = make_config(train={"max_nonfinite_steps": 3, "checkpoint": {"every_steps": 1}})
    config.student = ModelSpec(source="import", name=BAD_GRADS, kwargs={"every": 1})
    with pytest.raises(NonFiniteLossError, match="3 steps in a row") as info:
        train(config)
    assert "gradient" in str(info.value)
    ckpt = load_checkpoint(Path(config.output.dir) / config.output.name / "checkpoints" / "last.pt")
    assert ckpt["state"]["global_step"] == 2 and ckpt["state"]["nonfinite_streak"] == 2
    assert all(torch.isfinite(w).all() for w in ckpt["student"].values() if w.is_floating_point())


# --- evaluation and checkpoint schedules ----------------------------------------------------------


def test_epoch_checkpoints_are_written_for_epochs_that_were_not_evaluated(make_config):
    config = make_config(
        train={"epochs": 3, "max_steps_per_epoch": 2, "eval_every_epochs": 2, "checkpoint": {"every_epochs": 1}}
    )
    result = train(config)
    checkpoints = result.run_dir / "checkpoints"
    assert {"epoch_1.pt", "epoch_2.pt", "epoch_3.pt"} <= {p.name for p in checkpoints.iterdir()}
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "val"] == [2, 3]  # 2nd, and the last epoch
    epoch_1 = load_checkpoint(checkpoints / "epoch_1.pt")
    assert epoch_1["state"]["epoch"] == 1 and epoch_1["metrics"] == {}
    assert "val/acc1" in load_checkpoint(checkpoints / "epoch_2.pt")["metrics"]


@pytest.mark.parametrize(
    ("section", "typo", "suggestion"),
    [
        ({"early_stopping": {"metric": "val/acc"}}, "val/acc", "val/acc1"),
        ({"checkpoint": {"best_metric": "val/los"}}, "val/los", "val/loss"),
    ],
)
def test_metric_name_typo_fails_before_training(make_config, monkeypatch, tmp_path, section, typo, suggestion):
    steps: list[int] = []
    monkeypatch.setattr(GuardedUpdate, "__call__", lambda self, *args: steps.append(1))
    with pytest.raises(ConfigError) as info:  # at config validation or when the trainer is built
        train(make_config(train=section))
    message = str(info.value)
    assert repr(typo) in message and repr(suggestion) in message
    assert steps == []
    assert not list(tmp_path.glob("runs/*/checkpoints"))


# --- resume ---------------------------------------------------------------------------------------


def test_resume_with_ema_switched_on_starts_the_ema_from_the_resumed_weights(make_config, monkeypatch, tmp_path):
    first = train(make_config(train={"epochs": 1}))
    assert load_checkpoint(first.run_dir / "checkpoints" / "last.pt").get("ema") is None
    resumed_weights = _final_student(first.run_dir)

    seen: dict[str, dict[str, torch.Tensor]] = {}
    original_resume = Trainer.resume

    def recording_resume(self: Trainer, path) -> None:
        original_resume(self, path)
        seen["ema"] = {k: v.clone() for k, v in self.eval_network.state_dict().items()}  # the EMA's copy
        seen["student"] = {k: v.clone() for k, v in self.student.state_dict().items()}

    monkeypatch.setattr(Trainer, "resume", recording_resume)
    config, run_dir, ckpt = resume_config(first.run_dir, ["train.ema={decay: 0.9, warmup: false}", "train.epochs=2"])
    train(config, resume=ckpt, run_dir=run_dir)

    assert seen["ema"].keys() == resumed_weights.keys()
    for key, value in resumed_weights.items():
        assert torch.equal(seen["student"][key], value), key
        assert torch.equal(seen["ema"][key], value), key
    final = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert final["ema"]["updates"] == 6  # updated on each step after the resume only
    meta = json.loads((run_dir / "meta.json").read_text())
    assert len(meta["resumes"]) == 1 and "git" in meta  # the original record is kept


# --- channels-last --------------------------------------------------------------------------------


CHANNELS_LAST = CL = torch.channels_last
RGB = dict(
    data={"in_chans": 3, "mean": [0.0] * 3, "std": [1.0] * 3},
    student={"kwargs": {"in_chans": 3}},
    teacher={"kwargs": {"in_chans": 3}},
)


def _trainers(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Trainer, list[bool]]]:
    """The Trainers fitted from now on, each with whether its student's inputs (train and eval) were channels-last."""
    made: list[tuple[Trainer, list[bool]]] = []
    original = Trainer.train_step

    def train_step(self: Trainer, *args, **kwargs) -> None:
        if not made or made[-1][0] is not self:  # the first step: the EMA exists by now
            seen: list[bool] = []
            for net in (self.student, self.eval_network):
                net.register_forward_pre_hook(
                    lambda _m, x: seen.append(x[0].is_contiguous(memory_format=CHANNELS_LAST))
                )
            made.append((self, seen))
        original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    return made


def test_channels_last_student_trains_to_the_same_weights(make_config, monkeypatch):
    trainers = _trainers(monkeypatch)
    for name, channels_last in (("plain", False), ("channels_last", True)):
        train_cfg = {"epochs": 1, "ema": {"decay": 0.9}, "channels_last": channels_last}
        train(make_config(**RGB, train=train_cfg, output={"name": name}))
    (plain, plain_seen), (fast, fast_seen) = trainers

    assert fast.eval_network is not fast.student  # the EMA's copy
    for net in (fast.student, fast.eval_network):
        convs = [p for p in net.parameters() if p.dim() == 4]
        assert convs and all(p.is_contiguous(memory_format=CHANNELS_LAST) and not p.is_contiguous() for p in convs)
    assert fast_seen and all(fast_seen)  # training and evaluation inputs
    assert plain_seen and not any(plain_seen)
    expected = plain.student.state_dict()
    for key, value in fast.student.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-5, msg=key)


def test_to_device_makes_only_4d_inputs_channels_last():
    images = {"input": torch.randn(2, 3, 4, 4), "target": torch.zeros(2, 3, 4, 4)}
    moved = to_device(images, torch.device("cpu"), channels_last=True)
    assert moved["input"].is_contiguous(memory_format=CHANNELS_LAST) and not moved["input"].is_contiguous()
    assert moved["target"].is_contiguous()  # only the input is converted
    tokens = torch.randn(2, 5, 7)
    assert to_device({"input": tokens}, torch.device("cpu"), channels_last=True)["input"] is tokens


def test_checkpoint_names_follow_the_configured_layout(make_config):
    from kdforge.app.evaluation import checkpoint_path

    checkpoint = {
        "every_epochs": 1,
        "keep_last": 2,
        "best_name": "best_distillation_model.pth",
        "epoch_name": "distillation_epoch_{epoch}.pth",
    }
    result = train(make_config(train={"epochs": 3, "max_steps_per_epoch": 2, "checkpoint": checkpoint}))
    names = sorted(p.name for p in (result.run_dir / "checkpoints").iterdir())
    assert names == ["best_distillation_model.pth", "distillation_epoch_2.pth", "distillation_epoch_3.pth", "last.pt"]
    assert checkpoint_path(result.run_dir, "best") == result.run_dir / "checkpoints" / "best_distillation_model.pth"


@pytest.mark.parametrize(
    ("field", "name"), [("epoch_name", "epoch.pth"), ("step_name", "step_{epoch}.pt"), ("best_name", "last.pt")]
)
def test_checkpoint_names_without_their_number_or_clashing_with_last_are_refused(make_config, field, name):
    from kdforge.core.errors import ConfigError

    with pytest.raises((ConfigError, ValueError), match=field.split("_")[0] if field != "best_name" else "last.pt"):
        make_config(train={"checkpoint": {field: name}})


def test_resume_inside_an_epoch_with_another_grad_accum_finishes_the_epoch(make_config, monkeypatch, tmp_path):
    sections = dict(train={"epochs": 1, "max_steps_per_epoch": 10, "checkpoint": {"every_steps": 4}})
    _crash_after(monkeypatch, 5)
    with pytest.raises(_Crash):
        train(make_config(**sections, output={"name": "accum"}))
    monkeypatch.undo()
    config, run_dir, ckpt = resume_config(tmp_path / "runs" / "accum", ["train.grad_accum=3"])
    assert load_checkpoint(ckpt)["state"]["step_in_epoch"] == 4
    result = train(config, resume=ckpt, run_dir=run_dir)
    assert result.summary["steps"] == 4 + 2  # batches 5-7 and 8-10: two steps of three
    assert result.summary["epochs_run"] == 1
