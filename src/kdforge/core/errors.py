"""Errors a user can act on: each names what was wrong and how to fix it.

Everything kdforge raises on bad input derives from `KDForgeError`, so the CLI can print the message
alone instead of a traceback from deep inside PyTorch.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class KDForgeError(Exception):
    """Base class of every user-facing kdforge error."""


class ConfigError(KDForgeError, ValueError):
    """A config key or value is invalid."""


class RegistryError(KDForgeError, KeyError):
    """A name is not registered (or is registered twice)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DataError(KDForgeError):
    """A dataset folder, file or its contents do not fit what the run needs."""


class ClassCountMismatchError(DataError):
    """A model's number of outputs differs from the dataset's number of classes."""


class CheckpointError(KDForgeError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint needs unpickling of Python objects and was not marked trusted."""


class CacheError(KDForgeError):
    """The teacher-output cache cannot be built or read as configured."""


class StaleCacheError(CacheError):
    """The teacher-output cache was built for another teacher, data or settings."""


class NonFiniteLossError(KDForgeError, FloatingPointError):
    """Training produced NaN/Inf losses too many times in a row."""


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The candidates most similar to `name`, best first (empty when nothing is close)."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A ' Did you mean ...?' suffix for error messages, or '' when nothing is close."""
    matches = closest(name, candidates)
    return f" Did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""
