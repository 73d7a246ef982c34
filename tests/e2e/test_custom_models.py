"""A custom two-branch, two-input model (a 1-D signal and a grid per sample, nothing an image) distilled with CRD
on its pooled features, from the example in examples/multisensor: models and data by import path, batches as
dicts passed by keyword, early stopping on val loss, checkpoints named the way such projects name them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdforge.app.pipeline import train
from kdforge.core.config import load_config
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.models.build import build_model

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "multisensor"


@pytest.fixture
def sensors(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(EXAMPLE))  # the configs name "sensors:..." as a user's own module
    return EXAMPLE


def _overrides(tmp_path: Path) -> list[str]:
    return [f"output.dir={tmp_path / 'runs'}", "log.progress=false", "log.verbose=false", "log.loggers=[]"]


def test_crd_on_a_two_input_model_stops_early_on_val_loss(sensors, tmp_path):
    teacher = train(load_config([sensors / "teacher.yaml"], [*_overrides(tmp_path), "log.report=false"]))
    assert teacher.best_metrics["val/acc1"] > 80  # the fused two-branch teacher learns the classes
    checkpoint = teacher.run_dir / "checkpoints" / "best.pt"
    config = load_config([sensors / "crd.yaml"], [*_overrides(tmp_path), f"teacher.checkpoint={checkpoint}"])
    result = train(config)

    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["stopped_early"] and summary["epochs_run"] < config.train.epochs
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["val/loss"] for r in records if r["kind"] == "val"]
    patience = config.train.early_stopping.patience
    assert min(losses[-patience:]) >= min(losses[:-patience])  # the last `patience` evaluations did not improve
    assert any("loss/crd" in r for r in records if r["kind"] == "train")

    folder = result.run_dir / "checkpoints"
    best = load_checkpoint(folder / "best_distillation_model.pth")
    assert best["metrics"]["val/loss"] == pytest.approx(min(losses))  # best by val/loss, mode min
    every = config.train.checkpoint.every_epochs
    periodic = sorted(int(p.stem.rsplit("_", 1)[1]) for p in folder.glob("distillation_epoch_*.pth"))
    assert periodic and all(epoch % every == 0 for epoch in periodic)
    # The student is the narrow two-branch net; the CRD embeddings and banks are not part of it.
    assert set(best["student"]) == set(build_model(config.student, 4).state_dict())
    profile = summary["student"]["profile"]
    assert profile["input_shape"] == {"signal": [2, 64], "grid": [1, 8, 8]} and profile["macs"] > 0
    assert (result.run_dir / "report.html").is_file()
