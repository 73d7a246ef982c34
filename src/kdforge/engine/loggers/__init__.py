"""Logger backends: one protocol (`Logger`), one registry (`LOGGERS`), and `RunLog`, which sends every record to
``metrics.jsonl`` and to each configured backend.

A backend is one file: a `Logger` subclass registered by name (``@LOGGERS.register("name")``, or lazily as an
import path so its library loads only when used); a user's own is given by import path in ``log.loggers``.
"""

from kdforge.engine.loggers.base import LOGGERS, Logger, RunInfo, plain_value, scalars
from kdforge.engine.loggers.runlog import RunLog, build_loggers, console, logger_class

LOGGERS.register("tensorboard", "kdforge.engine.loggers.tensorboard:TensorBoardLogger")
LOGGERS.register("csv", "kdforge.engine.loggers.csv:CSVLogger")
LOGGERS.register("wandb", "kdforge.engine.loggers.wandb_logger:WandbLogger")
LOGGERS.register("mlflow", "kdforge.engine.loggers.mlflow_logger:MLflowLogger")

__all__ = [
    "LOGGERS",
    "Logger",
    "RunInfo",
    "RunLog",
    "build_loggers",
    "console",
    "logger_class",
    "plain_value",
    "scalars",
]
