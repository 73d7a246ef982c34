"""Distillation terms: one registry, one family per file.

A term is an `nn.Module` called as ``term(student_outputs, teacher_outputs, batch)`` that returns a
float32 scalar (float64 for float64 inputs). Terms that need adapters build them in ``setup`` from example
outputs; adapters are trained with the student and never exported with it.
"""

from __future__ import annotations

import inspect
from typing import Any

from kdforge.core.registry import Registry, check_arguments
from kdforge.distill.losses.base import DistillTerm

TERMS: Registry[type[DistillTerm]] = Registry("distillation loss")


def check_term_params(name: str, params: dict[str, Any]) -> type[DistillTerm]:
    """The term class `name`, after checking that every parameter exists and required ones are given."""
    cls = TERMS.get(name)
    check_arguments(cls.__init__, params, f"distillation loss {name!r}")
    return cls


def term_signature(name: str) -> tuple[dict[str, Any], str]:
    """``({parameter: default, or None when required}, reference)`` of a term, from its code and docstring."""
    cls = TERMS.get(name)
    params = {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self"
    }
    first_paragraph = (cls.__doc__ or "").strip().split("\n\n")[0]
    return params, " ".join(line.strip() for line in first_paragraph.splitlines())


def build_term(name: str, params: dict[str, Any]) -> DistillTerm:
    """Instantiate the term `name`; an unknown parameter names the term's valid ones."""
    return check_term_params(name, params)(**params)


# One import line per family registers its terms.
from kdforge.distill.losses import crd, dense, feature, logit, relational  # noqa: E402,F401

__all__ = ["TERMS", "DistillTerm", "build_term"]
