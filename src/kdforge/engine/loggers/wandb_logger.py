"""Weights & Biases (``pip install 'kdforge[wandb]'``): online, or offline (``mode: offline``) for a cluster
without network, synced later with ``wandb sync``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdforge.engine.loggers.base import Logger, RunInfo, scalars


class WandbLogger(Logger):
    """The config, every numeric record at its step, the summary, and (opt-in) the best checkpoint as a model
    artifact. Arguments are ``wandb.init``'s.

    Args:
        project: W&B project (default: W&B's own, from the environment).
        entity: team or user.
        name: run name (default: the run directory's name).
        tags: run tags.
        group: group several runs (e.g. a compare's baseline and distilled).
        mode: ``online``, ``offline`` or ``disabled`` (default: W&B's, from ``WANDB_MODE``).
        dir: where W&B writes its files (default: the run directory).
    """

    requires = ("wandb",)

    def __init__(
        self,
        project: str | None = None,
        entity: str | None = None,
        name: str | None = None,
        tags: list[str] | None = None,
        group: str | None = None,
        mode: str | None = None,
        dir: str | None = None,  # noqa: A002 - wandb.init's own name
    ) -> None:
        import wandb

        self._wandb = wandb
        self.settings = dict(project=project, entity=entity, name=name, tags=tags, group=group, mode=mode, dir=dir)
        self._run: Any = None

    def start(self, run: RunInfo) -> None:
        run_id = run.saved_id("wandb")
        settings = {k: v for k, v in self.settings.items() if v is not None}
        settings.setdefault("name", run.name)
        settings.setdefault("dir", str(run.run_dir))
        self._run = self._wandb.init(config=run.config, id=run_id, resume="allow" if run_id else None, **settings)
        run.save_id("wandb", self._run.id)

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        numbers = scalars(kind, values)
        if numbers:
            self._run.log(numbers, step=step)

    def finish(self, summary: dict[str, Any], checkpoint: Path | None) -> None:
        self._run.summary.update(summary)
        if checkpoint is not None:
            artifact = self._wandb.Artifact(f"{self._run.name}-best", type="model")
            artifact.add_file(str(checkpoint))
            self._run.log_artifact(artifact)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
