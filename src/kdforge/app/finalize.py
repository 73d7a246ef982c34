"""What a finished run leaves behind: the exported student, summary.json, the report, the loggers' summary, and
the table a person reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from kdforge.app.build import Run
from kdforge.app.export import export_student
from kdforge.app.report.html import write_report
from kdforge.app.report.profile import example_input, model_profile
from kdforge.app.report.summary import print_summary, write_summary
from kdforge.app.teachers import teacher_profile
from kdforge.core import runfiles
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.models.build import count_parameters
from kdforge.models.checkpoint import evaluated_weights


@dataclass
class RunResult:
    """What `kdforge.fit` returns: where the run is, its last and best evaluations, the teachers', the summary
    (as summary.json) and the files a user takes away (``student``: the exported weights; ``best`` and ``last``:
    checkpoints; ``registry``: a detection run's registry model)."""

    run_dir: Path | None
    metrics: dict[str, float]
    best_metrics: dict[str, float]
    teacher_metrics: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


def finalize(run: Run, last: dict[str, float], teachers_metrics: dict[str, dict[str, float]]) -> RunResult:
    """Summarise, export the best student, profile the models, write summary.json and report.html, send the summary
    (and, with ``log.log_checkpoint``, the best checkpoint) to the loggers."""
    config, trainer, run_dir = run.config, run.trainer, run.run_dir
    best_path = runfiles.checkpoint(run_dir, config.train.checkpoint.best_name) if run_dir else None
    best_checkpoint = load_checkpoint(best_path) if best_path is not None and best_path.is_file() else None
    best = dict(best_checkpoint["metrics"]) if best_checkpoint is not None else trainer.last_metrics
    summary = summarize(run, last, best, teachers_metrics)
    files: dict[str, Path] = {}
    if run_dir is not None:
        net = trainer.eval_network
        if best_checkpoint is not None:
            net.load_state_dict(evaluated_weights(best_checkpoint))  # the best epoch's weights (EMA's when on)
            files["best"] = best_path
        files["student"] = export_student(net, None, run_dir / runfiles.STUDENT)
        files["last"] = runfiles.last_checkpoint(run_dir)
        if config.log.report:
            add_profiles(run, summary, net)
        write_summary(summary, run_dir / runfiles.SUMMARY)
        run.log.finish(summary, best_path if config.log.log_checkpoint and best_checkpoint is not None else None)
        if config.log.report:
            files["report"] = write_report([run_dir], run_dir / runfiles.REPORT)
    if config.log.verbose and run.context.world.is_main:
        print_summary(summary)
    teacher_metrics = next(iter(teachers_metrics.values()), {})
    return RunResult(run_dir, last, best, teacher_metrics, summary, files)


def summarize(
    run: Run, last: dict[str, float], best: dict[str, float], teachers_metrics: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """summary.json: the student's best and last metrics and size, each teacher's, compression, how the run went."""
    config, distiller, state = run.config, run.parts.distiller, run.trainer.state
    student_params = count_parameters(run.trainer.student)
    cached = _cached_profiles(run)
    teachers = [
        {
            "teacher": name,
            "name": spec.name,
            "params": cached[name]["params"] if cached else count_parameters(distiller.teachers[name]),
            "metrics": teachers_metrics.get(name, {}),
        }
        for name, spec in config.teacher_specs().items()
    ]
    return {
        "task": config.task,
        "student": {"name": config.student.name, "params": student_params, "metrics": best, "last_metrics": last},
        "teacher": teachers[0] if teachers else None,
        "teachers": teachers,
        "compression": teachers[0]["params"] / student_params if teachers else None,
        "epochs_run": state.epoch,
        "best_epoch": state.best_epoch,
        "stopped_early": state.stopped_early,
        "steps": state.global_step,
        "nonfinite_steps": state.nonfinite_total,
    }


def add_profiles(run: Run, summary: dict[str, Any], student: nn.Module) -> None:
    """Parameters, size, MACs and CPU latency of the student and each teacher, for the report's table (a cached
    teacher was measured when the cache was built)."""
    distiller = run.parts.distiller
    example = example_input(run.trainer.val_loader.dataset)
    summary["student"]["profile"] = model_profile(student, example, adapter=distiller.student.adapter)
    cached = _cached_profiles(run)
    for entry in summary["teachers"]:
        name = entry["teacher"]
        if cached:
            entry["profile"] = cached[name]
        else:
            entry["profile"] = teacher_profile(distiller.teachers[name], distiller.teacher_inputs[name](example))


def _cached_profiles(run: Run) -> dict[str, dict[str, Any]]:
    """The cached teachers' profiles, measured when the cache was built ({} with live teachers)."""
    cached = run.parts.distiller.cached
    return cached.reader.manifest["teacher_profiles"] if cached is not None else {}
