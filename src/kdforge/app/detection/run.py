"""`train_detection`: one ``task: detection`` run from a `RunConfig` to a run directory and a registry model.

Run directory: ``config.yaml``, ``meta.json``, ``data.yaml`` (the dataset as Ultralytics reads it, absolute
paths), ``metrics.jsonl``, ``tb/``, ``summary.json``, ``report.html`` and Ultralytics' own folder ``yolo/``
(``weights/{best,last}.pt`` and kdforge's ``weights/kdforge_state.pt``, ``results.csv``, ``args.yaml``,
``teacher_val/``). Nothing is written outside it but the registry model (a distilled run only).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from ultralytics import __version__ as ultralytics_version
from ultralytics.models.yolo.detect import DetectionValidator

from kdforge.app.detection.args import YOLO_DIR, check_single_process, ultralytics_args
from kdforge.app.detection.criterion import check_kl_mode
from kdforge.app.detection.data import DetectionData, prepare_data
from kdforge.app.detection.export import export_to_registry
from kdforge.app.detection.logbridge import LogBridge
from kdforge.app.detection.teacher import check_model_file
from kdforge.app.detection.trainer import METRIC_KEYS, KDDetectionTrainer, fitness_of
from kdforge.app.finalize import RunResult
from kdforge.app.report.html import write_report
from kdforge.app.report.summary import print_summary, write_summary
from kdforge.app.rundir import git_commit, new_run_dir, write_run_files
from kdforge.core import runfiles
from kdforge.core.config import RunConfig, changed_keys, load_config, merge_files
from kdforge.core.context import default_threads
from kdforge.core.errors import CheckpointError, ConfigError
from kdforge.engine.loggers import RunLog, build_loggers
from kdforge.models.build import count_parameters

RESUME_FREE = frozenset({"device", "threads", "detect.workers", "log.verbose"})  # may change on resume


def train_detection(config: RunConfig, run_dir: Path | None = None, resume: bool = False) -> RunResult:
    """Train (or distil) the student; with `resume`, continue `run_dir` from its ``yolo/weights/last.pt``. Its
    result's ``metrics`` and ``best_metrics`` are the best model's, validated after training; ``files`` holds
    ``best`` (Ultralytics' best.pt) and ``registry`` (the registry model, when exported)."""
    check_single_process()
    torch.set_num_threads(config.threads or default_threads())
    run_dir = run_dir or new_run_dir(config)
    write_run_files(run_dir, _saved_config(run_dir, config) if resume else config, resumed=resume)
    data = prepare_data(config.detect.data, run_dir)
    check_model_file(config.student, "student")
    if config.teacher is not None:
        check_kl_mode(config.detect.distill, data.nc)
    overrides = ultralytics_args(config, data.yaml_path, run_dir)
    if resume:
        overrides["resume"] = str(_last_checkpoint(run_dir))
    trainer = KDDetectionTrainer(config.detect, config.teacher, overrides)
    logger = RunLog(run_dir, build_loggers(config.log.loggers), verbose=config.log.verbose)
    logger.start(run_dir.name, config.to_dict(), resumed=resume)
    try:
        teacher_metrics = _teacher_metrics(config, trainer, data, logger) if not resume else _logged_teacher(run_dir)
        LogBridge(config, logger, trainer.teacher is not None).attach(trainer)
        _train(trainer, run_dir, resume)
        return _finish(config, trainer, data, run_dir, teacher_metrics, logger)
    finally:
        logger.close()


def _saved_config(run_dir: Path, config: RunConfig) -> RunConfig:
    """The run's own config.yaml, kept as written: a resume continues Ultralytics' checkpoint with the arguments
    it was started with, so any other change would be recorded but silently ignored. Refused instead, by name."""
    saved = load_config(base=merge_files([run_dir / runfiles.CONFIG]))
    changed = [k for k in changed_keys(saved.to_dict(), config.to_dict()) if k not in RESUME_FREE]
    if changed:
        raise ConfigError(
            f"a detection resume continues {str(run_dir)!r} exactly as configured; it cannot change {changed}. "
            f"Resume without them, or start a new run with student.name: {str(run_dir / YOLO_DIR)}/weights/last.pt "
            "(student.trust_checkpoint: true) and the new settings."
        )
    return saved


def _train(trainer: KDDetectionTrainer, run_dir: Path, resume: bool) -> None:
    """Ultralytics' training; its assertion for a finished run becomes an error that says what to do instead."""
    try:
        trainer.train()
    except AssertionError as exc:
        if not (resume and "nothing to resume" in str(exc)):
            raise
        last = run_dir / YOLO_DIR / "weights" / "last.pt"
        raise CheckpointError(
            f"{str(run_dir)!r} finished its {trainer.epochs} epochs: there is nothing to resume. To train longer, "
            f"start a new run from its weights: --student {last} --set student.trust_checkpoint=true "
            "--epochs N (or best.pt instead of last.pt)."
        ) from exc


def _last_checkpoint(run_dir: Path) -> Path:
    last = run_dir / YOLO_DIR / "weights" / "last.pt"
    if not last.is_file():
        raise CheckpointError(f"nothing to resume in {str(run_dir)!r}: {str(last)!r} does not exist.")
    return last


def _teacher_metrics(
    config: RunConfig, trainer: KDDetectionTrainer, data: DetectionData, logger: RunLog
) -> dict[str, float]:
    """Validate the teacher once (on a copy: Ultralytics fuses the model it validates), as the report's reference.
    Its ``save_dir`` is given: without one Ultralytics makes ``<runs_dir>/detect/train-N`` outside the run."""
    if trainer.teacher is None or not config.detect.val_teacher:
        return {}
    args = {**{k: trainer.args.__dict__[k] for k in ("imgsz", "device", "workers", "seed")}, "plots": False}
    args |= {"data": str(data.yaml_path), "batch": config.detect.batch * 2}
    validator = DetectionValidator(save_dir=trainer.save_dir / "teacher_val", args=args)
    raw = validator(model=copy.deepcopy(trainer.teacher))
    metrics = {name: float(raw[key]) for key, name in METRIC_KEYS.items() if key in raw}
    metrics["fitness"] = fitness_of(raw, config.detect)
    logger.log("teacher", 0, {"teacher": "teacher", **{f"teacher/teacher/{k}": v for k, v in metrics.items()}})
    return metrics


def _logged_teacher(run_dir: Path) -> dict[str, float]:
    """A resumed run keeps the teacher metrics its first part logged."""
    from kdforge.app.report.runs import read_records

    metrics = run_dir / runfiles.METRICS
    for record in read_records(metrics) if metrics.is_file() else []:
        if record.get("kind") == "teacher":
            return {k.split("/", 2)[2]: v for k, v in record.items() if k.startswith("teacher/teacher/")}
    return {}


def _finish(
    config: RunConfig,
    trainer: KDDetectionTrainer,
    data: DetectionData,
    run_dir: Path,
    teacher: dict[str, float],
    logger: RunLog,
) -> RunResult:
    """summary.json, the loggers' summary, the end-of-run table, report.html and the registry export."""
    metrics = {name: float(trainer.metrics[key]) for key, name in METRIC_KEYS.items() if key in trainer.metrics}
    metrics["fitness"] = fitness_of(trainer.metrics, config.detect)
    summary = _summary(config, trainer, metrics, teacher)
    write_summary(summary, run_dir / runfiles.SUMMARY)
    logger.finish(summary, trainer.best if config.log.log_checkpoint and trainer.best.is_file() else None)
    if config.log.verbose:
        print_summary(summary)
    if config.log.report:
        write_report([run_dir], run_dir / runfiles.REPORT)
    registry = None
    if _exports(config) and trainer.best.is_file():
        registry = export_to_registry(trainer.best, config.detect.registry, _metadata(config, data, summary, run_dir))
    elif config.log.verbose:
        print(f"best model: {trainer.best} (not exported: {_why_not_exported(config)})")
    files = {"best": trainer.best, **({"registry": registry} if registry is not None else {})}
    return RunResult(run_dir, metrics, metrics, teacher, summary, files)


def _exports(config: RunConfig) -> bool:
    """Distilled runs export unless ``registry.enabled: false``; a run without a teacher only when asked."""
    enabled = config.detect.registry.enabled
    return enabled is True or (enabled is None and config.teacher is not None)


def _why_not_exported(config: RunConfig) -> str:
    if config.detect.registry.enabled is False:
        return "detect.registry.enabled is false"
    return "no teacher, so not a distilled model; detect.registry.enabled: true with a registry.name exports it"


def _params(model: torch.nn.Module | None) -> int | None:
    return None if model is None else count_parameters(model)


def _summary(
    config: RunConfig, trainer: KDDetectionTrainer, metrics: dict[str, float], teacher_metrics: dict[str, float]
) -> dict[str, Any]:
    """The same shape as the other tasks' summary.json, plus per-class results."""
    student_params = _params(trainer.ema.ema if trainer.ema else trainer.model)
    teacher = None
    if config.teacher is not None:
        teacher = {
            "teacher": "teacher",
            "name": config.teacher.name,
            "params": _params(trainer.teacher),
            "metrics": teacher_metrics,
        }
    return {
        "task": config.task,
        "student": {"name": config.student.name, "params": student_params, "metrics": metrics},
        "teacher": teacher,
        "teachers": [teacher] if teacher else [],
        "compression": teacher["params"] / student_params if teacher else None,
        "epochs_run": trainer.epoch + 1,
        "best_epoch": trainer.stopper.best_epoch or None,  # 1-based (Ultralytics counts finished epochs)
        "stopped_early": trainer.epoch + 1 < trainer.epochs,
        "steps": trainer.stats.batches,
        "nonfinite_steps": trainer.stats.nonfinite_total,
        "per_class": trainer.stats.per_class,
        "best_model": str(trainer.best),
    }


def _metadata(config: RunConfig, data: DetectionData, summary: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """What the registry keeps next to the model: where it came from and how good it is."""
    return {
        "run_dir": str(run_dir.resolve()),
        "teacher": summary["teacher"],
        "student": {k: v for k, v in summary["student"].items() if k != "metrics"},
        "data": {"yaml": str(data.yaml_path), "nc": data.nc, "names": data.names, "images": data.images},
        "metrics": summary["student"]["metrics"],
        "per_class": summary["per_class"],
        "best_epoch": summary["best_epoch"],
        "epochs_run": summary["epochs_run"],
        "config": config.to_dict(),
        "versions": {"ultralytics": ultralytics_version, "torch": torch.__version__},
        "git": git_commit(),
    }
