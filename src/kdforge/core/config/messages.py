"""Config error messages: pydantic's report turned into sentences that name the key path, the value and
the nearest valid key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from kdforge.core.errors import ConfigError, KDForgeError, did_you_mean

T = TypeVar("T")


def describe(exc: ValidationError, raw: dict[str, Any], root: type[BaseModel]) -> str:
    """One message for a pydantic error report: key paths as the user wrote them, nearest valid keys."""
    # For `number | {start, end}` unions given a mapping, the "not a number" branch is noise.
    errors = [e for e in exc.errors() if not (isinstance(e["input"], dict) and e["type"].startswith("float"))]
    lines = [describe_error(err, raw, root) for err in errors or exc.errors()]
    return "invalid config: " + (lines[0] if len(lines) == 1 else "\n  - " + "\n  - ".join(lines))


def describe_error(err: dict[str, Any], raw: Any, root: type[BaseModel]) -> str:
    """One pydantic error as a sentence naming the key path and value (and the nearest key when unknown)."""
    loc = _user_loc(raw, err["loc"])
    path = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        valid = _fields_at(root, loc[:-1])
        hint = did_you_mean(str(loc[-1]), valid) or f" Valid keys here: {', '.join(sorted(valid))}."
        return f"unknown key {path!r} (value {err['input']!r}).{hint}"
    if err["type"] == "missing":
        return f"key {path!r} is required but missing."
    if err["type"] == "value_error" and isinstance(err.get("ctx", {}).get("error"), ConfigError):
        return f"key {path!r}: {err['ctx']['error']}" if path else str(err["ctx"]["error"])
    message = err["msg"].removeprefix("Value error, ").rstrip(".")
    return f"key {path!r} has invalid value {_value_at(raw, loc)!r}: {message}."


def _user_loc(raw: Any, loc: tuple[Any, ...]) -> list[Any]:
    """The key path as the user wrote it: pydantic inserts union members (``int``, ``tuple[int, int]``)
    and validator names into error locations, which are not keys of the config."""
    path, node = [], raw
    for part in loc:
        if isinstance(node, dict) and part in node or isinstance(node, list) and isinstance(part, int):
            node = node[part] if not isinstance(node, list) or part < len(node) else None
        elif isinstance(part, str) and (
            part.startswith("function-") or "[" in part or part in _TYPE_TAGS or part[:1].isupper()
        ):
            continue
        else:
            node = None
        path.append(part)
    return path


_TYPE_TAGS = {"int", "float", "str", "bool", "list", "dict", "tuple", "none", "literal"}


def _fields_at(model: type[BaseModel], loc: list[Any]) -> list[str]:
    """Valid field names of the sub-model that `loc` points into (walks through lists/optionals)."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        sub = _model_in(field.annotation) if field else None
        if sub is None:
            return []
        model = sub
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _value_at(raw: Any, loc: list[Any]) -> Any:
    node = raw
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return "<not given>"
    return node


def at_key(path: str, resolve: Callable[[], T]) -> T:
    """``resolve()`` (a registry lookup, a build) for the config key `path`; its error names the key, as schema
    errors do. Layers above the config check what the config names this way (the config cannot import them)."""
    try:
        return resolve()
    except (KDForgeError, TypeError, ValueError) as exc:
        raise ConfigError(f"invalid config: key {path!r}: {exc}") from None
