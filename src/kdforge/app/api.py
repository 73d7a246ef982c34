"""The Python API, for notebooks and scripts; the ``kdforge`` command is a thin layer over the same functions.

import kdforge

config = kdforge.load_config("configs/digits_kd.yaml", overrides=["train.epochs=5"])
result = kdforge.fit(config)
result.best_metrics["val/acc1"], result.files["student"]
kdforge.evaluate(result.run_dir)                      # the best checkpoint on the run's val split
kdforge.export(result.run_dir, formats=["onnx"])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdforge.app.checks import check_config
from kdforge.app.evaluation import checkpoint_path, evaluate_checkpoint, export_run, run_config
from kdforge.app.finalize import RunResult
from kdforge.app.pipeline import train
from kdforge.app.resume import resume_target
from kdforge.core import runfiles
from kdforge.core.config import RunConfig
from kdforge.core.config import load_config as _load_merged
from kdforge.core.errors import ConfigError

ConfigLike = RunConfig | dict[str, Any] | str | Path


def load_config(*files: str | Path, overrides: Sequence[str] = (), base: dict[str, Any] | None = None) -> RunConfig:
    """A run config from YAML files (merged in order, later files win) over `base` (a dict), then
    ``dotted.key=value`` overrides, checked as ``kdforge train`` checks it.

    Raises:
        ConfigError: a key, value or name in the config is wrong (the message names the key and the nearest
            valid one).
    """
    return check_config(_load_merged(list(files), list(overrides), base))


def fit(config: ConfigLike | None = None, overrides: Sequence[str] = (), resume: str | Path | None = None) -> RunResult:
    """Train (or distil) the student a config describes, or continue a run, and return what it produced.

    Args:
        config: a `RunConfig`, a dict with a YAML file's contents, or the path of a YAML file.
        overrides: ``dotted.key=value`` changes applied on top (as ``--set``).
        resume: instead of `config`, a run directory (or one of its checkpoints) to continue with its own config.

    Returns:
        `RunResult`: ``run_dir``, ``metrics`` (last evaluation), ``best_metrics``, ``teacher_metrics``, ``summary``
        and ``files`` (``student``, ``best``, ``last``, ``report``).
    """
    if (config is None) == (resume is None):
        raise ConfigError("give fit() either a config or a run to resume, not both or neither.")
    if resume is None:
        return train(_as_config(config, overrides))
    run_dir, checkpoint = resume_target(resume)
    return train(load_config(run_dir / runfiles.CONFIG, overrides=overrides), resume=checkpoint, run_dir=run_dir)


def evaluate(
    run: str | Path | ConfigLike, checkpoint: str = "best", data: str | Path | None = None
) -> dict[str, float]:
    """The task's metrics of a student checkpoint on the validation split.

    Args:
        run: a run directory (its config.yaml is used), or a config (then `checkpoint` is a file path).
        checkpoint: ``best``, ``last`` or a checkpoint / weights file.
        data: evaluate on this dataset root instead (its val split).
    """
    overrides = [f"data.root={data}"] if data is not None else []
    run_dir = Path(run) if isinstance(run, (str, Path)) and Path(run).is_dir() else None
    if run_dir is None and checkpoint in ("best", "last"):
        raise ConfigError(
            f"evaluate(config, checkpoint={checkpoint!r}): best and last name a run's checkpoints; "
            "give the run directory, or checkpoint= the path of a weights file."
        )
    config = run_config(run_dir, overrides) if run_dir is not None else _as_config(run, overrides)
    return evaluate_checkpoint(config, checkpoint_path(run_dir, checkpoint))


def export(
    run_dir: str | Path,
    formats: Sequence[str] = ("safetensors", "onnx"),
    checkpoint: str = "best",
    out: str | Path | None = None,
) -> list[Path]:
    """Write a run's student in each format (safetensors, torchscript, onnx) into `out` (default: the run
    directory); returns the written files."""
    return export_run(Path(run_dir), checkpoint, list(formats), Path(out) if out is not None else None)


def _as_config(config: ConfigLike, overrides: Sequence[str]) -> RunConfig:
    if isinstance(config, (str, Path)):
        return load_config(config, overrides=overrides)
    base = config.to_dict() if isinstance(config, RunConfig) else config
    return load_config(base=base, overrides=overrides)
