"""The ``distill`` config section: weighted terms (with scheduled weights and parameters), taps and phases."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kdforge.core.config.base import Strict
from kdforge.core.config.messages import describe_error
from kdforge.core.errors import ConfigError, did_you_mean


class ScheduledValue(Strict):
    """A value that changes over epochs: ``{start: 6.0, end: 3.0, schedule: linear}``.

    The change begins at ``start_epoch`` (1-based; e.g. the first epoch after a task-only phase) and spans
    ``epochs`` epochs (default: to the end of the run); before it the value is ``start``, after it ``end``.
    """

    start: float
    end: float
    schedule: Literal["constant", "linear", "cosine"] = "linear"
    epochs: int | None = Field(None, ge=1)
    start_epoch: int = Field(1, ge=1)


def _check_weight(value: float | ScheduledValue) -> float | ScheduledValue:
    values = (value.start, value.end) if isinstance(value, ScheduledValue) else (value,)
    if any(v < 0 for v in values):
        raise ValueError("loss weights must be >= 0")
    return value


def _is_schedule(value: Any) -> bool:
    """Any mapping given as a parameter value is meant as a schedule (so a typo in one is reported)."""
    return isinstance(value, (dict, ScheduledValue))


def _schedule_of(param: str, value: Any) -> ScheduledValue:
    try:
        return ScheduledValue.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(describe_error(err, value, ScheduledValue) for err in exc.errors())
        raise ConfigError(
            f"{param}: {problems} A schedule looks like {{start: 6.0, end: 3.0, schedule: linear}} "
            "(schedule: constant, linear or cosine; optional epochs, start_epoch)."
        ) from None


class TermConfig(BaseModel):
    """One distillation term: ``{loss: kd, weight: 0.7, temperature: 4}``.

    Keys other than ``loss``, ``weight``, ``name`` and ``teachers`` go to the term's constructor, which checks them
    when the terms are resolved (`kdforge.distill.terms.check_terms`: the registry lives above the config).
    The weight and any numeric parameter may be scheduled: ``temperature: {start: 6, end: 3}``.
    ``name`` is what the term is logged as and what phases refer to (default: the loss name, made unique).
    """

    model_config = ConfigDict(extra="allow")

    loss: str
    weight: float | ScheduledValue = 1.0
    name: str | None = None
    teachers: list[str] | None = None  # which teachers it reads (several: their ensemble); default: the first

    @field_validator("teachers", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("weight")
    @classmethod
    def _non_negative(cls, value: float | ScheduledValue) -> float | ScheduledValue:
        return _check_weight(value)

    def params(self) -> dict[str, Any]:
        """Constructor parameters; a scheduled parameter is given its start value."""
        return {k: (self.scheduled_params()[k].start if _is_schedule(v) else v) for k, v in self.extra().items()}

    def scheduled_params(self) -> dict[str, ScheduledValue]:
        return {k: _schedule_of(k, v) for k, v in self.extra().items() if _is_schedule(v)}

    def extra(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TapsConfig(Strict):
    """Named forward hooks: ``{feature_name: module.path}`` for each model."""

    teacher: dict[str, str] = Field(default_factory=dict)
    student: dict[str, str] = Field(default_factory=dict)


class PhaseConfig(Strict):
    """Settings for the epochs before ``until_epoch`` (1-based: ``until_epoch: 5`` covers epochs 1-5).

    ``task_weight`` replaces the task weight; ``scale_terms`` multiplies every term weight (0 = task
    only); ``weights`` sets single terms by name. After the last phase the base settings apply.
    """

    until_epoch: int = Field(ge=1)
    task_weight: float | None = Field(None, ge=0.0)
    scale_terms: float | None = Field(None, ge=0.0)
    weights: dict[str, float] = Field(default_factory=dict)

    @field_validator("weights")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for weight in value.values():
            _check_weight(weight)
        return value


class DistillConfig(Strict):
    task_weight: float | ScheduledValue = Field(1.0, union_mode="left_to_right")
    terms: list[TermConfig] = Field(default_factory=list)
    taps: TapsConfig = Field(default_factory=TapsConfig)
    phases: list[PhaseConfig] = Field(default_factory=list)

    @field_validator("task_weight")
    @classmethod
    def _non_negative(cls, value: float | ScheduledValue) -> float | ScheduledValue:
        return _check_weight(value)

    def term_names(self) -> list[str]:
        """Each term's log name: its ``name``, else its loss made unique (``fitnet``, ``fitnet_1``)."""
        seen: dict[str, int] = {}
        names = []
        for term in self.terms:
            count = seen.get(term.loss, 0)
            seen[term.loss] = count + 1
            names.append(term.name or (term.loss if count == 0 else f"{term.loss}_{count}"))
        return names

    @model_validator(mode="after")
    def _phases_fit_terms(self) -> DistillConfig:
        names = self.term_names()
        if len(set(names)) != len(names):
            raise ConfigError(f"distillation terms need distinct names, got {names}; set name: on the duplicates.")
        ends = [phase.until_epoch for phase in self.phases]
        if ends != sorted(set(ends)):
            raise ConfigError(f"phases must have increasing until_epoch values, got {ends}.")
        for phase in self.phases:
            for name in phase.weights:
                if name not in names:
                    raise ConfigError(
                        f"phase weight for unknown term {name!r}.{did_you_mean(name, names)} Terms: {names}."
                    )
        return self
