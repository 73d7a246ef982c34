"""The logger protocol: what a backend receives, and when."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdforge.core.registry import Registry


@dataclass(frozen=True)
class RunInfo:
    """What a backend is told when the run starts."""

    run_dir: Path
    name: str  # the run directory's name
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config, as plain data
    resumed: bool = False

    def saved_id(self, backend: str) -> str | None:
        """The tracking run id `backend` kept in the run directory, when this run resumes: it continues there."""
        path = self.run_dir / f"{backend}-run-id"
        return path.read_text().strip() if self.resumed and path.is_file() else None

    def save_id(self, backend: str, run_id: str) -> None:
        (self.run_dir / f"{backend}-run-id").write_text(run_id + "\n")


class Logger:
    """A destination for a run's records. Every method may raise: `RunLog` then warns once, switches the backend
    off and goes on (``metrics.jsonl`` keeps every record).

    Records are ``(kind, step, values)``: ``kind`` is ``train``, ``val``, ``teacher``, ``diagnostics``,
    ``warning`` or ``schedule``; ``step`` counts optimizer steps; values are plain numbers and strings.
    """

    requires: tuple[str, ...] = ()  # modules it imports, checked when the config is (a missing one is named)

    def start(self, run: RunInfo) -> None:
        """The run begins (or resumes): open files, connect, record the config."""

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """One record."""

    def finish(self, summary: dict[str, Any], checkpoint: Path | None) -> None:
        """The run ended well: its summary (as summary.json), and the best checkpoint when the user asked to send
        it (``log.log_checkpoint``), else None."""

    def close(self) -> None:
        """Release files and connections; called after `finish`, and also after a failure."""


LOGGERS: Registry[type[Logger]] = Registry("logger")


def plain_value(value: Any) -> Any:
    """JSON has no NaN or Infinity: non-finite floats are written as strings ("nan", "inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def scalars(kind: str, values: dict[str, Any]) -> dict[str, float]:
    """A record's numbers under the names dashboards show: ``kind/key``, or the key as is when it already has a
    ``/`` (``loss/kd``, ``val/acc1``); ``epoch`` and non-numbers are left out."""
    return {
        key if "/" in key else f"{kind}/{key}": float(value)
        for key, value in values.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch"
    }
