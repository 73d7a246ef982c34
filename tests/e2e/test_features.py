"""Label-free feature distillation with multi-crop on the bundled digits (as image folders): the student learns
a ViT teacher's embedding and patch tokens from 2 global + 2 local crops, no labelled loss, and is judged by
k-NN accuracy; a teacher cache replays the crops the teacher saw."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from sklearn.neighbors import KNeighborsClassifier
from torch.utils.data import DataLoader

from kdforge.app.build import build_run
from kdforge.app.cache.reading import CachedTeacherDataset
from kdforge.app.pipeline import train
from kdforge.core.config import validate_config
from kdforge.core.context import Context
from kdforge.core.errors import ConfigError
from kdforge.data.digits import write_image_folders
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.engine.evaluate import to_device
from kdforge.models.build import build_model

TEACHER = {"source": "timm", "name": "test_vit", "kwargs": {"img_size": 32, "patch_size": 8}}
STUDENT = {"source": "timm", "name": "test_resnet"}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folders(tmp_path_factory.mktemp("digits") / "digits", image_size=32)


def _config(digits: Path, tmp_path: Path, **sections: Any):
    base: dict[str, Any] = {
        "task": "features",
        "threads": 1,
        "teacher": TEACHER,
        "student": STUDENT,
        "data": {
            "dataset": "imagefolder",
            "root": str(digits),
            "image_size": 32,
            "batch_size": 16,
            "num_workers": 0,
            "multicrop": {"global_crops": 2, "local_crops": 2, "local_size": 16},
        },
        "distill": {
            "taps": {"teacher": {"tokens": "blocks.1"}, "student": {"map": "layer3"}},
            "terms": [
                {"loss": "cosine", "student": "embedding", "teacher": "embedding"},
                {"loss": "smooth_l1", "weight": 0.5, "student": "map", "teacher": "tokens", "tokens": "grid"},
            ],
        },
        "train": {"epochs": 2, "max_steps_per_epoch": 6, "optimizer": {"name": "adamw", "lr": 2e-3}},
        "features": {"knn_k": 1, "knn_memory_limit": 300},
        "output": {"dir": str(tmp_path / "runs")},
        "log": {"progress": False, "verbose": False, "every_steps": 1, "report": False, "loggers": []},
    }
    for key, value in sections.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    return validate_config(base)


def _records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_label_free_multicrop_distillation_reports_knn_accuracy(digits, tmp_path):
    result = train(_config(digits, tmp_path))
    records = _records(result.run_dir)
    train_records = [r for r in records if r.get("kind") == "train"]
    assert train_records and all("loss/task" not in r for r in train_records), "a labelled loss was computed"
    assert {"loss/cosine", "loss/smooth_l1"} <= set(train_records[0])
    assert train_records[-1]["loss/cosine"] < train_records[0]["loss/cosine"]
    evals = [r for r in records if r.get("kind") == "val"]
    assert len(evals) == 2
    for record in evals:
        assert 0.0 <= record["val/knn_acc1"] <= 100.0 and record["fitness"] == record["val/knn_acc1"]
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["teacher"]["metrics"]["val/knn_acc1"] > 0  # the teacher is judged the same way
    assert result.best_metrics["val/knn_acc1"] == max(r["val/knn_acc1"] for r in evals)


def test_knn_accuracy_with_k_1_is_the_nearest_neighbour_accuracy(digits, tmp_path):
    """With k=1 the weighted vote is the nearest memory sample's class: recomputed with scikit-learn from the
    saved student on the memory (train split, evaluation transform) and the val split."""
    config = _config(digits, tmp_path, train={"epochs": 1, "max_steps_per_epoch": 3})
    result = train(config)
    net = build_model(config.student, 0).eval()
    net.load_state_dict(load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["student"])
    parts = build_run(config, Context())
    embeddings, targets, memory = [], [], []
    with torch.inference_mode():
        for batch in parts.val_loader:
            embeddings.append(F.normalize(net(batch["input"]), dim=1))
            targets.append(batch["target"])
            memory.append(batch["memory"])
    x, y, is_memory = torch.cat(embeddings).numpy(), torch.cat(targets).numpy(), torch.cat(memory).numpy()
    assert is_memory.sum() == 300 and (~is_memory).sum() > 0
    knn = KNeighborsClassifier(n_neighbors=1, metric="cosine").fit(x[is_memory], y[is_memory])
    expected = 100.0 * (knn.predict(x[~is_memory]) == y[~is_memory]).mean()
    assert result.metrics["val/knn_acc1"] == pytest.approx(expected, abs=1e-6)


def test_cached_teacher_outputs_match_the_live_teacher_on_the_replayed_crops(digits, tmp_path):
    config = _config(
        digits,
        tmp_path,
        cache={"enabled": True, "dir": str(tmp_path / "cache"), "views": 2, "dtype": "fp32"},
        train={"epochs": 1, "max_steps_per_epoch": 2},
    )
    train(config)  # builds the cache, then trains from it
    parts = build_run(config, Context())
    assert isinstance(parts.train_loader.dataset, CachedTeacherDataset)
    live_config = config.model_copy(update={"cache": config.cache.model_copy(update={"enabled": False})})
    live = build_run(live_config, Context())
    batch = to_device(next(iter(DataLoader(parts.train_loader.dataset, batch_size=4))), torch.device("cpu"))
    assert batch["input"]["global"].shape == (4, 2, 3, 32, 32) and batch["input"]["local"].shape == (4, 2, 3, 16, 16)
    cached = parts.distiller.teacher_outputs(batch, ["teacher"])["teacher"]
    computed = live.distiller.teacher_outputs(batch, ["teacher"])["teacher"]
    assert cached.keys() == computed.keys() == {"embedding", "feat:tokens"}
    for key, value in computed.items():
        assert value.shape[:2] == (4, 2)  # (batch, global crops, ...): the teacher reads the global crops only
        torch.testing.assert_close(cached[key], value, rtol=1e-5, atol=1e-5)


def test_multicrop_with_a_dataset_that_gives_one_view_is_refused(tmp_path):
    data = {"dataset": "digits", "image_size": 32, "root": None}
    with pytest.raises(ConfigError, match="gives one view per sample"):
        build_run(_config(Path("unused"), tmp_path, data=data), Context())


def test_a_teacher_reading_another_size_gets_its_global_crops_resized(digits, tmp_path):
    """The teacher reads 48-px global crops (its input adapter resizes each crop); local crops never reach it."""
    teacher = {**TEACHER, "kwargs": {"img_size": 48, "patch_size": 8}, "input": {"size": 48}}
    parts = build_run(_config(digits, tmp_path, teacher=teacher), Context())
    batch = next(iter(parts.train_loader))
    outputs = parts.distiller.teacher_outputs(batch, ["teacher"])["teacher"]
    assert outputs["feat:tokens"].shape == (16, 2, 1 + 6 * 6, 64)  # (batch, global crops, cls + 6x6 patches, dim)
    assert torch.isfinite(parts.distiller.train()(batch)["loss"])
