"""Distillation terms: one registry, one family per file.

A term is an `nn.Module` called as ``term(student_outputs, teacher_outputs, batch)`` that returns a
float32 scalar. Terms that need adapters build them in ``setup`` from example outputs; adapters are
trained with the student and never exported with it.
"""

from __future__ import annotations

import inspect
from typing import Any

from kdforge.distill.losses.base import DistillTerm
from kdforge.errors import ConfigError, did_you_mean
from kdforge.registry import Registry

TERMS: Registry[type[DistillTerm]] = Registry("distillation loss")


def build_term(name: str, params: dict[str, Any]) -> DistillTerm:
    """Instantiate the term `name`; an unknown parameter names the term's valid ones."""
    cls = TERMS.get(name)
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in params:
        if key not in valid:
            raise ConfigError(
                f"distillation loss {name!r} has no parameter {key!r}.{did_you_mean(key, valid)} "
                f"Its parameters: {', '.join(valid) or 'none'}."
            )
    return cls(**params)


# One import line per family registers its terms.
from kdforge.distill.losses import feature, logit  # noqa: E402,F401

__all__ = ["TERMS", "DistillTerm", "build_term"]
