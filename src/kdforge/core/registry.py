"""One generic registry for losses, model sources, tasks, datasets, optimizers and schedules."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from kdforge.core.errors import ConfigError, RegistryError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; refuses duplicates and lists what exists on a miss.

    Entries may be registered lazily as ``"package.module:attr"`` strings, so optional dependencies
    (ultralytics, segmentation-models-pytorch) are imported only when their entry is used. A name that is itself
    an import path (``"mypkg.tasks:MyTask"``) gives the object it points to: a user's plug-in needs no
    registration.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, obj: T | str | None = None) -> Callable[[T], T] | T | str:
        """Register `obj` under `name`; without `obj`, return a decorator."""
        if obj is not None:
            return self._add(name, obj)

        def decorator(target: T) -> T:
            self._add(name, target)
            return target

        return decorator

    def _add(self, name: str, obj: T | str) -> T | str:
        if name in self._entries:
            raise RegistryError(f"{self.kind} {name!r} is registered twice; pick another name.")
        self._entries[name] = obj
        return obj

    def get(self, name: str) -> T:
        """The entry called `name`, importing it if it was registered lazily (or if `name` is an import path)."""
        if name not in self._entries and ":" in name:
            return import_object(name, self.kind)  # type: ignore[return-value]
        if name not in self._entries:
            raise RegistryError(
                f"unknown {self.kind} {name!r}.{did_you_mean(name, self._entries)} "
                f"Available: {', '.join(sorted(self._entries))}, or an import path package.module:Name."
            )
        entry = self._entries[name]
        if isinstance(entry, str):
            entry = _import_attr(entry, f"{self.kind} {name!r}")
            self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def _import_attr(path: str, what: str) -> object:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryError(
            f"{what} needs module {module_name!r}, which failed to import: {exc}. "
            "Install the matching extra, e.g. pip install 'kdforge[yolo]' or 'kdforge[seg]'."
        ) from exc
    if not hasattr(module, attr):
        raise RegistryError(f"{what} points to {path!r}, but module {module_name!r} has no attribute {attr!r}.")
    return getattr(module, attr)


def import_object(path: str, what: str = "object") -> object:
    """Import ``"package.module:attr"`` (dots after the colon walk attributes), with a clear error."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise RegistryError(f"{what} {path!r} must look like 'package.module:attribute'.")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryError(f"cannot import module {module_name!r} for {what} {path!r}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(obj) if not n.startswith("_")]
            raise RegistryError(
                f"module {module_name!r} has no attribute {part!r} (for {what} {path!r}).{did_you_mean(part, public)}"
            )
        obj = getattr(obj, part)
    return obj


def check_arguments(target: Callable, kwargs: dict[str, object], what: str) -> None:
    """Refuse keyword arguments `target` (a class or function) does not take, with the nearest valid name, and
    required ones that are missing: a `ConfigError` naming `what` (e.g. "distillation loss 'kd'")."""
    signature = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values()):
        return
    valid = [name for name in signature if name != "self"]
    for key in kwargs:
        if key not in valid:
            listed = ", ".join(valid) or "none"
            raise ConfigError(f"{what} has no parameter {key!r}.{did_you_mean(key, valid)} Its parameters: {listed}.")
    missing = [
        name
        for name in valid
        if signature[name].default is inspect.Parameter.empty
        and signature[name].kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        and name not in kwargs
    ]
    if missing:
        raise ConfigError(f"{what} needs {', '.join(missing)}.")
