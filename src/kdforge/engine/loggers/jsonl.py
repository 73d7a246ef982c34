"""``metrics.jsonl``: one JSON object per record, always written (the report and `kdforge compare` read it)."""

from __future__ import annotations

import json
from typing import IO, Any

from kdforge.core import runfiles
from kdforge.engine.loggers.base import Logger, RunInfo, plain_value


class JSONLLogger(Logger):
    """Appends ``{"kind": ..., "step": ..., **values}`` lines, flushed at once (a crash loses nothing logged)."""

    def __init__(self) -> None:
        self._file: IO[str] | None = None

    def start(self, run: RunInfo) -> None:
        self._file = (run.run_dir / runfiles.METRICS).open("a")

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if self._file is not None:
            record = {"kind": kind, "step": step, **{k: plain_value(v) for k, v in values.items()}}
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
