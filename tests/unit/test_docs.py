"""docs/methods.md stays true: every YAML block validates, its terms build and its timm tap paths exist,
and every registered distillation term is documented (a row in the table and a snippet that uses it)."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from kdforge.core.config import ModelSpec, RunConfig, deep_merge, load_config
from kdforge.distill.losses import TERMS, build_term

DOC = Path(__file__).parents[2] / "docs" / "methods.md"
BASE: dict[str, Any] = {
    "student": {"source": "timm", "name": "resnet18"},
    "teacher": {"source": "timm", "name": "resnet50"},
}
OUTPUT_KEYS = {"logits"}  # term inputs that name a task output, not a tap
FALLBACK_CPU_MODELS = {"resnet18", "resnet50", "convnext_tiny", "vit_tiny_patch16_224", "vit_small_patch16_224"}


def _yaml_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, body)`` of every ```yaml fenced block (indented fences included)."""
    blocks, body, start = [], None, 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = line.strip()
        if body is None and fence == "```yaml":
            body, start = [], number
        elif body is not None and fence == "```":
            blocks.append((start, "\n".join(body)))
            body = None
        elif body is not None:
            body.append(line)
    assert body is None, f"unclosed ```yaml block at line {start} of {DOC.name}"
    return blocks


BLOCKS = _yaml_blocks(DOC.read_text())


def _snippet(body: str) -> dict[str, Any]:
    data = yaml.safe_load(body)
    assert isinstance(data, dict), "a snippet must be a mapping of config keys"
    return data


def _config(snippet: dict[str, Any]) -> RunConfig:
    """The snippet merged into the minimal base; models the snippet sets replace the base's."""
    base = {k: v for k, v in BASE.items() if k not in snippet}
    if "teachers" in snippet:
        base.pop("teacher", None)
    return load_config(base=deep_merge(base, snippet))


@functools.cache
def _module_names(name: str) -> set[str] | None:
    """Module paths of a timm model (built on the meta device: no weights allocated); None to skip it."""
    import timm

    assert timm.is_model(name), f"timm has no model {name!r}"
    try:
        with torch.device("meta"):
            net = timm.create_model(name, pretrained=False)
    except Exception:  # a model whose init needs real tensors: build it on the CPU only when it is small
        if name not in FALLBACK_CPU_MODELS:
            return None
        net = timm.create_model(name, pretrained=False)
    return {n for n, _ in net.named_modules()}


def test_the_doc_has_yaml_snippets():
    assert len(BLOCKS) >= len(TERMS.names())


@pytest.mark.parametrize("line, body", BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_snippet_validates_and_its_terms_build(line: int, body: str):
    config = _config(_snippet(body))
    assert config.distill.terms, f"the snippet at line {line} has no distillation term"
    for term in config.distill.terms:
        build_term(term.loss, term.params())


def _models(config: RunConfig) -> dict[str, tuple[ModelSpec, dict[str, str]]]:
    """``{role: (spec, taps)}`` for the student and every teacher, taps as the pipeline merges them."""
    models = {"student": (config.student, {**config.student.taps, **config.distill.taps.student})}
    teachers = {"teacher": config.teacher} if config.teacher is not None else dict(config.teachers)
    for name, spec in teachers.items():
        models[name] = (spec, {**spec.taps, **(config.distill.taps.teacher if name == "teacher" else {})})
    return models


@pytest.mark.parametrize("line, body", BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_snippet_terms_read_declared_taps(line: int, body: str):
    config = _config(_snippet(body))
    models = _models(config)
    first_teacher = next(name for name in models if name != "student")
    for term in config.distill.terms:
        params = term.params()
        readers = {"student": ["student"], "teacher": term.teachers or [first_teacher]}
        for role, names in readers.items():
            key = params.get(role)
            if key is None or key in OUTPUT_KEYS:
                continue
            for name in names:
                assert key.removeprefix("feat:") in models[name][1], (
                    f"line {line}: term {term.loss!r} reads tap {key!r} of the {name}, which does not declare it"
                )


@pytest.mark.parametrize("line, body", BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_snippet_tap_paths_exist_in_timm_models(line: int, body: str):
    for name, (spec, taps) in _models(_config(_snippet(body))).items():
        if spec.source != "timm" or not taps:
            continue
        modules = _module_names(spec.name)
        if modules is None:
            pytest.skip(f"{spec.name} cannot be built cheaply")
        for tap, path in taps.items():
            assert path in modules, f"line {line}: {name} {spec.name} has no module {path!r} (tap {tap!r})"


def _table_terms(text: str) -> set[str]:
    """Term names in the first cell of the markdown table rows: | `name` | ..."""
    return set(re.findall(r"^\|\s*`([a-z0-9_]+)`\s*\|", text, flags=re.M))


def test_every_registered_term_is_in_the_table():
    documented = _table_terms(DOC.read_text())
    missing = sorted(set(TERMS.names()) - documented)
    assert not missing, f"terms without a row in the table of {DOC.name}: {missing}"
    unknown = sorted(documented - set(TERMS.names()))
    assert not unknown, f"{DOC.name} documents terms that are not registered: {unknown}"


def test_every_registered_term_has_a_snippet():
    used = {term["loss"] for _, body in BLOCKS for term in _snippet(body).get("distill", {}).get("terms", [])}
    missing = sorted(set(TERMS.names()) - used)
    assert not missing, f"terms without a YAML snippet in {DOC.name}: {missing}"
