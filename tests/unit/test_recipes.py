"""Every recipe in configs/ is a valid config, and the model-free parts of it build."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdforge.config import load_config
from kdforge.distill.losses import build_term

RECIPES = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates_and_its_terms_build(path: Path):
    config = load_config([path])
    for term in config.distill.terms:
        build_term(term.loss, term.params())
    assert config.teacher is not None or not config.distill.terms


def test_cross_architecture_taps_exist_in_the_named_models():
    import timm

    config = load_config([Path(__file__).parents[2] / "configs" / "cross_arch_fitnet.yaml"])
    for role in ("teacher", "student"):
        spec = getattr(config, role)
        names = dict(timm.create_model(spec.name, pretrained=False).named_modules())
        for path in getattr(config.distill.taps, role).values():
            assert path in names, f"{role} {spec.name} has no module {path}"
