"""The code stays readable: no function over 60 lines, no file over 400, the training loop within 300."""

from __future__ import annotations

import ast
from pathlib import Path

import kdforge

SOURCE = Path(kdforge.__file__).parent
MAX_FUNCTION, MAX_FILE, MAX_TRAINER = 60, 400, 300


def _files() -> list[Path]:
    return sorted(SOURCE.rglob("*.py"))


def test_no_function_is_longer_than_60_lines():
    long = [
        f"{path.relative_to(SOURCE)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in _files()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION
    ]
    assert long == []


def test_no_file_is_longer_than_400_lines_and_the_trainer_300():
    sizes = {path.relative_to(SOURCE).as_posix(): len(path.read_text().splitlines()) for path in _files()}
    assert {name: n for name, n in sizes.items() if n > MAX_FILE} == {}
    assert sizes["engine/trainer.py"] <= MAX_TRAINER
