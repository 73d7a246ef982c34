"""The names of the files in a run directory, in one place: renaming one is a change to this file only.

A run directory holds ``config.yaml`` (the resolved config), ``meta.json`` (what produced it), ``metrics.jsonl``
(every logged record; the report reads it), ``checkpoints/`` (``last.pt``, the best, numbered ones),
``summary.json``, the exported ``student.safetensors`` and ``report.html``; ``PREEMPTED`` marks a run a signal
stopped, which the same command resumes.
"""

from __future__ import annotations

from pathlib import Path

CONFIG = "config.yaml"
META = "meta.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"  # written at every epoch's end (and with every step checkpoint): resume reads it
SUMMARY = "summary.json"
STUDENT = "student.safetensors"
REPORT = "report.html"
PREEMPTED = "PREEMPTED"  # in the run directory while a stopped run waits to be resumed


def checkpoint(run_dir: Path, name: str) -> Path:
    """``run_dir/checkpoints/<name>``."""
    return run_dir / CHECKPOINTS / name


def last_checkpoint(run_dir: Path) -> Path:
    return checkpoint(run_dir, LAST)
