"""Training checkpoints: atomic saves, the RNG state round trip, and refusing foreign files."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from kdforge.core.errors import CheckpointError
from kdforge.engine.checkpoint import FORMAT, atomic_save, load_checkpoint, rng_state, set_rng_state


def _ckpt(value: float) -> dict:
    return {"format": FORMAT, "version": 1, "student": {"w": torch.full((3,), value)}, "state": {"epoch": 1}}


def test_atomic_save_writes_a_loadable_checkpoint_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "last.pt"
    atomic_save(_ckpt(1.0), path)
    assert torch.equal(load_checkpoint(path)["student"]["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    atomic_save(_ckpt(1.0), path)
    before = path.read_bytes()

    def broken_save(obj: object, file: str) -> None:
        Path(file).write_bytes(b"PK\x03\x04 partial zip")  # some bytes, then the process "dies"
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        atomic_save(_ckpt(2.0), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.equal(load_checkpoint(path)["student"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def _draws() -> tuple[torch.Tensor, np.ndarray, float, float]:
    return torch.rand(4), np.random.rand(4), random.random(), np.random.randn()


def test_rng_state_round_trip_reproduces_every_generator(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    state = rng_state()
    expected = _draws()
    _draws()  # move on

    # Through a file, as a checkpoint stores it: plain data only (weights_only loads it).
    atomic_save({"rng": state}, tmp_path / "rng.pt")
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = _draws()
    assert torch.equal(again[0], expected[0])
    np.testing.assert_array_equal(again[1], expected[1])
    assert again[2] == expected[2] and again[3] == expected[3]


def test_non_kdforge_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="not a kdforge training checkpoint.*student.checkpoint"):
        load_checkpoint(path)


def test_missing_and_unreadable_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(bad)
