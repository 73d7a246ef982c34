"""Stopping cleanly on a signal: a preempted node (SIGTERM, or Slurm's SIGUSR1) or Ctrl-C (SIGINT).

The handler only records the request; the trainer finishes the step it is in, writes ``last.pt``
atomically and stops with `Preempted`. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from kdforge.errors import KDForgeError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
PREEMPTED_MARKER = "PREEMPTED"  # in the run directory while a stopped run waits to be resumed


class Preempted(KDForgeError):
    """Training stopped on a signal after writing ``last.pt``; rerunning the same command resumes."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for "ended by signal N"


class StopSignals:
    """Records the first stop signal while active (a context manager); restores the old handlers on exit.

    Only the main thread may install handlers; elsewhere (a notebook worker thread) it records nothing.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = self.received or signum

    @property
    def requested(self) -> bool:
        return self.received is not None
