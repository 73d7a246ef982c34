"""The checks a config passes before a run is built: the schema (core) knows no registries, so every name it
gives (task, terms, optimizer, loggers, callbacks) is resolved here, with the config key in each message, and
the task applies its own rules. Runs in well under a second, before any data or model is touched."""

from __future__ import annotations

from kdforge.core.config import RunConfig
from kdforge.core.config.messages import at_key
from kdforge.core.errors import ConfigError
from kdforge.distill.terms import check_terms
from kdforge.engine.callbacks import callback_class
from kdforge.engine.loggers import logger_class
from kdforge.engine.optim import OPTIMIZERS
from kdforge.tasks.base import TASKS, Task


def check_config(config: RunConfig) -> RunConfig:
    """`config` after every name in it resolved and its task's rules applied (the task may fill defaults, e.g.
    task: features sets the task weight to 0); raises `ConfigError` naming the key of the first problem."""
    task = task_class(config.task)
    at_key("train.optimizer.name", lambda: OPTIMIZERS.get(config.train.optimizer.name))
    check_terms(config)
    for index, spec in enumerate(config.log.loggers):
        logger_class(spec, index)
    for index, spec in enumerate(config.train.callbacks):
        callback_class(spec, index)
    task.configure(config)
    return config


def task_class(name: str) -> type[Task]:
    """The registered task class `name` (``config.task``) names, or the class an import path points to."""
    found = at_key("task", lambda: TASKS.get(name))
    if not (isinstance(found, type) and issubclass(found, Task)):
        raise ConfigError(f"invalid config: key 'task': {name!r} is not a kdforge.tasks.base.Task subclass.")
    return found


# Detection lives in the app layer (its loop is Ultralytics'); registered here, where task names are resolved.
TASKS.register("detection", "kdforge.app.detection.task:DetectionTask")
