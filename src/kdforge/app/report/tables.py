"""The report's tables: the runs, teacher vs student (with the models' cost), best metrics compared, warnings."""

from __future__ import annotations

from html import escape
from typing import Any

from kdforge.app.report.profile import shape_text
from kdforge.app.report.runs import Run, best_metrics, finite, records_of, teacher_label
from kdforge.app.report.summary import format_params, short_name


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
        epochs = s.get("epochs_run", max((r["epoch"] for r in records_of(run, "val")), default="-"))
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


def _commit(meta: dict[str, Any]) -> str:
    git = meta.get("git") or {}
    return f"{str(git['commit'])[:10]}{' (dirty)' if git.get('dirty') else ''}" if git.get("commit") else "-"


def models_table(runs: list[Run]) -> str:
    """Teachers (each once) and every run's student: size, cost, metrics, and the student's gain over the teacher."""
    rows: list[tuple[str, dict[str, Any], str]] = []  # (model, entry of summary.json, vs teacher)
    for run in runs:
        for teacher in (run.summary or {}).get("teachers") or []:
            if all(teacher != entry for _, entry, _ in rows):
                rows.append((teacher_label(teacher["teacher"]), teacher, ""))
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
            delta = f" ({value - base:+.4g})" if run is not runs[0] and finite(value) and finite(base) else ""
            cells.append(_number(value) + delta)
        rows.append([run.name, *cells])
    caption = f"Best epoch of each run; in brackets, the difference to {runs[0].name}."
    return _table(["run", *metrics], rows, caption, numbers_from=1)


def warnings_list(runs: list[Run]) -> str:
    items = []
    for run in runs:
        prefix = f"{run.name}: " if len(runs) > 1 else ""
        for r in records_of(run, "warning"):
            where = f"step {r.get('step', '?')}" + (f", epoch {r['epoch']:g}" if finite(r.get("epoch")) else "")
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
    return f"{value:.4g}" if finite(value) else "-"


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
