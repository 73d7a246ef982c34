"""Distilled vs baseline: the same student trained without distillation, on the same data, budget and seed,
and the table that says whether distillation helped (``kdforge compare`` / ``kdforge train --baseline``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kdforge.app.checks import task_class
from kdforge.app.pipeline import RunResult, train
from kdforge.app.report.html import write_report
from kdforge.app.report.runs import read_records
from kdforge.app.rundir import run_base
from kdforge.core import runfiles
from kdforge.core.atomic import atomic_write
from kdforge.core.config import RunConfig, validate_config
from kdforge.core.errors import ConfigError


def baseline_config(config: RunConfig) -> RunConfig:
    """`config` without distillation: no teacher, no terms, no phases, task weight 1, no cache; the run is
    named ``<name>-baseline`` next to the distilled one."""
    _check_comparable(config)
    raw = config.to_dict()
    raw.update(teacher=None, teachers={})
    raw["distill"].update(terms=[], phases=[], task_weight=1.0)
    raw["cache"]["enabled"] = False
    raw["output"]["name"] = f"{run_base(config).name}-baseline"
    return validate_config(raw)


def _check_comparable(config: RunConfig) -> None:
    """A student-alone baseline exists: the task has a labelled loss and trains on kdforge's loop."""
    task = task_class(config.task)
    if task.own_training is not None:
        raise ConfigError(
            f"compare trains the student twice on kdforge's loop, but task: {config.task} trains on a loop of its own. "
            "Train the student alone with --teacher none, then compare the two runs: kdforge report RUN_ALONE RUN_KD."
        )
    if task.embeds_only:
        raise ConfigError(
            f"task: {config.task} has no labelled loss, so there is no student-alone baseline to train; compare the "
            "distilled student's val/knn_acc1 with the teacher's (in the run's table) or with an untrained student."
        )


def compare(config: RunConfig, console: Console | None = None) -> dict[str, Any]:
    """Train the baseline, then the distilled student; print and save the comparison (json and an overlaid
    report, ``<output.dir>/<name>-compare.{json,html}``); returns it (empty on processes other than rank 0).

    Raises:
        ConfigError: the config distils nothing, so there is nothing to compare.
    """
    alone = baseline_config(config)  # refuses a task that has no student-alone baseline
    if not config.distill.terms:
        raise ConfigError("compare trains the student without and with distillation, but distill.terms is empty.")
    baseline = train(alone)
    distilled = train(config)
    if baseline.run_dir is None or distilled.run_dir is None:  # under torchrun only rank 0 has the runs' files
        return {}
    comparison = {"baseline": _row(baseline), "distilled": _row(distilled)}
    comparison["difference"] = {
        k: v - comparison["baseline"]["metrics"][k]
        for k, v in comparison["distilled"]["metrics"].items()
        if k in comparison["baseline"]["metrics"]
    }
    base = run_base(config)
    atomic_write(
        base.with_name(f"{base.name}-compare.json"), lambda tmp: Path(tmp).write_text(json.dumps(comparison, indent=1))
    )
    comparison["report"] = str(
        write_report([baseline.run_dir, distilled.run_dir], base.with_name(f"{base.name}-compare.html"))
    )
    print_comparison(comparison, console or Console(width=max(120, Console().width)))
    return comparison


def _row(result: RunResult) -> dict[str, Any]:
    """Task loss at the first and last logged step, its improvement, and the best epoch's headline metrics."""
    records = read_records(result.run_dir / runfiles.METRICS)
    task = [r["loss/task"] for r in records if r["kind"] == "train" and "loss/task" in r]
    first, last = (task[0], task[-1]) if task else (float("nan"), float("nan"))
    headline = {k: v for k, v in result.best_metrics.items() if k.count("/") <= 1}  # not per-class values
    return {
        "run_dir": str(result.run_dir),
        "task_loss_first": first,
        "task_loss_last": last,
        "task_loss_improvement_pct": 100.0 * (first - last) / first if first else float("nan"),
        "metrics": headline,
    }


def print_comparison(comparison: dict[str, Any], console: Console) -> None:
    metrics = list(comparison["distilled"]["metrics"])
    table = Table(title="distilled vs baseline (same student, data, budget and seed)", title_justify="left")
    for column in ("run", "task loss first", "task loss last", "improvement", *metrics):
        table.add_column(column, justify="left" if column == "run" else "right", no_wrap=column == "run")
    for name in ("baseline", "distilled"):
        row = comparison[name]
        table.add_row(
            name,
            f"{row['task_loss_first']:.4g}",
            f"{row['task_loss_last']:.4g}",
            f"{row['task_loss_improvement_pct']:.1f}%",
            *(f"{row['metrics'].get(m, float('nan')):.4g}" for m in metrics),
        )
    difference = comparison["difference"]
    table.add_row("distilled - baseline", "", "", "", *(f"{difference.get(m, float('nan')):+.4g}" for m in metrics))
    console.print(table)
    if "report" in comparison:
        console.print(f"report: {comparison['report']}")
