"""The callback interface: a few named moments of the training loop."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for annotations only: the trainer builds and calls the callbacks
    from kdforge.engine.trainer import Trainer


class Callback:
    """Hooks into `Trainer.fit`; override the ones you need (all do nothing by default).

    What a hook may read and call on the trainer: ``config``, ``state`` (`TrainState`: epoch, global_step,
    step_in_epoch, best ...), ``log`` (`RunLog`: ``log(kind, step, values)``, ``message``, ``warning``),
    ``run_dir``, ``task``, ``distiller``, ``student`` (the bare network), ``eval_network`` (what is evaluated and
    exported; EMA replaces it), ``optimizer``, ``world``, ``evaluate()``, ``save_checkpoint(name)`` and
    ``request_stop(reason)``. Only the main process (rank 0) writes files; every process runs the hooks.
    """

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first step (after a resume has restored the trainer)."""

    def on_epoch_start(self, trainer: Trainer) -> None:
        """Before an epoch's first step (also a resumed epoch's)."""

    def on_before_backward(self, trainer: Trainer, out: dict[str, Any]) -> None:
        """The first micro-batch of each step, after the forward (``out``: ``loss``, ``parts``, ``student``)."""

    def on_step_end(self, trainer: Trainer, applied: bool, record: dict[str, float] | None) -> None:
        """After each optimizer step. ``applied``: the update was made (False when skipped as non-finite);
        ``record``: the ``train`` record (mean losses, lr, throughput, time split) on logging steps, else None."""

    def on_evaluation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """After each evaluation on the val set (every ``train.eval_every_epochs`` epochs, and the last)."""

    def on_epoch_end(self, trainer: Trainer) -> None:
        """After an epoch (and its evaluation, when there was one)."""

    def on_save_checkpoint(self, trainer: Trainer, checkpoint: dict[str, Any]) -> None:
        """A checkpoint is being written: add this callback's state to it (plain data and tensors only)."""

    def on_load_checkpoint(self, trainer: Trainer, checkpoint: dict[str, Any]) -> None:
        """A resume: restore this callback's state from the checkpoint."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last step, or when fit is leaving on an error or a stop signal (``state`` says how far it
        got); close what the callback opened."""


class CallbackList(Callback):
    """Calls each hook of every callback, in order (the built-in ones first, then the user's)."""

    def __init__(self, callbacks: Iterable[Callback]) -> None:
        self.callbacks = list(callbacks)

    def _each(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def on_fit_start(self, trainer: Trainer) -> None:
        self._each("on_fit_start", trainer)

    def on_epoch_start(self, trainer: Trainer) -> None:
        self._each("on_epoch_start", trainer)

    def on_before_backward(self, trainer: Trainer, out: dict[str, Any]) -> None:
        self._each("on_before_backward", trainer, out)

    def on_step_end(self, trainer: Trainer, applied: bool, record: dict[str, float] | None) -> None:
        self._each("on_step_end", trainer, applied, record)

    def on_evaluation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self._each("on_evaluation_end", trainer, metrics)

    def on_epoch_end(self, trainer: Trainer) -> None:
        self._each("on_epoch_end", trainer)

    def on_save_checkpoint(self, trainer: Trainer, checkpoint: dict[str, Any]) -> None:
        self._each("on_save_checkpoint", trainer, checkpoint)

    def on_load_checkpoint(self, trainer: Trainer, checkpoint: dict[str, Any]) -> None:
        self._each("on_load_checkpoint", trainer, checkpoint)

    def on_fit_end(self, trainer: Trainer) -> None:
        self._each("on_fit_end", trainer)
