"""The Python API: the README's worked example runs as written; fit takes a path, a dict or a RunConfig, resumes a
run, and refuses an ambiguous call."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import kdforge
from kdforge.core.config import RunConfig
from kdforge.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _readme_example() -> str:
    """The first python block of the README's "Python API" section."""
    section = (ROOT / "README.md").read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)  # the example's relative paths: configs/ in, runs/ out
    namespace: dict = {}
    exec(compile(_readme_example(), "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    result = namespace["result"]
    assert isinstance(result, kdforge.RunResult)
    assert result.run_dir == Path("runs/digits-kd") and result.files["student"].is_file()
    assert result.best_metrics["val/acc1"] >= result.metrics["val/acc1"] > 50  # distilled from a trained teacher
    assert result.summary["teacher"]["metrics"]["val/acc1"] > 50
    assert (tmp_path / "runs" / "digits-kd" / "student.onnx").is_file()
    out = capsys.readouterr().out
    assert f"{result.best_metrics['val/acc1']} {result.metrics['val/acc1']}" in out


def test_fit_takes_a_dict_or_a_run_config_and_resumes_a_run(make_config, tmp_path):
    config = make_config(train={"epochs": 1, "max_steps_per_epoch": 3}, output={"name": "api"})
    first = kdforge.fit(config.to_dict())
    assert first.summary["steps"] == 3 and first.files["last"].is_file()
    again = kdforge.fit(resume=first.run_dir, overrides=["train.epochs=2"])
    assert again.run_dir == first.run_dir and again.summary["steps"] == 6
    assert kdforge.fit(config, overrides=["output.name=other"]).run_dir.name == "other"
    assert isinstance(kdforge.load_config(base=config.to_dict()), RunConfig)


def test_evaluate_gives_the_metrics_of_a_runs_checkpoint(make_config):
    result = kdforge.fit(make_config(train={"epochs": 1, "max_steps_per_epoch": 3}))
    metrics = kdforge.evaluate(result.run_dir, checkpoint="best")
    assert metrics["val/acc1"] == pytest.approx(result.best_metrics["val/acc1"])


@pytest.mark.parametrize("kwargs", [{}, {"config": {"student": {}}, "resume": "runs/x"}])
def test_fit_wants_a_config_or_a_run_to_resume(kwargs):
    with pytest.raises(ConfigError, match="either a config or a run to resume"):
        kdforge.fit(**kwargs)


def test_load_config_names_a_bad_key_as_the_cli_does():
    with pytest.raises(ConfigError, match=r"key 'train\.optimizer\.name'.*unknown optimizer 'adamm'.*'adamw'"):
        kdforge.load_config(base={"student": {"name": "resnet18"}}, overrides=["train.optimizer.name=adamm"])
