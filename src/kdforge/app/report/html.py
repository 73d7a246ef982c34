"""``report.html``: one self-contained page per run, or an overlay of several (e.g. baseline vs distilled),
that a person reads instead of the logs. No external resources: charts are inline SVG, styles inline.

Every number in ``metrics.jsonl`` is drawn, placed by its record kind and key prefix (`place`), so keys
added to the logs later appear without changes here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from kdforge import __version__
from kdforge.app.report.plots import CHART_CSS, Reference, Series, line_chart, style
from kdforge.app.report.runs import (
    NOT_DRAWN,
    ReportError,
    Run,
    finite,
    load_run,
    run_names,
    teacher_label,
    teachers_metrics,
)
from kdforge.app.report.tables import comparison_table, models_table, runs_table, warnings_list
from kdforge.core.atomic import atomic_write

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
        return "epoch" if self.kind != "train" and all(finite(e) for e in epochs) else "step"

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
            if kind in ("teacher", "warning") or not finite(step):  # teachers and warnings have tables of their own
                continue
            for key, value in record.items():
                if key in NOT_DRAWN or key in quiet or not finite(value):
                    continue
                section, title, label = place(kind, key)
                chart = charts.setdefault((section, title), Chart(section, title, kind))
                line = chart.lines.setdefault((index, label), {})
                line[step] = (record.get("epoch"), value)  # a resumed run logs its steps again: the last one wins
    order = list(SECTIONS)
    return sorted(charts.values(), key=lambda c: order.index(c.section) if c.section in order else len(order))


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
    refs = {(teacher_label(name), values.get(metric)) for run in runs for name, values in teachers_metrics(run).items()}
    return [Reference(label, value) for label, value in sorted(refs, key=str) if finite(value)]


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
