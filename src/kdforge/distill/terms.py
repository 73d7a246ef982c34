"""The configured distillation terms: checked against the registry (with the config key in every message) and
built with their first epoch's weights."""

from __future__ import annotations

from torch import nn

from kdforge.core.config import RunConfig, TermConfig
from kdforge.core.config.messages import at_key
from kdforge.core.errors import ConfigError
from kdforge.distill.distiller import WeightedTerm
from kdforge.distill.losses import TERMS, DistillTerm, build_term, term_signature
from kdforge.distill.schedule import EpochSettings


def check_terms(config: RunConfig) -> None:
    """Every term's loss is registered, its parameters exist (required ones given) and hold valid values at the
    start and at the end of their schedules, scheduled parameters are schedulable, and several teachers are read
    only by terms that can merge them. Builds each term (cheap: adapters and banks come later)."""
    for index, spec in enumerate(config.distill.terms):
        at_key(f"distill.terms.{index}", lambda spec=spec: _check_term(spec))


def _check_term(spec: TermConfig) -> None:
    params = _params(spec, ignore_index=None)
    _checked_build(spec.loss, params)
    ends = {k: v.end for k, v in spec.scheduled_params().items()}
    if ends:
        term = _checked_build(spec.loss, {**params, **ends})
        fixed = sorted(set(ends) - set(term.schedulable))
        if fixed:
            raise ConfigError(
                f"distillation loss {spec.loss!r} cannot schedule {', '.join(fixed)} (fixed when it is built); "
                f"schedulable: {', '.join(term.schedulable) or 'none'} (and its weight)."
            )
    if len(spec.teachers or []) > 1 and not TERMS.get(spec.loss).ensemble:
        raise ConfigError(
            f"distillation loss {spec.loss!r} cannot read an ensemble of teachers {spec.teachers}: only logit terms "
            "(kd, dkd, dist, pixel_kl) can. Give it one teacher, or one term per teacher."
        )


def _checked_build(loss: str, params: dict) -> DistillTerm:
    """The term built from `params`; its own refusal of a value names the loss."""
    try:
        return build_term(loss, params)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"distillation loss {loss!r}: {exc}") from None


def _params(spec: TermConfig, ignore_index: int | None) -> dict:
    """The term's constructor parameters; one that skips unlabelled pixels gets `ignore_index` unless it sets its
    own."""
    params = spec.params()
    if ignore_index is not None and "ignore_index" in term_signature(spec.loss)[0]:
        params.setdefault("ignore_index", ignore_index)
    return params


def build_terms(config: RunConfig, first: EpochSettings) -> list[WeightedTerm]:
    """The configured terms, built, with their epoch-0 weights."""
    terms = []
    for name, spec in zip(config.distill.term_names(), config.distill.terms, strict=True):
        term = build_term(spec.loss, _params(spec, config.data.ignore_index))
        terms.append(WeightedTerm(name, first.weights[name], term, tuple(spec.teachers or ())))
    return terms


def prepare_for_terms(config: RunConfig, model: nn.Module) -> None:
    """Let every configured term adjust `model` (student or teacher) before its taps are registered."""
    for loss in dict.fromkeys(spec.loss for spec in config.distill.terms):
        TERMS.get(loss).prepare_model(model)
