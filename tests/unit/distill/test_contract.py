"""The contract every registered distillation term meets, run over ``TERMS`` automatically: a new term
gets these tests by adding one line to ``CONTRACT_PARAMS``.

Student and teacher outputs carry every kind of input a term may read, with shapes that differ between
the two where real pairs differ (channels, widths, heads, grids), so adapters are exercised:

| key           | student            | teacher             | what                                   |
|---------------|--------------------|---------------------|----------------------------------------|
| ``logits``    | (B, 5)             | (B, 5)              | class logits                           |
| ``seg``       | (B, 5, 6, 6)       | (B, 5, 6, 6)        | dense class logits (segmentation)      |
| ``feat:f``    | (B, 4, 6, 6)       | (B, 6, 3, 3)        | a feature map                          |
| ``feat:v``    | (B, 8)             | (B, 12)             | a pooled embedding                     |
| ``feat:tok``  | (B, 1 + 3*3, 8)    | (B, 1 + 4*4, 12)    | ViT tokens (one prefix token + a grid) |
| ``feat:attn`` | (B, 2, 10, 10)     | (B, 3, 10, 10)      | attention probabilities (rows sum to 1)|

Batches hold ``input``, ``target`` and ``index`` (of a training set of ``NUM_SAMPLES``); terms with
``needs_dataset`` are bound to that set's labels first.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from kdforge.distill.losses import TERMS, DistillTerm, build_term

CONTRACT_PARAMS: dict[str, dict[str, Any]] = {
    "crd": {"student": "f", "teacher": "f"},  # defaults: K = 16384 capped at NUM_SAMPLES - 1
    "kd": {"temperature": 2.0},
    "fitnet": {"student": "f", "teacher": "f"},
    "at": {"student": "f", "teacher": "f"},
    "cosine": {"student": "tok", "teacher": "tok", "tokens": "cls"},
    "smooth_l1": {"student": "tok", "teacher": "tok", "tokens": "grid"},
    "sp": {"student": "f", "teacher": "f"},
    "rkd": {"student": "v", "teacher": "v"},
    "pkt": {"student": "v", "teacher": "v"},
    "dkd": {"warmup": 2},
    "dist": {"temperature": 2.0},
    "cwd": {"student": "f", "teacher": "feat:f", "temperature": 2.0},
    "pixel_kl": {"student": "seg", "teacher": "seg", "temperature": 2.0},
    "attention": {"student": "attn", "teacher": "attn"},
}
B, CLASSES, NUM_SAMPLES = 4, 5, 16
TARGETS = [i % CLASSES for i in range(NUM_SAMPLES)]


def _outputs(role: str, grad: bool = False, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    wide = role == "teacher"
    shapes = {
        "logits": (B, CLASSES),
        "seg": (B, CLASSES, 6, 6),
        "feat:f": (B, 6, 3, 3) if wide else (B, 4, 6, 6),
        "feat:v": (B, 12 if wide else 8),
        "feat:tok": (B, 1 + (16 if wide else 9), 12 if wide else 8),
    }
    out = {k: torch.randn(*shape) for k, shape in shapes.items()}
    out["feat:attn"] = torch.randn(B, 3 if wide else 2, 10, 10).softmax(-1)
    return {k: v.to(dtype).requires_grad_(grad) for k, v in out.items()}


def _batch() -> dict[str, torch.Tensor]:
    index = torch.randperm(NUM_SAMPLES)[:B]
    return {"input": torch.randn(B, 3, 6, 6), "target": torch.tensor([TARGETS[i] for i in index]), "index": index}


def _built(name: str) -> DistillTerm:
    if name not in CONTRACT_PARAMS:
        pytest.fail(f"distillation loss {name!r} has no entry in CONTRACT_PARAMS in {__file__}: add one.")
    term = build_term(name, dict(CONTRACT_PARAMS[name]))
    assert isinstance(term, DistillTerm)
    if term.needs_dataset:
        term.bind_dataset(TARGETS)
    return term


def _ready(name: str, student: dict, teacher: dict) -> DistillTerm:
    term = _built(name)
    term.setup(student, teacher)
    return term


class _Teacher(nn.Module):
    """A frozen teacher network producing every teacher output from the input."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 6, 3, stride=2, padding=1)  # (B, 6, 3, 3)
        self.proj = nn.Linear(6, 12)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.body(x)
        vec = self.proj(feat.mean((2, 3)))  # (B, 12)
        tokens = vec[:, None, :] * torch.linspace(0.5, 1.5, 17)[None, :, None]  # (B, 17, 12)
        attn = torch.einsum("bnd,bmd->bnm", tokens[:, :10], tokens[:, :10])[:, None].expand(-1, 3, -1, -1)
        return {
            "logits": vec[:, :CLASSES],
            "seg": feat[:, :CLASSES].repeat_interleave(2, -1).repeat_interleave(2, -2),
            "feat:f": feat,
            "feat:v": vec,
            "feat:tok": tokens,
            "feat:attn": (attn / 12**0.5).softmax(-1),
        }


def test_every_term_has_contract_params() -> None:
    missing = sorted(set(TERMS.names()) - set(CONTRACT_PARAMS))
    assert not missing, f"add {missing} to CONTRACT_PARAMS in {__file__} so the contract tests can build them"


@pytest.mark.parametrize("name", TERMS.names())
def test_value_is_a_finite_float32_scalar(name: str) -> None:
    torch.manual_seed(0)
    student, teacher = _outputs("student", grad=True), _outputs("teacher")
    value = _ready(name, student, teacher)(student, teacher, _batch())
    assert value.dtype == torch.float32
    assert value.shape == ()
    assert torch.isfinite(value)


@pytest.mark.parametrize("name", TERMS.names())
def test_gradient_reaches_student_and_term_only(name: str) -> None:
    torch.manual_seed(0)
    student, teacher = _outputs("student", grad=True), _outputs("teacher")
    term = _ready(name, student, teacher)
    term(student, teacher, _batch()).backward()
    student_grads = [v.grad for v in student.values() if v.grad is not None]
    assert student_grads, f"{name}: no gradient reached the student's outputs"
    assert any(g.abs().sum() > 0 for g in student_grads)
    assert all(torch.isfinite(g).all() for g in student_grads)
    for param_name, param in term.named_parameters():
        assert param.grad is not None, f"{name}: adapter parameter {param_name} got no gradient"
        assert torch.isfinite(param.grad).all()
    for key, value in teacher.items():
        assert not value.requires_grad and value.grad is None, f"{name}: teacher output {key} got a gradient"


@pytest.mark.parametrize("name", TERMS.names())
def test_frozen_teacher_module_gets_no_gradient(name: str) -> None:
    torch.manual_seed(0)
    teacher_net = _Teacher().requires_grad_(False)
    batch = _batch()
    teacher = teacher_net(batch["input"])
    student = _outputs("student", grad=True)
    _ready(name, student, teacher)(student, teacher, batch).backward()
    assert any(v.grad is not None for v in student.values())
    for param_name, param in teacher_net.named_parameters():
        assert param.grad is None, f"{name}: teacher parameter {param_name} got a gradient"


@pytest.mark.parametrize("name", TERMS.names())
def test_value_is_reproducible_and_moves_with_the_student(name: str) -> None:
    torch.manual_seed(0)
    student, teacher = _outputs("student"), _outputs("teacher")
    term, batch = _ready(name, student, teacher), _batch()
    torch.manual_seed(1)  # terms that sample (CRD negatives) draw the same samples both times
    first = term(student, teacher, batch)
    torch.manual_seed(1)
    assert torch.equal(first, term(student, teacher, batch))
    other = {k: v + torch.randn_like(v) for k, v in student.items()}
    torch.manual_seed(1)
    assert not torch.equal(term(other, teacher, batch), first), f"{name}: value ignores the student's outputs"


@pytest.mark.parametrize("name", TERMS.names())
def test_bf16_inputs_under_autocast(name: str) -> None:
    torch.manual_seed(0)
    student, teacher = _outputs("student", dtype=torch.bfloat16), _outputs("teacher", dtype=torch.bfloat16)
    term = _ready(name, student, teacher)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = term(student, teacher, _batch())
    assert value.dtype == torch.float32
    assert torch.isfinite(value)


@pytest.mark.parametrize("name", TERMS.names())
def test_schedulable_parameters_are_read_at_every_step(name: str) -> None:
    term_class = TERMS.get(name)
    assert isinstance(term_class.inputs, str) and term_class.inputs, f"{name}: describe its inputs"
    torch.manual_seed(0)
    student, teacher = _outputs("student"), _outputs("teacher")
    term, batch = _ready(name, student, teacher), _batch()
    for param in term_class.schedulable:
        assert isinstance(getattr(term, param), float), f"{name}.{param} must be a float attribute"
        if param == "momentum":  # moves the memory banks, not this step's value
            continue
        torch.manual_seed(1)
        before = term(student, teacher, batch)
        setattr(term, param, getattr(term, param) * 1.5 + 0.1)
        torch.manual_seed(1)
        assert not torch.equal(term(student, teacher, batch), before), f"{name}: {param} is not read per step"
