"""The package layers import one way: a layer reads only the layers below it (or its own), never one above,
not even inside a function. docs/architecture.md explains the layers."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import kdforge

SOURCE = Path(kdforge.__file__).parent
# Bottom to top; data and models share a level (a model's taps read the input helpers).
LEVELS = {"core": 0, "data": 1, "models": 1, "distill": 2, "tasks": 3, "engine": 4, "app": 5}
TOP = max(LEVELS.values())  # the package root (the Python API) stands with the app


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _level(module: str) -> int:
    """The layer of a ``kdforge...`` module name (the root package and unknown subpackages count as the top)."""
    parts = module.split(".")
    return LEVELS.get(parts[1], TOP) if len(parts) > 1 else TOP


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The kdforge modules an import statement names (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if not node.level:
        return [node.module or ""]
    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
    return [".".join(base + ([node.module] if node.module else []))]


def upward_imports(root: Path) -> list[str]:
    """Every import (at any depth: module level, in functions, under TYPE_CHECKING) of a higher layer."""
    found = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in _imported(node, module, path.name == "__init__.py"):
                if target.startswith("kdforge") and _level(target) > _level(module):
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno}: {module} imports {target}")
    return found


def test_no_layer_imports_a_layer_above_it():
    assert upward_imports(SOURCE) == []


def test_every_subpackage_has_a_layer():
    packages = {p.name for p in SOURCE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LEVELS)


def test_the_check_finds_a_planted_upward_import_inside_a_function(tmp_path):
    copy = tmp_path / "kdforge"
    shutil.copytree(SOURCE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "core" / "errors.py").open("a") as f:
        f.write("\n\ndef _planted():\n    from kdforge.engine import trainer  # noqa\n    return trainer\n")
    with (copy / "distill" / "schedule.py").open("a") as f:
        f.write("\nfrom ..app import pipeline  # noqa\n")
    found = upward_imports(copy)
    assert len(found) == 2
    assert "kdforge.core.errors imports kdforge.engine" in found[0]
    assert "kdforge.distill.schedule imports kdforge.app" in found[1]
