"""Teachers run where and how teacher_runtime says: own device, dtype, channels-last; always frozen."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdforge.app.build import build_task
from kdforge.app.pipeline import train
from kdforge.distill.teachers import build_teachers


def _teacher(make_config, **runtime):
    config = make_config(teacher_runtime=runtime)
    task = build_task(config)
    task.datasets()
    teachers, _ = build_teachers(config, task.num_classes, task.to_outputs, torch.device("cpu"))
    return teachers["teacher"]


def test_a_teacher_stays_in_eval_mode_whoever_calls_train(make_config):
    runner = _teacher(make_config)
    nn.Sequential(runner).train()
    assert not runner.training and not any(m.training for m in runner.modules())


def test_random_teacher_is_the_same_whatever_the_global_rng_and_leaves_it_alone(make_config):
    torch.manual_seed(1)
    first = _teacher(make_config)
    torch.manual_seed(2)
    state = torch.get_rng_state()
    second = _teacher(make_config)
    assert torch.equal(torch.get_rng_state(), state)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


def test_bf16_weights_give_outputs_close_to_fp32_on_the_input_device(make_config):
    x = torch.randn(4, 1, 8, 8)
    fp32, bf16 = _teacher(make_config), _teacher(make_config, dtype="bf16")
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    reference, low = fp32(x)["logits"], bf16(x)["logits"]
    assert low.device == x.device
    torch.testing.assert_close(low.float(), reference, rtol=0.05, atol=0.05)


def test_channels_last_teacher_matches_the_default_layout(make_config):
    x = torch.randn(4, 1, 8, 8)
    plain, channels_last = _teacher(make_config), _teacher(make_config, channels_last=True)
    conv = next(m for m in channels_last.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(channels_last(x)["logits"], plain(x)["logits"], rtol=1e-5, atol=1e-5)


def test_a_teacher_with_its_own_device_is_not_moved_with_the_student(make_config):
    pinned = _teacher(make_config, device="cpu")
    parent = nn.ModuleDict({"teacher": pinned, "student": nn.Linear(2, 2)}).to("meta")
    assert parent["student"].weight.device.type == "meta"
    assert all(p.device.type == "cpu" for p in pinned.parameters())
    assert pinned(torch.randn(2, 1, 8, 8))["logits"].shape == (2, 10)


def test_an_unpinned_teacher_follows_its_parent(make_config):
    runner = _teacher(make_config)
    nn.ModuleDict({"teacher": runner}).to(torch.float64)
    assert all(p.dtype == torch.float64 for p in runner.parameters())


def test_training_with_a_bf16_cpu_teacher_runs(make_config):
    result = train(make_config(teacher_runtime={"device": "cpu", "dtype": "bf16"}), write=False)
    assert result.metrics["val/acc1"] >= 0.0


def test_an_unknown_teacher_device_is_a_config_error(make_config):
    from kdforge.core.errors import ConfigError

    with pytest.raises(ConfigError, match="not a valid torch device"):
        _teacher(make_config, device="tpu:0")
