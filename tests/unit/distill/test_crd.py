"""CRD: negative sampling, memory banks, the Z constant, a hand-computed value, checkpoint state."""

from __future__ import annotations

import math

import pytest
import torch

from kdforge.core.errors import ConfigError, DataError
from kdforge.distill.losses import build_term
from kdforge.distill.losses.crd import CRD

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _term(targets: list[int], dims: tuple[int, int] = (6, 10), device: str = "cpu", **params: object) -> CRD:
    term = build_term("crd", {"student": "s", "teacher": "t", **params})
    term.setup({"feat:s": torch.randn(2, dims[0], device=device)}, {"feat:t": torch.randn(2, dims[1], device=device)})
    term.bind_dataset(targets)
    return term.to(device)


def _outputs(batch: int, dims: tuple[int, int] = (6, 10), device: str = "cpu") -> tuple[dict, dict]:
    student = {"feat:s": torch.randn(batch, dims[0], device=device, requires_grad=True)}
    return student, {"feat:t": torch.randn(batch, dims[1], device=device)}


def _draws(term: CRD, index: torch.Tensor, times: int = 200) -> torch.Tensor:
    """(B, times * K) negatives from repeated draws (K is capped at N - 1 for these small sets)."""
    return torch.cat([term.sample_negatives(index) for _ in range(times)], dim=1)


def _batch(index: list[int], device: str = "cpu") -> dict[str, torch.Tensor]:
    return {"input": torch.zeros(len(index), 1), "index": torch.tensor(index, device=device)}


# --- negative sampling ----------------------------------------------------------------------------


def test_negatives_are_random_not_contiguous() -> None:
    term = _term([i % 4 for i in range(200)], num_negatives=32)
    index = torch.tensor([0, 1, 2])
    torch.manual_seed(0)
    first = term.sample_negatives(index)
    torch.manual_seed(1)
    second = term.sample_negatives(index)
    assert first.shape == (3, 32)
    assert not torch.equal(first, second)
    steps = first.sort(dim=1).values.diff(dim=1)
    assert not (steps == 1).all(dim=1).any(), "negatives look like a contiguous run of indices"


def test_negatives_come_from_other_classes_and_never_the_positive() -> None:
    targets = [i % 3 for i in range(30)]
    targets[4] = -1  # unlabelled: draws from every other sample, its own class included
    term = _term(targets)
    labels = torch.tensor(targets)
    torch.manual_seed(0)
    index = torch.tensor([0, 1, 2, 4])
    negatives = _draws(term, index)  # (4, 200 * 29)
    assert not (negatives == index[:, None]).any()
    for row, i in zip(negatives[:3], index[:3], strict=True):
        assert (labels[row] != labels[i]).all()
        assert set(row.tolist()) == {j for j in range(30) if labels[j] != labels[i]}  # uniform cover
    assert set(negatives[3].tolist()) == set(range(30)) - {4}


@pytest.mark.parametrize(
    ("targets", "params"),
    [([-1] * 12, {}), ([0, 1] * 6, {"negatives_from_other_classes": False}), ([3] * 12, {})],
    ids=["unlabelled", "all-samples-option", "single-class"],
)
def test_negatives_from_all_other_samples(targets: list[int], params: dict) -> None:
    term = _term(targets, **params)
    torch.manual_seed(0)
    index = torch.arange(12)
    negatives = _draws(term, index)
    assert not (negatives == index[:, None]).any()
    for i, row in enumerate(negatives):
        assert set(row.tolist()) == set(range(12)) - {i}


def test_num_negatives_is_capped_at_dataset_size_minus_one() -> None:
    term = _term([0, 1] * 4)  # default K = 16384, N = 8
    assert term.k == 7
    assert term.sample_negatives(torch.tensor([0, 3])).shape == (2, 7)
    student, teacher = _outputs(2)
    assert torch.isfinite(term(student, teacher, _batch([0, 3])))


# --- memory banks and Z ---------------------------------------------------------------------------


def test_banks_start_uniform_in_stdv_range() -> None:
    term = _term(list(range(50)), feat_dim=12)
    stdv = 1 / math.sqrt(12 / 3)
    for bank in (term.memory_s, term.memory_t):
        assert bank.shape == (50, 12)
        assert bank.abs().max() <= stdv and bank.std() > stdv / 3


@pytest.mark.parametrize("device", DEVICES)
def test_banks_move_with_momentum_at_batch_indices_only(device: str) -> None:
    torch.manual_seed(0)
    term = _term([i % 3 for i in range(10)], device=device, num_negatives=4, momentum=0.5)
    student, teacher = _outputs(3, device=device)
    index = [7, 2, 5]
    before_s, before_t = term.memory_s.clone(), term.memory_t.clone()
    loss = term(student, teacher, _batch(index, device))
    assert torch.equal(term.memory_s, before_s), "banks moved before the loss was back-propagated"
    loss.backward()
    with torch.no_grad():
        v_s = torch.nn.functional.normalize(term.embed_s(student["feat:s"]), dim=1)
        v_t = torch.nn.functional.normalize(term.embed_t(teacher["feat:t"]), dim=1)
    others = [i for i in range(10) if i not in index]
    for bank, before, v in ((term.memory_s, before_s, v_s), (term.memory_t, before_t, v_t)):
        expected = 0.5 * before[index] + 0.5 * v
        torch.testing.assert_close(bank[index], expected / expected.norm(dim=1, keepdim=True))
        torch.testing.assert_close(bank[index].norm(dim=1), torch.ones(3, device=device))
        assert torch.equal(bank[others], before[others])


def test_z_is_estimated_on_the_first_batch_then_fixed() -> None:
    torch.manual_seed(0)
    term = _term([i % 4 for i in range(20)], num_negatives=8)
    assert term.z_s.item() < 0 and term.z_t.item() < 0
    student, teacher = _outputs(4)
    term(student, teacher, _batch([0, 1, 2, 3])).backward()
    z = (term.z_s.item(), term.z_t.item())
    assert z[0] > 0 and z[1] > 0
    for start in (4, 8):
        student, teacher = _outputs(4)
        term(student, teacher, _batch(list(range(start, start + 4)))).backward()
        assert (term.z_s.item(), term.z_t.item()) == z


def _contrast_by_hand(x: torch.Tensor, n: int) -> torch.Tensor:
    k_pn = (x.shape[1] - 1) / n
    loss = 0.0
    for row in x.tolist():
        loss = loss - math.log(row[0] / (row[0] + k_pn + 1e-7))
        loss = loss - sum(math.log(k_pn / (p + k_pn + 1e-7)) for p in row[1:])
    return torch.tensor(loss / x.shape[0], dtype=torch.float64)


# float64: the term converted with .double() after setup and bind_dataset (embeddings, banks and Z), fed
# float64, matches the float64 reference to float64 rounding (well inside the spec's 1e-6, which float32
# math would also meet here). float32: within float32 rounding.
CRD_TOL = {torch.float64: {"rtol": 1e-9, "atol": 1e-12}, torch.float32: {"rtol": 1e-5, "atol": 1e-6}}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_matches_hand_computation_with_fixed_negatives(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    n, temperature = 6, 0.5
    term = _term([0, 0, 1, 1, 2, 2], dims=(3, 5), feat_dim=4, num_negatives=3, temperature=temperature).to(dtype)
    assert term.memory_s.dtype == term.embed_s.weight.dtype == term.z_s.dtype == dtype
    negatives = torch.tensor([[2, 4, 5], [3, 4, 2]])
    monkeypatch.setattr(term, "sample_negatives", lambda index: negatives)
    student, teacher = ({k: v.detach().to(dtype) for k, v in d.items()} for d in _outputs(2, dims=(3, 5)))
    index = torch.tensor([0, 1])
    bank_s, bank_t = term.memory_s.double(), term.memory_t.double()

    def embed(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        e = x.double() @ layer.weight.double().T + layer.bias.double()
        return e / e.norm(dim=1, keepdim=True)

    with torch.no_grad():
        v_s, v_t = embed(term.embed_s, student["feat:s"]), embed(term.embed_t, teacher["feat:t"])
    rows = torch.cat([index[:, None], negatives], dim=1)
    out_s = torch.stack([(bank_t[r] @ v).div(temperature).exp() for r, v in zip(rows, v_s, strict=True)])
    out_t = torch.stack([(bank_s[r] @ v).div(temperature).exp() for r, v in zip(rows, v_t, strict=True)])
    z_s, z_t = out_s.mean() * n, out_t.mean() * n
    expected = _contrast_by_hand(out_s / z_s, n) + _contrast_by_hand(out_t / z_t, n)

    value = term(student, teacher, {"index": index})
    assert value.dtype == dtype and value.shape == ()
    torch.testing.assert_close(value.double(), expected, **CRD_TOL[dtype])
    torch.testing.assert_close(term.z_s.double(), z_s, rtol=CRD_TOL[dtype]["rtol"], atol=0)
    torch.testing.assert_close(term.z_t.double(), z_t, rtol=CRD_TOL[dtype]["rtol"], atol=0)


# --- state, errors --------------------------------------------------------------------------------


def test_state_dict_holds_banks_labels_and_z_for_resume() -> None:
    torch.manual_seed(0)
    targets = [i % 3 - (i == 5) * 4 for i in range(12)]  # sample 5 unlabelled
    term = _term(targets, num_negatives=4)
    student, teacher = _outputs(3)
    term(student, teacher, _batch([1, 5, 9])).backward()
    state = term.state_dict()
    assert {"memory_s", "memory_t", "labels", "z_s", "z_t"} <= set(state)
    assert not {"order", "excl_start", "excl_len"} & set(state)
    assert state["labels"].tolist() == targets

    resumed = _term(targets, num_negatives=4)
    resumed.load_state_dict(state)
    for key in ("memory_s", "memory_t", "labels", "z_s", "z_t"):
        assert torch.equal(getattr(resumed, key), state[key])
    torch.manual_seed(3)
    first = term(student, teacher, _batch([0, 2, 4]))
    torch.manual_seed(3)
    assert torch.equal(resumed(student, teacher, _batch([0, 2, 4])), first)


def test_missing_index_is_a_clear_error() -> None:
    term = _term([0, 1] * 4)
    student, teacher = _outputs(2)
    with pytest.raises(DataError, match=r"batch\['index'\].*'input'"):
        term(student, teacher, {"input": torch.zeros(2, 1), "target": torch.zeros(2)})


def test_index_outside_the_bound_dataset_is_a_clear_error() -> None:
    term = _term([0, 1] * 4)
    student, teacher = _outputs(2)
    with pytest.raises(DataError, match=r"indices in \[3, 8\].*training set of 8"):
        term(student, teacher, _batch([3, 8]))


def test_use_before_bind_or_setup_and_bad_params_are_clear_errors() -> None:
    term = build_term("crd", {"student": "s", "teacher": "t"})
    student, teacher = _outputs(2)
    with pytest.raises(RuntimeError, match="setup"):
        term(student, teacher, _batch([0, 1]))
    term.setup(student, teacher)
    with pytest.raises(RuntimeError, match="bind_dataset"):
        term(student, teacher, _batch([0, 1]))
    with pytest.raises(DataError, match="at least 2 samples"):
        term.bind_dataset([0])
    with pytest.raises(ConfigError, match="temperature"):
        build_term("crd", {"student": "s", "teacher": "t", "temperature": 0.0})


def test_maps_are_flattened_before_the_embedding() -> None:
    term = build_term("crd", {"student": "f", "teacher": "f", "feat_dim": 16})
    term.setup({"feat:f": torch.randn(2, 4, 6, 6)}, {"feat:f": torch.randn(2, 6, 3, 3)})
    assert (term.embed_s.in_features, term.embed_t.in_features, term.embed_s.out_features) == (144, 54, 16)


def test_non_finite_embeddings_leave_the_bank_rows_untouched() -> None:
    term = _term([0, 1, 0, 1, 0, 1])
    before_s, before_t = term.memory_s.clone(), term.memory_t.clone()
    index = torch.tensor([1, 4])
    bad = torch.full((2, term.memory_s.shape[1]), float("nan"))
    good = torch.nn.functional.normalize(torch.ones(2, term.memory_s.shape[1]), dim=1)
    term.update_banks(index, bad, good)
    assert torch.equal(term.memory_s, before_s)  # the NaN rows kept their old values
    assert not torch.equal(term.memory_t[index], before_t[index]) and torch.isfinite(term.memory_t).all()
