"""`RunLog`: where a run's records and messages go."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from rich.console import Console

from kdforge.core.config import PluginSpec
from kdforge.core.config.messages import at_key
from kdforge.core.errors import ConfigError
from kdforge.core.registry import check_arguments
from kdforge.engine.loggers.base import LOGGERS, Logger, RunInfo
from kdforge.engine.loggers.jsonl import JSONLLogger

console = Console(stderr=True)


class RunLog:
    """Sends every record to ``metrics.jsonl`` and to each backend, and messages to the console.

    A backend that raises (no network, a full disk, a server error) is reported once and switched off; the run
    goes on and ``metrics.jsonl`` keeps every record. Without a run directory (tests, other processes than rank
    0) nothing is written.

    Args:
        run_dir: where ``metrics.jsonl`` goes; None writes nothing.
        backends: the configured loggers by name (`build_loggers`).
        verbose: print messages (warnings are always printed).
    """

    def __init__(self, run_dir: Path | None = None, backends: dict[str, Logger] | None = None, verbose: bool = True):
        self.run_dir = run_dir
        self.verbose = verbose
        self._jsonl = JSONLLogger() if run_dir is not None else None
        self.backends = dict(backends or {}) if run_dir is not None else {}

    def start(self, name: str, config: dict[str, Any], resumed: bool = False) -> None:
        if self.run_dir is None:
            return
        info = RunInfo(self.run_dir, name, config, resumed)
        self._jsonl.start(info)
        self._each("start", info)

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """One record: ``{"kind": ..., "step": ..., **values}`` in metrics.jsonl and to every backend."""
        if self._jsonl is not None:
            self._jsonl.log(kind, step, values)
            self._each("log", kind, step, values)

    def message(self, text: str) -> None:
        if self.verbose:
            console.print(text)

    def warning(self, text: str) -> None:
        console.print(f"[yellow]{text}")

    def finish(self, summary: dict[str, Any], checkpoint: Path | None = None) -> None:
        """The run ended well: the backends get its summary (and the best checkpoint when it is given)."""
        self._each("finish", summary, checkpoint)

    def close(self) -> None:
        self._each("close")
        self.backends = {}
        if self._jsonl is not None:
            self._jsonl.close()

    def _each(self, method: str, *args: Any) -> None:
        for name, backend in list(self.backends.items()):
            try:
                getattr(backend, method)(*args)
            except Exception as exc:  # noqa: BLE001 - a logger must never stop training
                del self.backends[name]
                self.warning(
                    f"logger {name!r} failed in {method}() ({type(exc).__name__}: {exc}); it is switched off for the "
                    f"rest of the run. metrics.jsonl keeps every record."
                )
                _close_quietly(backend)


def _close_quietly(backend: Logger) -> None:
    try:
        backend.close()
    except Exception:  # noqa: BLE001, S110 - already reported as failed
        return


def build_loggers(specs: list[PluginSpec]) -> dict[str, Logger]:
    """The configured backends, built (``metrics.jsonl`` is not among them: `RunLog` always writes it)."""
    return {spec.name: logger_class(spec, index)(**spec.kwargs) for index, spec in enumerate(specs)}


def logger_class(spec: PluginSpec, index: int) -> type[Logger]:
    """The class entry `index` of ``log.loggers`` names, after checking its arguments and that its library is
    installed; a name that is neither registered nor an import path, a class that is not a `Logger`, a wrong
    argument or a missing library is a `ConfigError` naming the entry."""
    return at_key(f"log.loggers.{index}", lambda: _resolve(spec))


def _resolve(spec: PluginSpec) -> type[Logger]:
    cls = LOGGERS.get(spec.name)
    if not (isinstance(cls, type) and issubclass(cls, Logger)):
        raise ConfigError(f"{spec.name!r} is not a kdforge.engine.loggers.Logger subclass.")
    missing = [module for module in cls.requires if importlib.util.find_spec(module) is None]
    if missing:
        raise ConfigError(
            f"logger {spec.name!r} needs {', '.join(missing)}, which is not installed: pip install "
            f"'kdforge[{spec.name}]' (or pip install {' '.join(missing)})."
        )
    check_arguments(cls.__init__, spec.kwargs, f"logger {spec.name!r}")
    return cls
