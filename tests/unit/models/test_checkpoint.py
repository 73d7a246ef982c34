"""Loading weights safely: file formats, nested state dicts, key and shape mismatches, trust, bad files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from kdforge.core.config import ModelSpec
from kdforge.core.errors import CheckpointError, UntrustedCheckpointError
from kdforge.engine.checkpoint import FORMAT
from kdforge.models.build import build_model
from kdforge.models.checkpoint import load_weights, read_state_dict
from kdforge.models.zoo import SimpleCNN

CNN = "kdforge.models.zoo:cnn"
WIDTHS = [4, 8]


@dataclasses.dataclass
class RunArgs:
    """A custom class pickled into a checkpoint, as trainers that save their argparse/dataclass args do."""

    lr: float = 0.1


def _cnn(seed: int = 0, num_classes: int = 3) -> SimpleCNN:
    torch.manual_seed(seed)
    return SimpleCNN(num_classes=num_classes, widths=WIDTHS)


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


def _spec(path: Path | None = None, **kwargs) -> ModelSpec:
    return ModelSpec(
        source="import", name=CNN, kwargs={"widths": WIDTHS}, checkpoint=str(path) if path else None, **kwargs
    )


# --- build_model loads weights -----------------------------------------------------------------


def test_build_model_loads_its_checkpoint(tmp_path: Path) -> None:
    source = _cnn(seed=1, num_classes=4)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    model = build_model(_spec(tmp_path / "w.pt"), num_classes=4)
    _assert_same_weights(model, source)


# --- file formats and nesting ---------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_load_torch_file(tmp_path: Path, suffix: str) -> None:
    source = _cnn(seed=1)
    path = tmp_path / f"w{suffix}"
    torch.save(source.state_dict(), path)
    target = _cnn(seed=2)
    load_weights(target, path)
    _assert_same_weights(target, source)


def test_load_safetensors(tmp_path: Path) -> None:
    source = _cnn(seed=1)
    path = tmp_path / "w.safetensors"
    save_file(source.state_dict(), str(path))
    target = _cnn(seed=2)
    load_weights(target, path)
    _assert_same_weights(target, source)


@pytest.mark.parametrize("nest", ["model", "state_dict", "model_ema", "student", "ema", "module"])
def test_nested_state_dict_is_found(tmp_path: Path, nest: str) -> None:
    source = _cnn(seed=1)
    path = tmp_path / "w.pt"
    torch.save({nest: source.state_dict(), "epoch": 3, "optimizer": {"lr": 0.1}}, path)
    target = _cnn(seed=2)
    load_weights(target, path)
    _assert_same_weights(target, source)


def test_first_nested_key_wins(tmp_path: Path) -> None:
    model, ema = _cnn(seed=1), _cnn(seed=3)
    path = tmp_path / "w.pt"
    torch.save({"model_ema": ema.state_dict(), "model": model.state_dict()}, path)
    target = _cnn(seed=2)
    load_weights(target, path)
    _assert_same_weights(target, model)


@pytest.mark.parametrize("with_ema", [True, False])
def test_a_kdforge_checkpoint_gives_the_weights_it_evaluated(tmp_path: Path, with_ema: bool) -> None:
    """A kdforge best.pt used as a teacher: its EMA weights when EMA was on (what was evaluated and exported)."""
    student, ema = _cnn(seed=1), _cnn(seed=3)
    path = tmp_path / "best.pt"
    ckpt = {"format": FORMAT, "student": student.state_dict(), "ema": None, "optimizer": {"state": {}}}
    if with_ema:
        ckpt["ema"] = {"module": ema.state_dict(), "updates": 10}
    torch.save(ckpt, path)
    target = _cnn(seed=2)
    load_weights(target, path)
    _assert_same_weights(target, ema if with_ema else student)


def test_checkpoint_key_picks_the_nested_weights(tmp_path: Path) -> None:
    model, ema = _cnn(seed=1), _cnn(seed=3)
    path = tmp_path / "w.pt"
    torch.save({"model": model.state_dict(), "model_ema": ema.state_dict()}, path)
    target = _cnn(seed=2)
    load_weights(target, path, key="model_ema")
    _assert_same_weights(target, ema)


def test_checkpoint_key_through_build_model(tmp_path: Path) -> None:
    weights = _cnn(seed=1)
    path = tmp_path / "w.pt"
    torch.save({"my_weights": weights.state_dict(), "epoch": 1}, path)
    model = build_model(_spec(path, checkpoint_key="my_weights"), num_classes=3)
    _assert_same_weights(model, weights)


def test_missing_checkpoint_key_lists_keys(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"model": _cnn().state_dict(), "epoch": 1}, path)
    with pytest.raises(CheckpointError, match=r"has no key 'weights'.*\['epoch', 'model'\]"):
        read_state_dict(path, key="weights")


def test_unknown_nesting_asks_for_checkpoint_key(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"net_weights": _cnn().state_dict(), "epoch": 1}, path)
    with pytest.raises(CheckpointError, match=r"net_weights.*checkpoint_key"):
        read_state_dict(path)


def test_non_mapping_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        read_state_dict(path)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_stripped(tmp_path: Path, prefix: str) -> None:
    source = _cnn(seed=1)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {prefix + k: v for k, v in source.state_dict().items()}}, path)
    target = _cnn(seed=2)
    load_weights(target, path)
    _assert_same_weights(target, source)


def test_prefix_kept_when_not_shared_by_every_key(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"module.a": torch.zeros(1), "b": torch.ones(1)}, path)
    assert set(read_state_dict(path)) == {"module.a", "b"}


# --- mismatches -----------------------------------------------------------------------------------


def test_mismatch_lists_missing_unexpected_and_wrong_shape_keys(tmp_path: Path) -> None:
    state = _cnn(num_classes=3).state_dict()
    del state["stages.0.1.weight"]  # missing
    state["extra.weight"] = torch.zeros(2)  # unexpected
    state["head.weight"] = torch.zeros(5, 8)  # wrong shape: model has (3, 8)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    target = _cnn(seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_weights(target, path, role="teacher")
    message = str(info.value)
    assert "teacher checkpoint" in message
    assert "1 missing keys: stages.0.1.weight" in message
    assert "1 unexpected keys: extra.weight" in message
    assert "1 wrong shape keys: head.weight: checkpoint (5, 8) vs model (3, 8)" in message
    assert "num_classes" in message  # says how to fix it
    for key, value in target.state_dict().items():  # nothing was half-loaded
        assert torch.equal(value, before[key]), key


def test_mismatch_truncates_long_key_lists(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({f"junk{i}": torch.zeros(1) for i in range(13)}, path)
    with pytest.raises(CheckpointError, match=r"13 unexpected keys: .*\(\+3 more\)"):
        load_weights(_cnn(), path)


# --- trust and unreadable files -------------------------------------------------------------------


def test_pickled_module_is_refused_unless_trusted(tmp_path: Path) -> None:
    source = _cnn(seed=1)
    path = tmp_path / "whole_model.pt"
    torch.save(source, path)
    target = _cnn(seed=2)
    with pytest.raises(UntrustedCheckpointError, match="trust_checkpoint: true"):
        load_weights(target, path)
    load_weights(target, path, trust=True)
    _assert_same_weights(target, source)


def test_pickled_dataclass_is_refused_unless_trusted(tmp_path: Path) -> None:
    source = _cnn(seed=1)
    path = tmp_path / "w.pt"
    torch.save({"model": source.state_dict(), "args": RunArgs(lr=0.5)}, path)
    with pytest.raises(UntrustedCheckpointError, match="pickled Python objects"):
        read_state_dict(path)
    target = _cnn(seed=2)
    load_weights(target, path, trust=True)
    _assert_same_weights(target, source)


def test_untrusted_checkpoint_through_build_model(tmp_path: Path) -> None:
    source = _cnn(seed=1)
    path = tmp_path / "w.pt"
    torch.save(source, path)
    with pytest.raises(UntrustedCheckpointError):
        build_model(_spec(path), num_classes=3)
    model = build_model(_spec(path, trust_checkpoint=True), num_classes=3)
    _assert_same_weights(model, source)


def test_truncated_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(_cnn().state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable") as info:
        read_state_dict(path)
    assert not isinstance(info.value, UntrustedCheckpointError)


def test_truncated_safetensors_file(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(_cnn().state_dict(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        read_state_dict(path)


def test_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    path.write_bytes(b"hello, this is not a checkpoint")
    with pytest.raises(CheckpointError):
        read_state_dict(path)


@pytest.mark.parametrize("name", ["nope.pt", "nope.safetensors"])
def test_nonexistent_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(CheckpointError, match=f"{name}' does not exist"):
        read_state_dict(tmp_path / name)


def test_directory_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(_cnn(), tmp_path)
