"""MLflow (``pip install 'kdforge[mlflow]'``): a tracking server, or a local store such as
``sqlite:///mlflow.db``."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from kdforge.core import runfiles
from kdforge.core.config import flatten
from kdforge.engine.loggers.base import Logger, RunInfo, scalars

PARAM_BATCH = 100  # MLflow's limit of parameters per log_batch call
PARAM_LENGTH = 500  # the shortest value limit of the MLflow versions in use


class MLflowLogger(Logger):
    """The config as parameters (flattened: ``train.optimizer.lr``), every numeric record as metrics at its step,
    ``summary.json`` as an artifact (the best student metrics also as ``best/...`` metrics), and (opt-in) the best
    checkpoint. Uses `MlflowClient` with an explicit run id, so it never touches MLflow's global active run.

    Args:
        tracking_uri: the server or store (default: MLflow's own, from ``MLFLOW_TRACKING_URI``).
        experiment: experiment name (made when missing).
        run_name: run name (default: the run directory's name).
        tags: run tags.
        artifact_location: where a new experiment keeps its artifacts (default: MLflow's, ``./mlruns`` for a
            local store).
    """

    requires = ("mlflow",)

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str = "kdforge",
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        artifact_location: str | None = None,
    ) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.experiment, self.run_name, self.tags = experiment, run_name, dict(tags or {})
        self.artifact_location = artifact_location
        self.run_id: str | None = None
        self._status = "FAILED"

    def start(self, run: RunInfo) -> None:
        self.run_id = run.saved_id("mlflow")
        if self.run_id is not None:
            return
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = (
            found.experiment_id
            if found
            else self.client.create_experiment(self.experiment, artifact_location=self.artifact_location)
        )
        created = self.client.create_run(experiment_id, tags=self.tags, run_name=self.run_name or run.name)
        self.run_id = created.info.run_id
        run.save_id("mlflow", self.run_id)
        from mlflow.entities import Param

        params = [Param(key, str(value)[:PARAM_LENGTH]) for key, value in flatten(run.config).items()]
        for start in range(0, len(params), PARAM_BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + PARAM_BATCH])

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_key(k), v, now, step) for k, v in scalars(kind, values).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, summary: dict[str, Any], checkpoint: Path | None) -> None:
        self.client.log_dict(self.run_id, summary, runfiles.SUMMARY)
        best = (summary.get("student") or {}).get("metrics") or {}
        self.log("summary", summary.get("steps") or 0, {f"best/{key}": value for key, value in best.items()})
        if checkpoint is not None:
            self.client.log_artifact(self.run_id, str(checkpoint), "checkpoints")
        self._status = "FINISHED"

    def close(self) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, self._status)
            self.run_id = None


def _key(name: str) -> str:
    """A metric name MLflow accepts (letters, digits, ``_ - . / `` and spaces)."""
    return re.sub(r"[^\w\-./ ]", "_", name)
