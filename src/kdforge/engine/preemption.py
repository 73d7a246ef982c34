"""Stopping cleanly on a signal: a preempted node (SIGTERM; SIGUSR1 when sent to the process itself, torchrun
does not pass it on) or Ctrl-C (SIGINT).

The handler only records the request; the trainer finishes the step it is in, writes ``last.pt``
atomically and stops with `Preempted`. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from kdforge.core.errors import KDForgeError
from kdforge.engine.progress import TrainState

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


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
        self._depth = 0  # entered again inside itself (the run, then its training loop): installed once

    def __enter__(self) -> StopSignals:
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
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


def preempted(signum: int | None, state: TrainState, run_dir: Path | None) -> Preempted:
    """The error that ends a run stopped by `signum` after ``state.global_step`` (a `TrainState`), saying how to go
    on."""
    signum = signum or signal.SIGTERM
    at_end = not state.step_in_epoch
    where = f"end of epoch {state.epoch}" if at_end else f"epoch {state.epoch + 1}, batch {state.step_in_epoch}"
    again = f" (or kdforge train --resume {run_dir})." if run_dir else "."
    return Preempted(
        f"stopped by {signal.Signals(signum).name} after optimizer step {state.global_step} ({where}); last.pt holds "
        f"it. Run the same command again to continue{again}",
        signum,
    )


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: a cluster signals every process of the job, and a worker killed by it would
    abort the main process while it writes ``last.pt``; the main process stops its workers itself."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
