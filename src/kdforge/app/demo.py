"""``kdforge demo``: on the bundled digits, a teacher CNN, then a much smaller student trained alone and
distilled, with the same seeds and steps, in one table.

The setting is the one where distillation is known to pay: few labels (``LABELS_PER_CLASS`` images per
class keep their label) and the teacher's soft targets on every training image (the unlabelled transfer
set). The teacher itself learns from all labels.
"""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kdforge.app.pipeline import RunResult, train
from kdforge.app.report.summary import format_params
from kdforge.core.config import validate_config

LABELS_PER_CLASS = 5
TEACHER = {
    "source": "import",
    "name": "kdforge.models.zoo:cnn",
    "kwargs": {"in_chans": 1, "widths": [64, 128, 256]},
}
STUDENT = {
    "source": "import",
    "name": "kdforge.models.zoo:cnn",
    "kwargs": {"in_chans": 1, "widths": [16, 32, 64]},
}
DATA = {
    "dataset": "digits",
    "image_size": 8,
    "in_chans": 1,
    "batch_size": 64,
    "num_workers": 0,
    "mean": [0.0],
    "std": [1.0],
}
TRAIN = {
    "epochs": 15,
    "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
}


def demo_configs(out: Path, seed: int, teacher_checkpoint: Path | None) -> dict[str, dict[str, Any]]:
    """The three runs of the demo as raw configs (what a user would write in YAML)."""
    common = {
        "seed": seed,
        "data": DATA,
        "log": {"progress": False, "verbose": False},
        "output": {"dir": str(out), "exist_ok": True},
    }
    few_labels = {**DATA, "labelled_per_class": LABELS_PER_CLASS}
    return {
        "teacher": {
            **common,
            "student": TEACHER,
            "train": TRAIN,
            "output": {**common["output"], "name": "teacher"},
        },
        "student_alone": {
            **common,
            "student": STUDENT,
            "data": few_labels,
            "train": TRAIN,
            "output": {**common["output"], "name": f"student-alone-seed{seed}"},
        },
        "student_kd": {
            **common,
            "student": STUDENT,
            "data": few_labels,
            "train": TRAIN,
            "teacher": {**TEACHER, "checkpoint": str(teacher_checkpoint)},
            "distill": {"task_weight": 0.3, "terms": [{"loss": "kd", "weight": 0.7, "temperature": 4.0}]},
            "output": {**common["output"], "name": f"student-kd-seed{seed}"},
        },
    }


def run_demo(out: Path, seeds: int = 1, console: Console | None = None) -> dict[str, Any]:
    """Train the teacher once, then both students for each seed; print and return the table's numbers."""
    console = console or Console()
    _clear_previous_runs(out)
    console.print(
        f"[bold]kdforge demo[/]: digits (1,797 real 8x8 scans), {LABELS_PER_CLASS} labels per class "
        "for the students, teacher soft targets on all training images"
    )
    teacher_cfg = validate_config(demo_configs(out, 0, None)["teacher"])
    console.print("1/3 training the teacher on all labels ...")
    teacher = train(teacher_cfg)
    checkpoint = teacher.files["student"]
    alone, kd = [], []
    for seed in range(seeds):
        configs = demo_configs(out, seed, checkpoint)
        console.print(f"2/3 student alone (seed {seed}) ...")
        alone.append(train(validate_config(configs["student_alone"])))
        console.print(f"3/3 student distilled from the teacher (seed {seed}) ...")
        kd.append(train(validate_config(configs["student_kd"])))
    result = _table_numbers(teacher, alone, kd)
    _print_table(result, console)
    return result


def _clear_previous_runs(out: Path) -> None:
    """Remove the demo's own earlier runs (folders with a kdforge config.yaml) so logs never mix."""
    for run in out.glob("*/config.yaml") if out.is_dir() else []:
        if run.parent.name == "teacher" or run.parent.name.startswith("student-"):
            shutil.rmtree(run.parent)


def _acc(results: list[RunResult]) -> list[float]:
    return [r.metrics["val/acc1"] for r in results]


def _table_numbers(teacher: RunResult, alone: list[RunResult], kd: list[RunResult]) -> dict[str, Any]:
    t_params = teacher.summary["student"]["params"]
    s_params = alone[0].summary["student"]["params"]
    return {
        "teacher_acc1": teacher.metrics["val/acc1"],
        "student_alone_acc1": _acc(alone),
        "student_kd_acc1": _acc(kd),
        "teacher_params": t_params,
        "student_params": s_params,
        "compression": t_params / s_params,
        "run_dirs": {
            "teacher": str(teacher.run_dir),
            "alone": [str(r.run_dir) for r in alone],
            "kd": [str(r.run_dir) for r in kd],
        },
    }


def _mean(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def _print_table(r: dict[str, Any], console: Console) -> None:
    table = Table(title="kdforge demo: digits, val top-1 accuracy (%) after the last epoch", title_justify="left")
    for column in ("model", "params", "labels used", "val acc1"):
        table.add_column(column, justify="left" if column == "model" else "right")
    table.add_row("teacher CNN", format_params(r["teacher_params"]), "all", f"{r['teacher_acc1']:.2f}")
    table.add_row(
        "student alone",
        format_params(r["student_params"]),
        f"{LABELS_PER_CLASS}/class",
        _mean(r["student_alone_acc1"]),
    )
    table.add_row(
        "student + KD",
        format_params(r["student_params"]),
        f"{LABELS_PER_CLASS}/class + soft targets",
        _mean(r["student_kd_acc1"]),
    )
    console.print(table)
    gain = statistics.mean(r["student_kd_acc1"]) - statistics.mean(r["student_alone_acc1"])
    console.print(
        f"compression {r['compression']:.1f}x fewer parameters; distillation gain {gain:+.2f} points "
        f"top-1. Runs: {Path(r['run_dirs']['teacher']).parent}"
    )
