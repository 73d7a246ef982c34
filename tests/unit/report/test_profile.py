"""model_profile: parameters, stored bytes and MACs against hand counts; latency measured without side effects."""

from __future__ import annotations

import json
import math

import torch
from safetensors.torch import save
from torch import nn

from kdforge.app.report.profile import model_profile


def _safetensors_data_bytes(state: dict[str, torch.Tensor]) -> int:
    """What a safetensors file spends on tensor data: its length less the 8-byte length prefix and the header."""
    blob = save({k: v.contiguous() for k, v in state.items()})
    header = int.from_bytes(blob[:8], "little")
    assert json.loads(blob[8 : 8 + header])  # the header is where we think it is
    return len(blob) - 8 - header


def test_params_and_size_match_hand_counts() -> None:
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2, bias=False))
    profile = model_profile(net, (4,), runs=2)
    assert profile["params"] == (4 * 3 + 3) + (3 + 3) + 3 * 2
    # float32 parameters and BN running mean / var, plus BN's int64 num_batches_tracked
    assert profile["size_bytes"] == 4 * (27 + 3 + 3) + 8
    assert profile["size_bytes"] == _safetensors_data_bytes(net.state_dict())


def test_tied_weights_are_counted_once() -> None:
    shared = nn.Linear(4, 4)
    profile = model_profile(nn.Sequential(shared, nn.ReLU(), shared), (4,), runs=2)
    assert profile["params"] == 20
    assert profile["size_bytes"] == 4 * 20


def test_macs_of_a_linear_and_a_conv() -> None:
    assert model_profile(nn.Linear(10, 20), (10,), runs=1)["macs"] == 10 * 20
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)  # each of 8x8x8 outputs sums 3x3x3 products
    assert model_profile(conv, (3, 8, 8), runs=1)["macs"] == 8 * 8 * 8 * 3 * 3 * 3


def test_latency_is_positive_and_leaves_model_and_threads_as_they_were() -> None:
    torch.set_num_threads(2)
    net = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    profile = model_profile(net, (16,), runs=5, threads=1)
    assert profile["latency_ms"] > 0 and math.isfinite(profile["latency_ms"])
    assert (profile["threads"], profile["input_shape"]) == (1, [16])
    assert torch.get_num_threads() == 2
    assert net.training  # measured on an eval copy: BN statistics untouched
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
