"""Where a training step's time goes, measured without slowing the step down."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch

# The step's parts, as logged (``time/<part>_ms``) and as labelled in the progress bar.
STEP_PARTS = {"data": "data", "teacher": "teacher", "student": "student", "optimizer": "opt"}


class StepTimer:
    """Seconds per named section, summed over one log interval.

    Off CUDA a section costs two ``perf_counter`` calls. On CUDA it records a pair of timing events on the
    device's stream, resolved only in `totals` (at log time), so timing adds no host-device sync per step;
    a section then measures the GPU's timeline, including the time it sits idle waiting for the host
    (e.g. for the next batch). Sections may nest; each reports its whole duration, nested ones included.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    def section(self, name: str) -> AbstractContextManager:
        """Time the ``with`` block as part of section `name`."""
        self.calls[name] += 1
        return self._cuda_section(name) if self.device.type == "cuda" else self._host_section(name)

    @contextmanager
    def _host_section(self, name: str) -> Iterator[None]:
        tic = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - tic

    @contextmanager
    def _cuda_section(self, name: str) -> Iterator[None]:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        stream = torch.cuda.current_stream(self.device)
        start.record(stream)
        try:
            yield
        finally:
            end.record(stream)
            self._events.append((name, start, end))

    def totals(self) -> dict[str, float]:
        """Seconds per section since the last `reset` (on CUDA, waits for the last recorded section to end)."""
        if self._events:
            self._events[-1][2].synchronize()  # the last to close is the last on the stream
            for name, start, end in self._events:
                self.seconds[name] += start.elapsed_time(end) / 1e3
            self._events.clear()
        return dict(self.seconds)

    def step_ms(self) -> dict[str, float]:
        """``time/<part>_ms``: milliseconds per optimizer step (a whole accumulation window) since the last
        call: waiting for and copying the data, the teachers' forward, the student's forward + loss + backward,
        and the optimizer step (unscale, norm, step, EMA, zero_grad, schedule). The teacher runs inside the
        micro-step, so the student's part is the micro-step's time less the teacher's. Resets the timer."""
        seconds = self.totals()
        to_ms = 1e3 / max(self.calls["optimizer"], 1)
        ms = {name: to_ms * seconds.get(name, 0.0) for name in ("data", "teacher", "micro_step", "optimizer")}
        ms["student"] = ms.pop("micro_step") - ms["teacher"]
        self.reset()
        return {f"time/{part}_ms": ms[part] for part in STEP_PARTS}


def progress_info(values: dict[str, Any]) -> str:
    """``loss 0.512 (task 0.300 kd 0.724) 812 img/s | data 3% teacher 41% student 48% opt 8%``."""
    parts = " ".join(f"{k[5:]} {v:.3f}" for k, v in values.items() if k.startswith("loss/"))
    times = {label: values[f"time/{part}_ms"] for part, label in STEP_PARTS.items()}
    total = max(sum(times.values()), 1e-9)
    shares = " ".join(f"{label} {100 * ms / total:.0f}%" for label, ms in times.items())
    return f"loss {values.get('loss', math.nan):.3f} ({parts}) {values['samples_per_s']:.0f} img/s | {shares}"
