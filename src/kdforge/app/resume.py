"""Which run a command continues: ``--resume RUN_DIR`` or a checkpoint, or a run a signal stopped (the same
command resumes it)."""

from __future__ import annotations

from pathlib import Path

from kdforge.app.rundir import run_base
from kdforge.core import runfiles
from kdforge.core.config import RunConfig, changed_keys, load_config
from kdforge.core.errors import ConfigError
from kdforge.engine.loggers import console


def preempted_run(config: RunConfig) -> tuple[Path | None, Path | None]:
    """(run directory, last.pt) of this config's run when a signal stopped it, so the same command resumes it;
    (None, None) when there is none. The run may carry a ``-2``, ``-3``... suffix (its name was taken)."""
    run_dir = _stopped_run(run_base(config))
    if run_dir is None:
        return None, None
    differing = changed_keys(load_config([run_dir / runfiles.CONFIG]).to_dict(), config.to_dict())
    if differing:
        raise ConfigError(
            f"run {str(run_dir)!r} was stopped by a signal and waits to be resumed, but this config differs from its "
            f"config.yaml in {', '.join(differing[:8])}. Resume it with `kdforge train --resume {run_dir}` (its own "
            f"config, plus --set for what may change), or delete {run_dir / runfiles.PREEMPTED} to start a new run."
        )
    console.print(f"resuming {run_dir}: it was stopped by a signal")
    return run_dir, runfiles.last_checkpoint(run_dir)


def _stopped_run(base: Path) -> Path | None:
    """The last of ``base``, ``base-2``, ... that a signal stopped (marker and last.pt present)."""
    found, candidate, n = None, base, 2
    while candidate.exists():
        if (candidate / runfiles.PREEMPTED).is_file() and runfiles.last_checkpoint(candidate).is_file():
            found = candidate
        candidate, n = base.with_name(f"{base.name}-{n}"), n + 1
    return found


def resume_target(path: str | Path) -> tuple[Path, Path]:
    """For ``--resume``: the run directory and the checkpoint (``last.pt`` when given a directory; a task with its
    own loop, such as detection, finds its own in the directory)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"nothing to resume at {str(path)!r}: it does not exist.")
    run_dir = path if path.is_dir() else path.parent.parent
    if not (run_dir / runfiles.CONFIG).is_file():
        raise ConfigError(f"{str(run_dir)!r} has no config.yaml; resume needs the run directory kdforge wrote.")
    return run_dir, runfiles.last_checkpoint(run_dir) if path.is_dir() else path


def checked_checkpoint(path: Path) -> Path:
    """`path` when it is a file, else the error that says there is nothing to resume there."""
    if not path.is_file():
        raise ConfigError(f"nothing to resume at {str(path.parent.parent)!r}: {str(path)!r} does not exist.")
    return path


def resume_config(path: str | Path, overrides: list[str] | None = None) -> tuple[RunConfig, Path, Path]:
    """The run's saved config (plus overrides), its directory and its checkpoint."""
    run_dir, ckpt = resume_target(path)
    return load_config([run_dir / runfiles.CONFIG], overrides), run_dir, checked_checkpoint(ckpt)
