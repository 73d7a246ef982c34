"""One run from a `RunConfig`: check it, build it, fit it, finalize it (`train`); and the teacher cache alone
(`build_cache`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdforge.app.build import build, build_task
from kdforge.app.cache.build import cache_report, open_cache
from kdforge.app.checks import check_config, task_class
from kdforge.app.finalize import RunResult, finalize
from kdforge.app.resume import checked_checkpoint, preempted_run, resume_target
from kdforge.app.teachers import measured_teachers
from kdforge.core.config import RunConfig
from kdforge.core.context import setup_process
from kdforge.core.errors import ConfigError
from kdforge.engine.loggers import console

__all__ = ["RunResult", "build_cache", "train"]


def train(
    config: RunConfig, resume: str | Path | None = None, run_dir: Path | None = None, write: bool = True
) -> RunResult:
    """Train (or distil) the student `config` describes; writes a run directory when `write`.

    Args:
        config: the run's config (checked and resolved here).
        resume: a checkpoint to continue from (with `run_dir`, its run); a task with its own loop (detection)
            continues `run_dir`.
        run_dir: the run directory to write into (default: a new one under ``output.dir``).
        write: False trains without writing anything.
    """
    config = check_config(config)
    own_loop = task_class(config.task).own_training
    if own_loop is not None:  # e.g. detection, on Ultralytics' trainer
        if not write:
            raise ConfigError(f"task: {config.task} trains on its own loop, which always writes its run directory.")
        if resume is not None and run_dir is None:
            run_dir = resume_target(resume)[0]
        return own_loop(config, run_dir, resume is not None)
    context = setup_process(config)
    if write and run_dir is None and resume is None:
        run_dir, resume = preempted_run(config)
    run = build(config, context, run_dir, checked_checkpoint(Path(resume)) if resume is not None else None, write)
    try:
        with run.trainer.stop:  # a signal during the teacher's evaluation also stops cleanly (before the first step)
            teachers_metrics = measured_teachers(run)
            last = run.trainer.fit()
        return finalize(run, last, teachers_metrics)
    finally:
        run.log.close()


def build_cache(config: RunConfig, rebuild: bool = False) -> dict[str, Any]:
    """Build (or continue, or check) the teacher cache `config` describes; returns its size report."""
    config = check_config(config)
    if not config.teacher_specs():
        raise ConfigError("the config has no teacher, so there is nothing to cache; set teacher (or teachers).")
    context = setup_process(config)
    task = build_task(config)
    train_set, val_set = task.datasets()
    cache = open_cache(config, task, train_set, val_set, context.device, console.print, rebuild)
    return {"path": str(cache.reader.path), **cache_report(cache.reader)}
