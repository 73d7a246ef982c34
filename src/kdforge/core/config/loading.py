"""Loading a run config: YAML files merged in order, then ``--set dotted.key=value`` overrides, validated
into one `RunConfig` (every mistake becomes one `ConfigError`)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kdforge.core.config.messages import describe
from kdforge.core.config.schema import RunConfig
from kdforge.core.errors import ConfigError


def load_config(
    files: list[str | Path] | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Merge `base`, then each YAML file in order, then ``dotted.key=value`` overrides; validate."""
    raw = deep_merge(copy.deepcopy(base or {}), merge_files(files or []))
    for item in overrides or []:
        apply_override(raw, item)
    return validate_config(raw)


def merge_files(files: list[str | Path]) -> dict[str, Any]:
    """The YAML files deep-merged in order (later files win)."""
    raw: dict[str, Any] = {}
    for path in files:
        raw = deep_merge(raw, read_yaml(path))
    return raw


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; check the -c/--config path.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys, got {type(data).__name__}.")
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; any other value (lists included) replaces the old one."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"dotted.key": value}`` (the keys ``--set`` takes); empty mappings stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_keys(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two config dicts, sorted."""
    a, b = flatten(before), flatten(after)
    return sorted(key for key in a.keys() | b.keys() if a.get(key) != b.get(key))


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` (value parsed as YAML; list items by index, ``terms.0.weight=1``)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like 'dotted.key=value', e.g. train.epochs=5.")
    set_dotted(raw, key.strip(), yaml.safe_load(text) if text.strip() else None)


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for ``key = "a.b.c"``, creating mappings on the way (list items by index)."""
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        node = _child(node, part, ".".join(parts[: depth + 1]))
    _set(node, parts[-1], value, key)


def _child(node: Any, part: str, path: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, path)]
    if not isinstance(node, dict):
        raise ConfigError(f"override path {path!r} goes inside a value that is not a mapping.")
    if not isinstance(node.get(part), (dict, list)):
        node[part] = {}
    return node[part]


def _set(node: Any, part: str, value: Any, path: str) -> None:
    if isinstance(node, list):
        node[_index(node, part, path)] = value
    elif isinstance(node, dict):
        node[part] = value
    else:
        raise ConfigError(f"override path {path!r} goes inside a value that is not a mapping.")


def _index(node: list, part: str, path: str) -> int:
    if not re.fullmatch(r"-?\d+", part) or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"override {path!r}: {part!r} is not an index of a list of {len(node)} items.")
    return int(part)


def validate_config(raw: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe(exc, raw, RunConfig)) from None


def save_config(config: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
