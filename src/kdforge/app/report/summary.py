"""The end-of-run table a person reads, and ``summary.json`` for tools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def write_summary(summary: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(summary, indent=2))


def format_params(count: int | None) -> str:
    if count is None:
        return "-"
    for unit, size in (("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return str(count)


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    """Teacher vs student: parameters, size ratio and every metric."""
    console = console or Console()
    student, teacher = summary["student"], summary.get("teacher")
    metrics = [m for m in student["metrics"] if m.count("/") <= 1]  # per-class values belong in the report
    best = f", student at its best epoch ({summary['best_epoch']})" if summary.get("best_epoch") else ""
    table = Table(title=f"kdforge {summary['task']} run{best}", title_justify="left")
    table.add_column("model")
    table.add_column("name")
    table.add_column("params", justify="right")
    for name in metrics:
        table.add_column(name, justify="right")
    if teacher:
        table.add_row(
            "teacher",
            short_name(teacher["name"]),
            format_params(teacher["params"]),
            *(_fmt(teacher["metrics"].get(m)) for m in metrics),
        )
    table.add_row(
        "student",
        short_name(student["name"]),
        format_params(student["params"]),
        *(_fmt(student["metrics"].get(m)) for m in metrics),
    )
    console.print(table)
    if summary.get("compression"):
        console.print(f"compression: {summary['compression']:.1f}x fewer parameters")


def short_name(name: str) -> str:
    """``mypkg.models:big_net`` -> ``big_net``; timm / torchvision names unchanged."""
    return name.rsplit(":", 1)[-1]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
