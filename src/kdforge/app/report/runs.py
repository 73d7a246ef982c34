"""Reading run directories for the report: metrics.jsonl records, summary.json and meta.json, and the numbers
the tables and charts take from them."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdforge.core import runfiles
from kdforge.core.errors import KDForgeError

NOT_DRAWN = {"kind", "step", "epoch"}


class ReportError(KDForgeError):
    """A run directory cannot be read into a report."""


@dataclass
class Run:
    """What the report reads from one run directory."""

    name: str
    path: Path
    records: list[dict[str, Any]]
    summary: dict[str, Any] | None
    meta: dict[str, Any]


def run_names(paths: list[Path]) -> list[str]:
    """Each run's folder name, with parent folders prepended until the names differ."""
    parts = [Path(p).resolve().parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [f"{name} ({i + 1})" for i, name in enumerate(names)]  # the same folder given twice


def load_run(path: Path, name: str) -> Run:
    metrics = path / runfiles.METRICS
    if not metrics.is_file():
        raise ReportError(
            f"{str(metrics)!r} not found: {str(path)!r} is not a kdforge run directory "
            "(give the folder a run wrote, e.g. runs/NAME)."
        )
    meta = _read_json(path / runfiles.META) or {}
    return Run(name, path, read_records(metrics), _read_json(path / runfiles.SUMMARY), meta)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a cut-off last line (a run killed while writing it) is dropped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise ReportError(f"{path}:{number} is not a JSON record ({exc.msg}); the file is damaged.") from exc
        if isinstance(record, dict):
            records.append(record)
    return records


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{str(path)!r} is not valid JSON ({exc}); was the run stopped while writing it?") from exc


def teachers_metrics(run: Run) -> dict[str, dict[str, float]]:
    """Each teacher's validation metrics: from summary.json, else from the run's "teacher" records."""
    if run.summary and run.summary.get("teachers"):
        return {t["teacher"]: t.get("metrics", {}) for t in run.summary["teachers"]}
    found: dict[str, dict[str, float]] = {}
    for record in (r for r in run.records if r.get("kind") == "teacher"):
        for key, value in record.items():
            if key.startswith("teacher/") and key.count("/") >= 2:
                _, name, metric = key.split("/", 2)
                found.setdefault(name, {})[metric] = value
    return found


def teacher_label(name: str) -> str:
    return "teacher" if name == "teacher" else f"teacher {name}"


def records_of(run: Run, kind: str) -> list[dict[str, Any]]:
    return [r for r in run.records if r.get("kind") == kind]


def best_metrics(run: Run) -> dict[str, float]:
    """The student's best metrics: from summary.json, else the validation record with the highest fitness."""
    if run.summary and run.summary.get("student"):
        return dict(run.summary["student"].get("metrics", {}))
    vals = [r for r in records_of(run, "val") if finite(r.get("fitness"))]
    best = max(vals, key=lambda r: r["fitness"], default={})
    return {k: v for k, v in best.items() if k not in NOT_DRAWN}


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
