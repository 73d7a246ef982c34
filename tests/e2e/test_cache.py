"""Training from the teacher cache end to end on the digits: a full-logit fp32 cache trains the student to the
same bits as the live teacher, the default fp16 top-k cache to within fp16 rounding, the teacher is never built
once the cache exists, and ``kdforge cache`` builds, reports and refuses a stale cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from kdforge.app.cli import main
from kdforge.app.pipeline import RunResult, build_cache, train
from kdforge.core.config import save_config
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.models import build as model_build


def _cache(tmp_path: Path, **values: Any) -> dict[str, Any]:
    return {"enabled": True, "dir": str(tmp_path / "cache"), **values}


def _student(result: RunResult) -> dict[str, torch.Tensor]:
    assert result.run_dir is not None
    return load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["student"]


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())


@pytest.fixture
def live(make_config) -> RunResult:
    """The run with a live (randomly initialised, seeded) teacher."""
    return train(make_config(output={"name": "live"}, log={"verbose": False}))


def test_full_logit_fp32_cache_trains_the_same_bits_as_the_live_teacher(make_config, tmp_path, live):
    cache = _cache(tmp_path, dtype="fp32", full_logits=True)
    cached = train(make_config(output={"name": "cached"}, log={"verbose": False}, cache=cache))
    weights, reference = _student(cached), _student(live)
    assert weights.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(weights[key], value), key
    assert cached.metrics == live.metrics
    assert cached.teacher_metrics == live.teacher_metrics  # measured when building, on the same val batches
    assert cached.summary["teacher"]["params"] == live.summary["teacher"]["params"]


def test_default_fp16_top_k_cache_trains_close_to_the_live_teacher(make_config, tmp_path, live):
    cached = train(make_config(output={"name": "cached"}, log={"verbose": False}, cache=_cache(tmp_path)))
    difference = _max_difference(_student(cached), _student(live))
    # Observed 1.9e-6 on CPU: 10 classes fit in the top 32, so only fp16 rounding of the logits differs.
    assert 0 < difference < 1e-4


def test_training_from_an_existing_cache_never_builds_the_teacher(make_config, tmp_path, monkeypatch):
    config = make_config(log={"verbose": False}, cache=_cache(tmp_path))
    build_cache(config)
    built: list[str] = []

    def counting(spec: Any, num_classes: Any = None, role: str = "model") -> Any:
        built.append(role)
        return model_build.build_model(spec, num_classes, role)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the teacher network was built during training")

    monkeypatch.setattr("kdforge.distill.teachers.build_model", refuse)
    monkeypatch.setattr("kdforge.app.build.build_model", counting)
    result = train(config, write=False)
    assert built == ["student"]
    assert result.summary["teacher"]["params"] > result.summary["student"]["params"] > 0  # from the manifest
    assert result.teacher_metrics == build_cache(config)["teacher_metrics"]["teacher"]


def test_the_cache_command_builds_reports_and_refuses_a_stale_cache(make_config, tmp_path, capsys):
    file = tmp_path / "kd.yaml"
    save_config(make_config(cache=_cache(tmp_path)), file)
    capsys.readouterr()
    assert main(["cache", "-c", str(file)]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'cache'}: 1347 rows, " in out and "MiB on disk; the same outputs in float32 would take" in out
    assert (tmp_path / "cache" / "manifest.json").is_file()

    assert main(["cache", "-c", str(file)]) == 0
    assert "up to date (1347 rows" in " ".join(capsys.readouterr().err.split())  # rich wraps long lines

    assert main(["cache", "-c", str(file), "--set", "cache.logits_topk=4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdforge: error: the teacher cache at") and "logits_topk was 32, now 4" in err
    assert "--rebuild" in err

    assert main(["cache", "-c", str(file), "--set", "cache.logits_topk=4", "--rebuild"]) == 0
    assert "1347 rows" in capsys.readouterr().out
    assert main(["cache", "-c", str(file), "--set", "cache.logits_topk=4"]) == 0  # the rebuilt one is up to date
