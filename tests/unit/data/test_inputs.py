"""Inputs that are one tensor or a dict of tensors: helpers, datasets, loaders, devices and tapped models."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdforge.core.errors import DataError
from kdforge.data.datasets import BatchDict
from kdforge.data.inputs import batch_size, call_model, first_tensor, inputs_equal, is_inputs, map_inputs
from kdforge.engine.evaluate import to_device
from kdforge.models.taps import TappedModel

NESTED = {"camera": torch.ones(2, 3), "radar": {"near": torch.zeros(2, 1), "far": torch.full((2, 4), 2.0)}}


def test_map_inputs_reaches_every_tensor_of_a_nested_dict() -> None:
    doubled = map_inputs(lambda t: t * 2 + 1, NESTED)
    assert doubled.keys() == NESTED.keys() and doubled["radar"].keys() == NESTED["radar"].keys()
    assert torch.equal(doubled["camera"], torch.full((2, 3), 3.0))
    assert torch.equal(doubled["radar"]["near"], torch.ones(2, 1))
    assert torch.equal(doubled["radar"]["far"], torch.full((2, 4), 5.0))
    assert torch.equal(map_inputs(torch.neg, torch.ones(2)), -torch.ones(2))


def test_map_inputs_leaves_non_tensors_alone() -> None:
    assert map_inputs(torch.neg, {"x": torch.ones(1), "name": "cam0"}) == {"x": -torch.ones(1), "name": "cam0"}


def test_first_tensor_and_batch_size() -> None:
    assert first_tensor(NESTED) is NESTED["camera"]
    assert first_tensor({"radar": NESTED["radar"]}) is NESTED["radar"]["near"]
    image = torch.zeros(5, 3)
    assert first_tensor(image) is image and batch_size(image) == 5
    assert batch_size(NESTED) == 2
    with pytest.raises(ValueError, match="empty"):
        first_tensor({})


def test_is_inputs() -> None:
    assert is_inputs(torch.zeros(1)) and is_inputs(NESTED)
    assert not is_inputs({}) and not is_inputs({"x": {}})
    assert not is_inputs([torch.zeros(1)]) and not is_inputs(None)
    assert not is_inputs({"x": torch.zeros(1), "name": "cam0"})


def test_inputs_equal() -> None:
    same = map_inputs(torch.clone, NESTED)
    assert inputs_equal(NESTED, same) and inputs_equal(torch.ones(2), torch.ones(2))
    changed = {**same, "radar": {**same["radar"], "far": torch.zeros(2, 4)}}
    assert not inputs_equal(NESTED, changed)
    assert not inputs_equal(NESTED, {"camera": NESTED["camera"]})  # a name missing
    assert not inputs_equal(NESTED, NESTED["camera"]) and not inputs_equal(NESTED["camera"], NESTED)


class TwoInputs(nn.Module):
    """camera (B, 3) and lidar (B, 2), each through its own linear layer, summed: (B, 4)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.camera_proj, self.lidar_proj = nn.Linear(3, 4), nn.Linear(2, 4)

    def forward(self, camera: torch.Tensor, lidar: torch.Tensor) -> torch.Tensor:
        return self.camera_proj(camera) + self.lidar_proj(lidar)


SENSORS = {"lidar": torch.randn(2, 2), "camera": torch.randn(2, 3)}  # not in the forward's argument order


def test_call_model_by_keyword_positional_and_through_an_adapter() -> None:
    model = TwoInputs()
    expected = model.camera_proj(SENSORS["camera"]) + model.lidar_proj(SENSORS["lidar"])
    assert torch.equal(call_model(model, SENSORS), expected)
    image = torch.randn(2, 3)
    assert torch.equal(call_model(model.camera_proj, image), model.camera_proj(image))
    calls = []

    def adapter(net: nn.Module, inputs: Any) -> torch.Tensor:
        calls.append(inputs)
        return net(inputs["camera"], inputs["lidar"])

    assert torch.equal(call_model(model, SENSORS, adapter), expected)
    assert calls == [SENSORS]


class _Sensors(Dataset):
    """Three samples of camera (3,) and lidar (2,) readings; `bad` makes sample 1's input a list."""

    def __init__(self, bad: bool = False) -> None:
        self.bad = bad

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.bad and index == 1:
            return {"input": [1.0, 2.0], "target": 0}
        sample = {"camera": torch.full((3,), float(index)), "lidar": torch.full((2,), -float(index))}
        return {"input": sample, "target": index % 2}


def test_batch_dict_accepts_a_dict_of_tensors() -> None:
    item = BatchDict(_Sensors())[2]
    assert item["index"] == 2 and item["target"] == 0
    assert torch.equal(item["input"]["camera"], torch.full((3,), 2.0))


def test_batch_dict_refuses_a_non_tensor_input() -> None:
    data = BatchDict(_Sensors(bad=True))
    assert data[0]["target"] == 0
    with pytest.raises(DataError, match="sample 1 has input of type list"):
        data[1]


def test_loader_collates_dict_inputs_into_batched_tensors() -> None:
    batch = next(iter(DataLoader(BatchDict(_Sensors()), batch_size=2)))
    assert set(batch["input"]) == {"camera", "lidar"}
    assert torch.equal(batch["input"]["camera"], torch.tensor([[0.0] * 3, [1.0] * 3]))
    assert torch.equal(batch["input"]["lidar"], torch.tensor([[0.0] * 2, [-1.0] * 2]))
    assert batch["target"].tolist() == [0, 1] and batch["index"].tolist() == [0, 1]


def test_to_device_moves_nested_dict_tensors() -> None:
    batch = {"input": NESTED, "target": torch.zeros(2, dtype=torch.long), "name": "x"}
    moved = to_device(batch, torch.device("meta"), channels_last=True)
    assert moved["input"]["camera"].is_meta and moved["input"]["radar"]["far"].is_meta
    assert moved["input"]["radar"]["far"].shape == (2, 4) and moved["target"].is_meta
    assert moved["name"] == "x"
    assert not NESTED["camera"].is_meta  # the caller's batch is untouched


def test_tapped_model_calls_a_two_input_model_by_keyword() -> None:
    model = TwoInputs()
    tapped = TappedModel(model, {"cam": "camera_proj", "lid": "lidar_proj"})
    with torch.no_grad():
        outputs = tapped(SENSORS)
        assert set(outputs) == {"logits", "feat:cam", "feat:lid"}
        assert torch.equal(outputs["feat:cam"], model.camera_proj(SENSORS["camera"]))
        assert torch.equal(outputs["feat:lid"], model.lidar_proj(SENSORS["lidar"]))
        assert torch.equal(outputs["logits"], outputs["feat:cam"] + outputs["feat:lid"])


def test_tapped_model_through_an_adapter() -> None:
    model = TwoInputs()
    tapped = TappedModel(model, {"cam": "camera_proj"}, adapter=lambda net, x: net(x["camera"], x["lidar"] * 0))
    with torch.no_grad():
        outputs = tapped(SENSORS)
        assert torch.equal(outputs["logits"], model(SENSORS["camera"], torch.zeros(2, 2)))
