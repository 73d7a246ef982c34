"""CSV tables, one per record kind (``csv/train.csv``, ``csv/val.csv`` ...), for spreadsheets and pandas."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from kdforge.core.atomic import atomic_write
from kdforge.engine.loggers.base import Logger, RunInfo, plain_value


class CSVLogger(Logger):
    """A row per record: ``step``, then one column per value. A record that brings a new column (a term switched
    on by a phase, a first diagnostics value) rewrites its table with the wider header; earlier rows leave the
    new column empty. A resumed run appends to the tables it wrote before.

    Args:
        directory: where the tables go (default: ``csv/`` in the run directory).
    """

    def __init__(self, directory: str | None = None) -> None:
        self.directory = Path(directory) if directory else None
        self._columns: dict[str, list[str]] = {}

    def start(self, run: RunInfo) -> None:
        self.directory = self.directory or run.run_dir / "csv"
        self.directory.mkdir(parents=True, exist_ok=True)

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        path = self.directory / f"{kind}.csv"
        row = {"step": step, **{key: plain_value(value) for key, value in values.items()}}
        columns = self._columns.get(kind) or _header(path)
        added = [key for key in row if key not in columns]
        self._columns[kind] = columns = columns + added
        if added and path.is_file():
            _rewrite(path, columns, [*_rows(path), row])
            return
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, columns)
            if added:  # a new file
                writer.writeheader()
            writer.writerow(row)


def _header(path: Path) -> list[str]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return next(csv.reader(f), [])


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _rewrite(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)
