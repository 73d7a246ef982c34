"""``report.html``: one self-contained page per run, or an overlay of several (e.g. baseline vs distilled),
that a person reads instead of the logs. No external resources: charts are inline SVG, styles inline.

Every number in ``metrics.jsonl`` is drawn, placed by its record kind and key prefix (`place`), so keys
added to the logs later appear without changes here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from kdforge import __version__
from kdforge.atomic import atomic_write
from kdforge.errors import KDForgeError
from kdforge.report.plots import CHART_CSS, Reference, Series, line_chart, style
from kdforge.report.profile import shape_text
from kdforge.report.summary import format_params, short_name

SECTIONS = {
    "Loss parts": "Each part of the loss per logged step: raw, and weighted as it enters the total.",
    "Validation": "Metrics after each epoch; dashed grey lines are the teacher's.",
    "Learning rate": "",
    "Loss weights and schedules": "Weights and scheduled term parameters in force at each epoch.",
    "Time per step": "Where a training step's time goes, and the throughput it gives.",
    "Diagnostics": "How strongly each term pulls on the student, and how closely it follows the teacher.",
}
# Drawn only for a run where they leave these values: no phases, no NaN steps, no live teacher.
QUIET = {"phase": -1, "nonfinite_total": 0, "time/teacher_ms": 0}
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


@dataclass
class Chart:
    """One chart's data: ``lines[(run index, label)] = {step: (epoch or None, value)}``."""

    section: str
    title: str
    kind: str
    lines: dict[tuple[int, str], dict[float, tuple[Any, float]]] = field(default_factory=dict)

    @property
    def x_label(self) -> str:
        """Training records are drawn over steps; others over epochs when every point carries one."""
        epochs = (epoch for line in self.lines.values() for epoch, _ in line.values())
        return "epoch" if self.kind != "train" and all(_finite(e) for e in epochs) else "step"

    def points(self, line: tuple[int, str]) -> list[tuple[float, float]]:
        by_epoch = self.x_label == "epoch"
        return sorted((epoch if by_epoch else step, value) for step, (epoch, value) in self.lines[line].items())

    def values(self) -> list[float]:
        return [value for line in self.lines.values() for _, value in line.values()]


def write_report(run_dirs: list[Path], out: Path) -> Path:
    """Write the report of `run_dirs` (overlaid in every chart when several) to `out`; returns `out`."""
    if not run_dirs:
        raise ReportError("give at least one run directory to report on.")
    runs = [load_run(Path(path), name) for path, name in zip(run_dirs, run_names(run_dirs), strict=True)]
    page = render(runs)

    return atomic_write(Path(out), lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))


def run_names(paths: list[Path]) -> list[str]:
    """Each run's folder name, with parent folders prepended until the names differ."""
    parts = [Path(p).resolve().parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [f"{name} ({i + 1})" for i, name in enumerate(names)]  # the same folder given twice


def load_run(path: Path, name: str) -> Run:
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise ReportError(
            f"{str(metrics)!r} not found: {str(path)!r} is not a kdforge run directory "
            "(give the folder a run wrote, e.g. runs/NAME)."
        )
    meta = _read_json(path / "meta.json") or {}
    return Run(name, path, read_records(metrics), _read_json(path / "summary.json"), meta)


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


def place(kind: str, key: str) -> tuple[str, str, str]:
    """(section, chart title, series label) of a logged number; keys nobody planned for get a chart each."""
    head, _, tail = key.partition("/")
    if kind == "train":
        if head == "loss":
            return "Loss parts", "loss (raw)", tail or "total"
        if head == "wloss":
            return "Loss parts", "loss (weighted)", tail
        if head == "lr":
            return "Learning rate", "learning rate", key
        if head == "time":
            return "Time per step", "time per step (ms)", tail.removesuffix("_ms")
        if key == "samples_per_s":
            return "Time per step", "throughput (samples/s)", key
    if kind == "val":
        return "Validation", key, key
    if kind == "schedule":
        if key == "task_weight" or head == "weight":
            return "Loss weights and schedules", "loss weights", tail or "task"
        return "Loss weights and schedules", tail or key, head if tail else key  # kd/temperature: "temperature"
    if kind == "diagnostics":
        return ("Diagnostics", key, key) if head == "val" else ("Diagnostics", head, tail or key)
    return f"Other: {kind}", head, tail or key


def collect(runs: list[Run]) -> list[Chart]:
    """Every finite number of every record, as charts in section order (first seen first within one)."""
    charts: dict[tuple[str, str], Chart] = {}
    for index, run in enumerate(runs):
        quiet = {key for key, value in QUIET.items() if all(r.get(key, value) == value for r in run.records)}
        for record in run.records:
            kind, step = str(record.get("kind")), record.get("step")
            if kind in ("teacher", "warning") or not _finite(step):  # teachers and warnings have tables of their own
                continue
            for key, value in record.items():
                if key in NOT_DRAWN or key in quiet or not _finite(value):
                    continue
                section, title, label = place(kind, key)
                chart = charts.setdefault((section, title), Chart(section, title, kind))
                line = chart.lines.setdefault((index, label), {})
                line[step] = (record.get("epoch"), value)  # a resumed run logs its steps again: the last one wins
    order = list(SECTIONS)
    return sorted(charts.values(), key=lambda c: order.index(c.section) if c.section in order else len(order))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def chart_svg(chart: Chart, runs: list[Run]) -> str:
    """Colour by series label and dash by run; a chart of one quantity colours (and names) its runs instead."""
    labels = list(dict.fromkeys(label for _, label in chart.lines))
    many = len(runs) > 1
    series = []
    for index, label in chart.lines:
        color, dash = style(labels.index(label) if len(labels) > 1 else index, index)
        name = (runs[index].name if len(labels) == 1 else f"{runs[index].name} · {label}") if many else label
        series.append(Series(name, chart.points((index, label)), color, dash))
    refs = _teacher_references(chart.title, runs) if chart.section == "Validation" else []
    return line_chart(chart.title, series, chart.x_label, refs, log_y=_log_scale(chart))


def _log_scale(chart: Chart) -> bool:
    """Losses spanning more than ~1.5 decades are drawn on a log axis, where their late progress stays visible."""
    values = chart.values()
    return "loss" in chart.title and min(values) > 0 and max(values) / min(values) >= 30


def _teacher_references(metric: str, runs: list[Run]) -> list[Reference]:
    refs = {(_role(name), values.get(metric)) for run in runs for name, values in teachers_metrics(run).items()}
    return [Reference(label, value) for label, value in sorted(refs, key=str) if _finite(value)]


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


def _role(name: str) -> str:
    return "teacher" if name == "teacher" else f"teacher {name}"


def render(runs: list[Run]) -> str:
    """The whole page."""
    charts = collect(runs)
    names = ", ".join(run.name for run in runs)
    body = [
        f"<header><h1>kdforge report</h1><p class='lead'>{escape(_title(runs))}</p></header>",
        _section("Runs", runs_table(runs)),
        _section("Teacher vs student", models_table(runs)),
    ]
    if len(runs) > 1:
        body.append(_section("Best metrics compared", comparison_table(runs)))
    for section in dict.fromkeys(c.section for c in charts):
        figures = "".join(f"<figure>{chart_svg(c, runs)}</figure>" for c in charts if c.section == section)
        note = f"<p class='note'>{escape(SECTIONS.get(section, ''))}</p>" if SECTIONS.get(section) else ""
        body.append(_section(section, f"{note}<div class='charts'>{figures}</div>"))
    body.append(_section("Warnings and notes", warnings_list(runs)))
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>kdforge report: {escape(names)}</title><style>{CSS}{CHART_CSS}</style></head><body>"
        + "".join(body)
        + f"<footer>written by kdforge {escape(__version__)}</footer></body></html>"
    )


def _title(runs: list[Run]) -> str:
    tasks = sorted({str(run.summary["task"]) for run in runs if run.summary and run.summary.get("task")})
    joined = " vs ".join(run.name for run in runs)
    return f"{joined} ({', '.join(tasks)})" if tasks else joined


def _section(title: str, content: str) -> str:
    anchor = "".join(ch if ch.isalnum() else "-" for ch in title.lower())
    return f"<section id='{escape(anchor)}'><h2>{escape(title)}</h2>{content}</section>"


def _table(header: list[str], rows: list[list[str]], caption: str = "", numbers_from: int = 2) -> str:
    """An HTML table of plain strings (escaped here); columns from `numbers_from` on are right-aligned numbers."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if i >= numbers_from else ''}>{escape(c)}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    note = f"<p class='note'>{escape(caption)}</p>" if caption else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"


def runs_table(runs: list[Run]) -> str:
    rows = []
    for run in runs:
        s = run.summary or {}
        teachers = ", ".join(short_name(t["name"]) for t in s.get("teachers") or []) or "-"
        epochs = s.get("epochs_run", max((r["epoch"] for r in _kind(run, "val")), default="-"))
        rows.append(
            [
                run.name,
                short_name(s["student"]["name"]) if s.get("student") else "-",
                teachers,
                str(epochs) + (" (stopped early)" if s.get("stopped_early") else ""),
                str(s.get("best_epoch") or "-"),
                str(s.get("steps", max((r.get("step", 0) for r in run.records), default=0))),
                str(run.meta.get("started", "-")),
                _commit(run.meta),
                str(run.path.resolve()),
            ]
        )
    header = ["run", "student", "teacher", "epochs", "best epoch", "steps", "started", "git commit", "directory"]
    return _table(header, rows, numbers_from=len(header))


def _kind(run: Run, kind: str) -> list[dict[str, Any]]:
    return [r for r in run.records if r.get("kind") == kind]


def _commit(meta: dict[str, Any]) -> str:
    git = meta.get("git") or {}
    return f"{str(git['commit'])[:10]}{' (dirty)' if git.get('dirty') else ''}" if git.get("commit") else "-"


def models_table(runs: list[Run]) -> str:
    """Teachers (each once) and every run's student: size, cost, metrics, and the student's gain over the teacher."""
    rows: list[tuple[str, dict[str, Any], str]] = []  # (model, entry of summary.json, vs teacher)
    for run in runs:
        for teacher in (run.summary or {}).get("teachers") or []:
            if all(teacher != entry for _, entry, _ in rows):
                rows.append((_role(teacher["teacher"]), teacher, ""))
    for run in runs:
        s = run.summary or {}
        if s.get("student"):
            model = f"student ({run.name})" if len(runs) > 1 else "student"
            rows.append((model, s["student"], _versus(s)))
    if not rows:
        return "<p class='note'>No summary.json yet (the runs have not finished).</p>"
    metrics = list(dict.fromkeys(m for _, entry, _ in rows for m in entry.get("metrics", {})))
    header = ["model", "network", "params", "size", "MACs", "CPU latency", *metrics, "vs teacher"]
    table = [
        [model, short_name(e["name"]), format_params(e.get("params")), *_profile_cells(e.get("profile"))]
        + [_number(e.get("metrics", {}).get(m)) for m in metrics]
        + [versus]
        for model, e, versus in rows
    ]
    return _table(header, table, _models_caption(runs, [e for _, e, _ in rows]))


def _profile_cells(profile: dict[str, Any] | None) -> list[str]:
    if not profile:
        return ["-", "-", "-"]
    return [_bytes(profile["size_bytes"]), _si(profile["macs"]), f"{profile['latency_ms']:.3g} ms"]


def _versus(summary: dict[str, Any]) -> str:
    """How much smaller (and faster, when both were profiled) the student is than the (first) teacher."""
    teacher, student = summary.get("teacher") or {}, summary["student"]
    if not summary.get("compression"):
        return "-"
    text = f"{summary['compression']:.1f}x fewer params"
    t_prof, s_prof = teacher.get("profile"), student.get("profile")
    if t_prof and s_prof and s_prof.get("latency_ms"):
        text += f", {t_prof['latency_ms'] / s_prof['latency_ms']:.1f}x faster"
    return text


def _models_caption(runs: list[Run], entries: list[dict[str, Any]]) -> str:
    best = [f"{run.name}: {run.summary['best_epoch']}" for run in runs if run.summary and run.summary.get("best_epoch")]
    text = "Student metrics are those of its best epoch" + (f" ({'; '.join(best)})." if best else ".")
    profile = next((e["profile"] for e in entries if e.get("profile")), None)
    if profile:
        shape = shape_text(profile["input_shape"])
        text += (
            f" Size: weights as stored in safetensors. MACs: multiply-accumulates of one forward of a {shape} input "
            f"(matrix products and convolutions). CPU latency: median batch-1 float32 forward, {profile['threads']} "
            "thread(s)."
        )
    return text


def comparison_table(runs: list[Run]) -> str:
    """Each run's best metrics, with the difference to the first run (e.g. distilled vs the baseline)."""
    best = [best_metrics(run) for run in runs]
    metrics = list(dict.fromkeys(m for b in best for m in b))
    rows = []
    for run, values in zip(runs, best, strict=True):
        cells = []
        for metric in metrics:
            value, base = values.get(metric), best[0].get(metric)
            delta = f" ({value - base:+.4g})" if run is not runs[0] and _finite(value) and _finite(base) else ""
            cells.append(_number(value) + delta)
        rows.append([run.name, *cells])
    caption = f"Best epoch of each run; in brackets, the difference to {runs[0].name}."
    return _table(["run", *metrics], rows, caption, numbers_from=1)


def best_metrics(run: Run) -> dict[str, float]:
    """The student's best metrics: from summary.json, else the validation record with the highest fitness."""
    if run.summary and run.summary.get("student"):
        return dict(run.summary["student"].get("metrics", {}))
    vals = [r for r in _kind(run, "val") if _finite(r.get("fitness"))]
    best = max(vals, key=lambda r: r["fitness"], default={})
    return {k: v for k, v in best.items() if k not in NOT_DRAWN}


def warnings_list(runs: list[Run]) -> str:
    items = []
    for run in runs:
        prefix = f"{run.name}: " if len(runs) > 1 else ""
        for r in _kind(run, "warning"):
            where = f"step {r.get('step', '?')}" + (f", epoch {r['epoch']:g}" if _finite(r.get("epoch")) else "")
            items.append(f"{prefix}{where}: {r.get('message', '')}")
        if not run.records:
            items.append(f"{prefix}metrics.jsonl is empty: the run logged nothing yet.")
        if run.summary is None:
            items.append(f"{prefix}no summary.json: the run is still going, or stopped before its end.")
        elif run.summary.get("nonfinite_steps"):
            items.append(f"{prefix}{run.summary['nonfinite_steps']} steps had a NaN/Inf loss and were skipped.")
    if not items:
        return "<p class='note'>None.</p>"
    return "<ul class='warnings'>" + "".join(f"<li>{escape(item)}</li>" for item in items) + "</ul>"


def _number(value: Any) -> str:
    return f"{value:.4g}" if _finite(value) else "-"


def _si(count: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return str(count)


def _bytes(count: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f;
  margin: 0 auto; padding: 24px; max-width: 1240px; background: #fafafa; }
h1 { margin: 0; font-size: 24px; } h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; }
.lead { margin: 4px 0 0; color: #444; font-size: 16px; } .note { color: #555; margin: 4px 0 8px; }
table { border-collapse: collapse; background: #fff; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e5e5e5; text-align: left; white-space: nowrap; }
td.num { text-align: right; } th { background: #f0f0f0; font-weight: 600; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 12px; }
figure { margin: 0; background: #fff; border: 1px solid #e5e5e5; border-radius: 6px; padding: 6px; }
.warnings li { margin: 2px 0; } footer { margin-top: 32px; color: #888; font-size: 12px; }
"""
