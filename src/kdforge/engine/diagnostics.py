"""Training diagnostics: which loss part drives the student's update, how closely the student follows the
teacher, and plain-language warnings when distillation does not help the task."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.core.distributed import ONE_PROCESS, World
from kdforge.distill.losses.base import softened_kl
from kdforge.engine.evaluate import autocast_context, to_device

TASK = "task"  # the task loss's part name (Distiller.forward); every other part is a distillation term


def gradient_shares(weighted_parts: dict[str, torch.Tensor], params: Sequence[nn.Parameter]) -> dict[str, float]:
    """Per loss part (already multiplied by its weight): ``grad_norm/<name>`` = ||d part / d params|| and
    ``grad_share/<name>`` = <g_part, g_total> / ||g_total||^2 (the part's share of the update; shares sum to 1,
    a negative share pulls against the others; all 0 when the parts' gradients cancel exactly).

    Uses ``torch.autograd.grad(..., retain_graph=True)``, so the caller's backward still works afterwards and no
    ``.grad`` is touched; parameters a part does not reach count as zero gradient. Holds one gradient copy per
    part, and syncs with the device once.
    """
    if not weighted_parts:
        return {}
    params = [p for p in params if p.requires_grad]
    grads = [_grads(part, params) for part in weighted_parts.values()]
    # The Gram matrix of the parts' gradients gives every norm and share: g_total is the sum of the parts'.
    gram = torch.zeros(len(grads), len(grads), device=next(iter(weighted_parts.values())).device)  # (P, P)
    for per_part in zip(*grads, strict=True):  # one parameter's gradient from every part
        flat = torch.stack([g.flatten().float() for g in per_part])  # (P, numel)
        gram += flat @ flat.T
    total = gram.sum()  # ||g_total||^2
    shares = torch.where(total > 0, gram.sum(1) / total, torch.zeros_like(total))
    values = torch.cat([gram.diagonal().clamp_min(0).sqrt(), shares]).tolist()
    names = [f"grad_norm/{n}" for n in weighted_parts] + [f"grad_share/{n}" for n in weighted_parts]
    return dict(zip(names, values, strict=True))


def _grads(part: torch.Tensor, params: list[nn.Parameter]) -> list[torch.Tensor]:
    if not part.requires_grad or not params:  # a constant part (no graph) reaches no parameter
        return [torch.zeros_like(p) for p in params]
    return list(torch.autograd.grad(part, params, retain_graph=True, allow_unused=True, materialize_grads=True))


@torch.inference_mode()
def teacher_agreement(
    student: nn.Module,
    teacher: nn.Module,
    loader: Iterable[dict[str, Any]],
    device: torch.device,
    amp: str = "off",
    key: str = "logits",
    channels_last: bool = False,
    ignore_index: int | None = None,
    world: World = ONE_PROCESS,
) -> dict[str, float]:
    """``val/agreement`` (% of samples where the student's top-1 equals the teacher's) and ``val/teacher_kl``
    (mean KL(teacher || student) at T = 1 per sample) over the loader; both modules return dicts of outputs
    (`key` holds (B, C) logits; dense (B, C, ...) logits count per position, the student's resized to the
    teacher's, positions whose target is `ignore_index` left out). Restores each module's train/eval mode. A
    teacher that reads another input than the student (resized, renormalised) must include that step.
    """
    modes = [(module, module.training) for module in (student, teacher)]
    student.eval()
    teacher.eval()
    autocast = autocast_context(device, amp)
    sums = torch.zeros(3, device=device, dtype=torch.float64)
    agree, kl, count = sums  # views of one tensor: the totals stay on the device until one sync at the end
    for batch in loader:
        inputs = to_device(batch, device, channels_last)["input"]
        with autocast():
            s_logits, t_logits = student(inputs)[key], teacher(inputs)[key]
        s_logits, t_logits = s_logits.float(), t_logits.float()  # (B, C, ...); loss math in float32
        if s_logits.shape[2:] != t_logits.shape[2:]:  # a dense student predicting at another resolution
            s_logits = F.interpolate(s_logits, size=t_logits.shape[2:], mode="bilinear", align_corners=False)
        valid = _labelled(batch, t_logits, ignore_index)
        agree += ((s_logits.argmax(1) == t_logits.argmax(1)) & valid).sum()
        kl += torch.where(valid, softened_kl(s_logits, t_logits, 1.0, dim=1), 0.0).sum()
        count += valid.sum()
    for module, mode in modes:
        module.train(mode)
    world.sum(sums)  # under torchrun each process saw its share of the val set
    agreement, teacher_kl = (torch.stack([100 * agree, kl]) / count).tolist()
    return {"val/agreement": agreement, "val/teacher_kl": teacher_kl}


def _labelled(batch: dict[str, Any], logits: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """Positions to count, shaped like ``logits.argmax(1)``: all but those whose dense target (a mask) is
    unlabelled; class labels of (B, C) logits are never read."""
    valid = torch.ones_like(logits[:, 0], dtype=torch.bool)
    target = batch.get("target")
    dense = logits.dim() > 2 and isinstance(target, torch.Tensor) and target.shape == valid.shape
    if ignore_index is not None and dense:
        valid &= target.to(valid.device) != ignore_index
    return valid


class Diagnosis:
    """Watches the logged values and says, in plain words, when distillation is not helping the task.

    Rules (a higher ``fitness`` is better, as every task reports it):

    - *Dominant term*: fitness has not improved for `patience` evaluations, and a distillation term's mean
      ``grad_share/<term>`` over the train records since fitness last improved exceeds `dominant_share`.
    - *Imitation*: an evaluation period is the train records between two val records; per period, the mean of
      each ``loss/<part>``. From the period `patience` evaluations ago to the last one, the sum of the
      distillation terms' means fell by at least `min_drop` (relative) while the task loss's mean fell by less
      than ``min_drop / 5``, and fitness has not improved for `patience` evaluations (a task loss that stays flat
      while the val metric still improves, e.g. with few labels, is no reason to warn). Only periods with the same
      terms are compared: a schedule that switches a term off is no drop.

    A warning is returned when its condition becomes true (per term for the first rule), and again only after
    it was false in between. Records without what a rule reads (no ``loss/task`` when the task weight is 0, no
    terms in a supervised run, no ``fitness``) leave that rule silent.
    """

    def __init__(self, dominant_share: float = 0.8, patience: int = 3, min_drop: float = 0.05) -> None:
        if patience < 1:
            raise ValueError(f"patience must be at least 1 evaluation, got {patience}.")
        self.dominant_share, self.patience, self.min_drop = dominant_share, patience, min_drop
        self.best: float | None = None
        self.stalled_evals = 0  # evaluations since fitness last improved
        self._share_sums: dict[str, float] = {}  # per term, over the train records since fitness last improved
        self._share_records = 0
        self._period: dict[str, list[float]] = {}  # part name -> its losses in the open evaluation period
        self._periods: deque[dict[str, float]] = deque(maxlen=patience + 1)  # closed periods' mean losses
        self._active: set[str] = set()

    def train_record(self, values: dict[str, float]) -> list[str]:
        """Take one train log record (``loss/<part>``, ``grad_share/<part>``, ...); returns new warnings."""
        for key, value in values.items():
            if key.startswith("loss/"):
                self._period.setdefault(key[5:], []).append(value)
        shares = {k[11:]: v for k, v in values.items() if k.startswith("grad_share/")}
        if shares:
            self._share_records += 1
            for name, share in shares.items():
                self._share_sums[name] = self._share_sums.get(name, 0.0) + share
        return self._check()

    def val_record(self, metrics: dict[str, float]) -> list[str]:
        """Take one evaluation's metrics (``fitness`` is read); closes the period; returns new warnings."""
        if self._period:
            self._periods.append({name: sum(v) / len(v) for name, v in self._period.items()})
            self._period = {}
        fitness = metrics.get("fitness")
        if fitness is not None and (self.best is None or fitness > self.best):
            self.best, self.stalled_evals = fitness, 0
            self._share_sums, self._share_records = {}, 0
        elif fitness is not None:
            self.stalled_evals += 1
        return self._check()

    def _check(self) -> list[str]:
        conditions = {**self._dominant(), **self._imitation()}
        new = [text for key, text in conditions.items() if key not in self._active]
        self._active = set(conditions)
        return new

    def _dominant(self) -> dict[str, str]:
        if self.stalled_evals < self.patience or not self._share_records:
            return {}
        found = {}
        for name, total in self._share_sums.items():
            share = total / self._share_records
            if name != TASK and share > self.dominant_share:
                found[f"dominant/{name}"] = (
                    f"term {name!r} takes most of the gradient (share {share:.2f} over the last "
                    f"{self._share_records} diagnostics) while fitness has not improved for {self.stalled_evals} "
                    f"evaluations (best {self.best:.4g}): lower its weight, or raise distill.task_weight"
                )
        return found

    def _imitation(self) -> dict[str, str]:
        if len(self._periods) <= self.patience or self.stalled_evals < self.patience:
            return {}
        first, last = self._periods[0], self._periods[-1]
        terms = set(first) - {TASK}
        if TASK not in first or TASK not in last or not terms or terms != set(last) - {TASK}:
            return {}
        distill = _change(sum(first[t] for t in terms), sum(last[t] for t in terms))
        task = _change(first[TASK], last[TASK])
        if not (distill <= -self.min_drop and task > -self.min_drop / 5):
            return {}
        return {
            "imitation": (
                f"the distillation loss fell by {-distill:.0%} over the last {self.patience} evaluations while the "
                f"task loss did not ({task:+.1%}): the student imitates the teacher without getting better at the "
                "task; raise distill.task_weight, lower the terms' weights, or check the teacher's accuracy on "
                "this data"
            )
        }


def _change(before: float, after: float) -> float:
    """Relative change from `before` to `after` (negative: a fall); 0 when `before` is 0."""
    return (after - before) / abs(before) if before else 0.0
