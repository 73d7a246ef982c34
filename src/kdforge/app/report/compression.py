"""The compression report of a config's teacher/student pair: what distillation saves before any training.

Each model is built from the config and measured by `kdforge.app.report.profile.model_profile` at the input size it
reads (no dataset is read), or, for an ``import`` dataset (whose inputs may be anything: a dict of sensors, a
1-D signal), on the first val sample; the ratios say what replacing the teacher(s) with the student buys at
deployment.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from kdforge.app.checks import task_class
from kdforge.app.report.profile import example_input, input_shape, model_profile, shape_text
from kdforge.app.report.summary import format_params, short_name
from kdforge.core.config import DataConfig, ModelSpec, RunConfig
from kdforge.core.errors import KDForgeError
from kdforge.models.build import build_model, forward_adapter

RATIOS = {"compression": "params", "size_ratio": "size_bytes", "macs_ratio": "macs", "speedup": "latency_ms"}


def compression_report(config: RunConfig, input_size: int | None = None, runs: int = 20) -> dict[str, Any]:
    """Profiles of the student and of every teacher, and teacher-over-student ratios.

    Args:
        config: the run config; models get ``data.num_classes`` classes, or their own default when it is unset.
        input_size: square input side for every model; by default each reads ``input.size`` of its spec, else
            ``data.image_size``.
        runs: timed forwards per model for the CPU latency.

    Returns:
        ``student``: a profile (``name``, ``source`` and `model_profile`'s keys). ``teachers``: one profile by
        teacher name. ``compression`` (parameters), ``size_ratio``, ``macs_ratio`` and ``speedup`` (latency):
        teachers' total over the student, since the student replaces all of them; None without a teacher or when
        the student's figure is zero.
    """
    if runs < 1:
        raise KDForgeError(f"runs must be at least 1 to time the CPU latency (got {runs}).")
    example = _data_example(config) if input_size is None else None
    classes = 0 if task_class(config.task).embeds_only else config.data.num_classes
    student = _profile(config.student, config.data, input_size, runs, "student", classes, example)
    teachers = {
        name: _profile(spec, config.data, input_size, runs, f"teacher {name!r}", classes, example)
        for name, spec in config.teacher_specs().items()
    }
    report: dict[str, Any] = {"student": student, "teachers": teachers}
    for ratio, key in RATIOS.items():
        total = sum(t[key] for t in teachers.values())
        report[ratio] = total / student[key] if teachers and student[key] else None
    return report


def _data_example(config: RunConfig) -> Any:
    """The first val sample's input of an ``import`` dataset (the one kind whose inputs need not be images)."""
    if config.data.dataset != "import":
        return None
    from kdforge.data.datasets import build_dataset

    return example_input(build_dataset(config.data, "val")[0])


def _profile(
    spec: ModelSpec, data: DataConfig, input_size: int | None, runs: int, role: str, classes: int | None, example: Any
) -> dict[str, Any]:
    model = build_model(spec, classes, role=role)
    measured = example if example is not None else input_shape(spec, data, input_size)
    profile = model_profile(model, measured, runs, adapter=forward_adapter(spec))
    return {"name": spec.name, "source": spec.source, **profile}


def print_compression(report: dict[str, Any], console: Console | None = None) -> None:
    """One row per model (parameters, size, MACs, CPU latency, input) and a line of teacher/student ratios."""
    console = console or Console(width=max(120, Console().width))  # a narrow terminal would cut the names
    threads = report["student"]["threads"]
    title = f"kdforge compression report (batch 1, float32, {threads} CPU thread{'s' if threads > 1 else ''})"
    table = Table(title=title, title_justify="left")
    table.add_column("model")
    table.add_column("name")
    for column in ("params", "size", "MACs", "CPU latency", "input"):
        table.add_column(column, justify="right")
    rows = [(f"teacher {name}" if name != "teacher" else name, p) for name, p in report["teachers"].items()]
    for role, p in [*rows, ("student", report["student"])]:
        table.add_row(
            role,
            short_name(p["name"]),
            format_params(p["params"]),
            format_bytes(p["size_bytes"]),
            format_macs(p["macs"]),
            f"{p['latency_ms']:.2f} ms",
            shape_text(p["input_shape"]),
        )
    console.print(table)
    if report["compression"] is not None:
        console.print(ratio_line(report))


def ratio_line(report: dict[str, Any]) -> str:
    """``15.5x fewer parameters, 4.1x smaller on disk, 3.2x fewer MACs, 4.1x faster on CPU`` (a missing ratio
    is left out); with several teachers, against their total."""
    phrases = {
        "compression": "fewer parameters",
        "size_ratio": "smaller on disk",
        "macs_ratio": "fewer MACs",
        "speedup": "faster on CPU",
    }
    line = ", ".join(f"{report[k]:.1f}x {text}" for k, text in phrases.items() if report[k] is not None)
    count = len(report["teachers"])
    return f"{line} than the {count} teachers together" if count > 1 and line else line


def format_bytes(count: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count} B"


def format_macs(count: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return str(count)
