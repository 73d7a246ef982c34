"""Every recipe in configs/ is a valid config, and the model-free parts of it build."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import yaml

from kdforge.core.config import load_config
from kdforge.distill.losses import build_term

RECIPES = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates_and_its_terms_build(path: Path):
    config = load_config([path])
    for term in config.distill.terms:
        build_term(term.loss, term.params())
    assert config.teacher_specs() or not config.distill.terms


@functools.cache
def _module_names(source: str, name: str, kwargs: str) -> frozenset[str]:
    from kdforge.core.config import ModelSpec
    from kdforge.models.build import build_model

    spec = ModelSpec(source=source, name=name, kwargs=yaml.safe_load(kwargs))
    return frozenset(n for n, _ in build_model(spec, 4).named_modules())


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_taps_exist_in_the_named_models(path: Path):
    config = load_config([path])
    models = {**{f"teacher {n}": s for n, s in config.teacher_specs().items()}, "student": config.student}
    for role, spec in models.items():
        if spec.source not in ("timm", "smp"):
            continue
        extra = config.distill.taps.student if role == "student" else config.distill.taps.teacher
        taps = {**spec.taps, **(extra if role in ("student", "teacher teacher") else {})}
        names = _module_names(spec.source, spec.name, yaml.safe_dump(spec.kwargs))
        missing = [p for p in taps.values() if p not in names]
        assert not missing, f"{role} {spec.name} has no module {missing}"
