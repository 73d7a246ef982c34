"""The short flags of the classic case (``--teacher``, ``--alpha``, ``--temperature`` ...), applied to a
merged raw config so they refine it rather than replace it: ``--temperature 2`` on a recipe with a kd
and a fitnet term changes the kd temperature and keeps the fitnet term."""

from __future__ import annotations

import copy
from typing import Any

from kdforge.core.config.loading import set_dotted
from kdforge.core.errors import ConfigError

DEFAULT_ALPHA, DEFAULT_TEMPERATURE = 0.7, 4.0

# flag name -> dotted config key; values are set as given (strings stay strings: --name 001)
PLAIN_FLAGS = {
    "data": "data.root",
    "epochs": "train.epochs",
    "batch_size": "data.batch_size",
    "lr": "train.optimizer.lr",
    "device": "device",
    "name": "output.name",
    "teacher_checkpoint": "teacher.checkpoint",
}


def apply_short_flags(raw: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """A copy of `raw` with the flags that are not None applied."""
    raw = copy.deepcopy(raw)
    if isinstance(flags.get("teacher"), str) and flags["teacher"].lower() == "none":
        raw["teacher"] = None
        raw["distill"] = {**raw.get("distill", {}), "terms": [], "task_weight": 1.0}
        flags = {**flags, "teacher": None, "teacher_checkpoint": None}
    for role in ("teacher", "student"):
        _set_model(raw, role, flags.get(role), flags.get(f"{role}_source"))
    if flags.get("teacher_checkpoint") is not None and raw.get("teachers"):
        raise ConfigError(
            "--teacher-checkpoint applies to a single teacher; with several, set each one's checkpoint: "
            "--set teachers.NAME.checkpoint=PATH."
        )
    for flag, key in PLAIN_FLAGS.items():
        if flags.get(flag) is not None:
            set_dotted(raw, key, flags[flag])
    if raw.get("teacher") and (flags.get("teacher") or flags.get("alpha") is not None or flags.get("temperature")):
        _set_kd(raw, flags.get("alpha"), flags.get("temperature"))
    return raw


def _set_model(raw: dict[str, Any], role: str, name: str | None, source: str | None) -> None:
    if name is None and source is None:
        return
    spec = dict(raw.get(role) or {})
    if name is not None:
        spec["name"] = name
    if source is not None or (name is not None and ":" in name):
        spec["source"] = source or "import"
    raw[role] = spec


def _set_kd(raw: dict[str, Any], alpha: float | None, temperature: float | None) -> None:
    """Patch the kd term (weight alpha, task weight 1 - alpha), or add one when there is none."""
    distill = raw.setdefault("distill", {})
    terms = distill.setdefault("terms", [])
    kd = next((t for t in terms if t.get("loss") == "kd"), None)
    if kd is None:
        kd = {"loss": "kd", "weight": DEFAULT_ALPHA, "temperature": DEFAULT_TEMPERATURE}
        terms.append(kd)
        distill.setdefault("task_weight", 1.0 - DEFAULT_ALPHA)
    if alpha is not None:
        kd["weight"] = alpha
        distill["task_weight"] = 1.0 - alpha
    if temperature is not None:
        kd["temperature"] = temperature
