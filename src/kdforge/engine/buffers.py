"""Undo of batch statistics for skipped steps."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class BufferSnapshot:
    """A copy of the student's float buffers (BN running statistics).

    Taken at the start of each accumulation window and restored when the window's step is skipped as
    non-finite, so a NaN batch leaves no trace in the model. The copy is preallocated: one in-place
    ``_foreach_copy_`` per window.
    """

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        self.live = [b for m in modules for b in m.buffers() if b.is_floating_point()]
        self.saved = [b.detach().clone() for b in self.live]

    def snapshot(self) -> None:
        """Remember the current values."""
        if self.live:
            torch._foreach_copy_(self.saved, self.live)

    def restore(self) -> None:
        """Put back the values of the last snapshot."""
        if self.live:
            torch._foreach_copy_(self.live, self.saved)
