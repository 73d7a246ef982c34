"""Callbacks: the checkpoints, early stopping, EMA, diagnostics and progress the loop runs with, and the user's own
(``train.callbacks: [{name: pkg.mod:MyCallback, kwargs: {...}}]``). A new one is one file: a `Callback` subclass
overriding the hooks it needs."""

from __future__ import annotations

from kdforge.core.config import PluginSpec, RunConfig
from kdforge.core.config.messages import at_key
from kdforge.core.errors import ConfigError
from kdforge.core.registry import check_arguments, import_object
from kdforge.engine.callbacks.base import Callback, CallbackList
from kdforge.engine.callbacks.checkpointing import Checkpointing
from kdforge.engine.callbacks.diagnostics import Diagnostics
from kdforge.engine.callbacks.early_stopping import EarlyStopping
from kdforge.engine.callbacks.ema import EMA
from kdforge.engine.callbacks.progress import ProgressLog

__all__ = ["Callback", "CallbackList", "build_callbacks", "callback_class", "standard_callbacks"]


def standard_callbacks(config: RunConfig, show_progress: bool, reported: dict[str, float]) -> list[Callback]:
    """The built-in callbacks the config switches on, in the order they run: EMA first (a step's checkpoint holds
    its updated average), then records and progress, diagnostics, checkpoints (the best is saved before early
    stopping decides). `reported`: the task's metrics by name, so a misspelt metric fails before training."""
    train, log = config.train, config.log
    callbacks: list[Callback] = [EMA(train.ema)] if train.ema else []
    callbacks += [ProgressLog(show_progress), Diagnostics(log.diagnostics_every_steps, log.teacher_agreement)]
    callbacks.append(Checkpointing(train.checkpoint, reported))
    if train.early_stopping:
        callbacks.append(EarlyStopping(train.early_stopping, reported))
    return callbacks


def build_callbacks(specs: list[PluginSpec]) -> list[Callback]:
    """The user's callbacks (``train.callbacks``), built."""
    return [callback_class(spec, index)(**spec.kwargs) for index, spec in enumerate(specs)]


def callback_class(spec: PluginSpec, index: int) -> type[Callback]:
    """The class entry `index` of ``train.callbacks`` names, after checking its arguments; a bad import path, a
    class that is not a `Callback` or a wrong argument is a `ConfigError` naming the entry."""
    return at_key(f"train.callbacks.{index}", lambda: _resolve(spec))


def _resolve(spec: PluginSpec) -> type[Callback]:
    if ":" not in spec.name:
        raise ConfigError(f"callback {spec.name!r} is not an import path; give the class as package.module:ClassName.")
    cls = import_object(spec.name, "callback")
    if not (isinstance(cls, type) and issubclass(cls, Callback)):
        raise ConfigError(f"callback {spec.name!r} is not a kdforge.engine.callbacks.Callback subclass.")
    check_arguments(cls.__init__, spec.kwargs, f"callback {spec.name!r}")
    return cls
