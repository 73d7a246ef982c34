"""Profiles of models with several inputs: MACs by hand, input shapes by name, example inputs from dict samples."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from kdforge.app.report.profile import example_input, model_profile, shape_text


class TwoInputs(nn.Module):
    """signal (B, 4) -> Linear(4, 3) and grid (B, 6) -> Linear(6, 2), concatenated: (B, 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.signal_proj, self.grid_proj = nn.Linear(4, 3), nn.Linear(6, 2)

    def forward(self, signal: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.signal_proj(signal), self.grid_proj(grid)], dim=1)


# Batch 1: 4*3 + 6*2 = 24 multiply-accumulates; parameters (4*3 + 3) + (6*2 + 2) = 29.
MACS, PARAMS = 24, 29


def test_profile_of_a_dict_input_by_keyword() -> None:
    example = {"signal": torch.ones(1, 4), "grid": torch.ones(1, 6)}
    profile = model_profile(TwoInputs(), example, runs=2)
    assert profile["macs"] == MACS and profile["params"] == PARAMS
    assert profile["size_bytes"] == PARAMS * 4
    assert profile["input_shape"] == {"signal": [4], "grid": [6]}
    assert profile["latency_ms"] > 0 and profile["threads"] == 1


def test_profile_of_a_dict_input_through_an_adapter() -> None:
    calls = []

    def adapter(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        calls.append(sorted(inputs))
        return model(inputs["signal"], inputs["grid"])

    example = {"grid": torch.ones(1, 6, dtype=torch.float64), "signal": torch.ones(1, 4)}
    profile = model_profile(TwoInputs(), example, runs=1, adapter=adapter)
    assert profile["macs"] == MACS and profile["input_shape"] == {"grid": [6], "signal": [4]}
    assert calls and all(c == ["grid", "signal"] for c in calls)  # counted and timed through the adapter


def test_profile_of_a_shape_tuple_records_a_list() -> None:
    profile = model_profile(nn.Linear(4, 3), (4,), runs=1)
    assert profile["macs"] == 12 and profile["input_shape"] == [4]


def test_shape_text() -> None:
    assert shape_text([3, 224, 224]) == "3x224x224"
    assert shape_text([16]) == "16"
    assert shape_text({"signal": [2, 64], "grid": [1, 8, 8]}) == "signal 2x64, grid 1x8x8"


class _Samples(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> dict[str, Any]:
        sensors = {"signal": torch.full((2, 64), float(index)), "grid": torch.zeros(1, 8, 8)}
        return {"input": sensors, "target": index}


def test_example_input_of_dict_samples_adds_a_batch_axis() -> None:
    example = example_input(_Samples())
    assert set(example) == {"signal", "grid"}
    assert example["signal"].shape == (1, 2, 64) and example["grid"].shape == (1, 1, 8, 8)
    assert torch.equal(example["signal"], torch.zeros(1, 2, 64))  # the first sample


def test_example_input_of_tensor_samples() -> None:
    samples = [{"input": torch.ones(3, 4, 4), "target": 0}]
    assert example_input(samples).shape == (1, 3, 4, 4)


class _Tokens(nn.Module):
    """An embedding-table model: its ``ids`` input must stay integer."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(10, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids).mean(1)


def test_integer_inputs_keep_their_type() -> None:
    profile = model_profile(_Tokens(), {"ids": torch.tensor([[1, 2, 3]])}, runs=1)
    assert profile["input_shape"] == {"ids": [3]} and profile["params"] == 40
