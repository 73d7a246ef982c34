"""Top-k logits: what decoding gives back (exactly with k = C; the teacher's top-k probabilities and the mass
of the rest, spread evenly, with k < C), dense logits along axis 1, the KD loss on decoded logits, and the
size of a top-k cache against fp32 logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdforge.app.cache.build import cache_report, encode_outputs
from kdforge.app.cache.store import CacheReader, CacheWriter
from kdforge.app.cache.topk import decode_topk, encode_topk, index_dtype
from kdforge.core.config import CacheConfig
from kdforge.core.errors import CacheError
from kdforge.distill.losses.logit import kd_divergence


def _logits(*shape: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _round_trip(logits: torch.Tensor, k: int) -> torch.Tensor:
    return decode_topk(*encode_topk(logits, k), logits.shape[1])


def _sparse_teacher(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The distribution the module docstring promises, by hand in float64: the teacher's softmax on its top-k
    classes, the rest of the mass shared evenly by the other C - k classes. (B, C)."""
    probs = logits.double().softmax(1)
    classes = logits.shape[1]
    kept = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, probs.topk(k, dim=1).indices, True)
    rest = (1 - (probs * kept).sum(1, keepdim=True)) / (classes - k)
    return torch.where(kept, probs, rest.expand_as(probs))


# --- decoding ------------------------------------------------------------------------------------


def test_all_classes_kept_decodes_to_the_logits_exactly() -> None:
    logits = _logits(6, 10)
    values, indices, fill = encode_topk(logits, 10)
    assert values.shape == indices.shape == (6, 10) and fill.shape == (6,)
    assert values.dtype == fill.dtype == torch.float32
    decoded = decode_topk(values, indices, fill, 10)
    assert decoded.dtype == torch.float32 and torch.equal(decoded, logits)


def test_k_larger_than_the_class_count_keeps_every_class() -> None:
    logits = _logits(3, 5)
    values, _, _ = encode_topk(logits, 32)
    assert values.shape == (3, 5)
    assert torch.equal(decode_topk(*encode_topk(logits, 32), 5), logits)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_top_k_keeps_the_teachers_probabilities_and_the_mass_of_the_rest(k: int) -> None:
    logits = _logits(8, 12, seed=k)
    decoded = _round_trip(logits, k)
    kept = logits.topk(k, dim=1).indices
    original, sparse = logits.softmax(1), decoded.softmax(1)
    torch.testing.assert_close(sparse.gather(1, kept), original.gather(1, kept), rtol=0, atol=1e-6)
    torch.testing.assert_close(decoded.gather(1, kept), logits.gather(1, kept), rtol=0, atol=0)  # own logits
    others = torch.ones_like(logits, dtype=torch.bool).scatter_(1, kept, False)
    for row in range(len(logits)):
        rest = decoded[row][others[row]]
        assert torch.equal(rest, rest[:1].expand_as(rest))  # every other class gets the same logit
        assert abs(sparse[row][others[row]].sum() - original[row][others[row]].sum()) < 1e-6
    torch.testing.assert_close(sparse.double(), _sparse_teacher(logits, k), rtol=0, atol=1e-6)


def test_top_k_holding_all_the_mass_still_decodes_to_finite_logits() -> None:
    logits = torch.tensor([[200.0, 0.0, -1.0, -2.0], [0.0, 0.0, 0.0, 0.0]])
    decoded = _round_trip(logits, 1)
    assert torch.isfinite(decoded).all()
    torch.testing.assert_close(decoded.softmax(1)[0], logits.softmax(1)[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(decoded.softmax(1)[1], torch.full((4,), 0.25), rtol=0, atol=1e-6)  # ties: uniform


def test_dense_logits_are_encoded_along_axis_1_per_position() -> None:
    logits = _logits(2, 9, 3, 4)  # (B, C, H, W)
    values, indices, fill = encode_topk(logits, 4)
    assert values.shape == indices.shape == (2, 4, 3, 4) and fill.shape == (2, 3, 4)
    flat = logits.permute(0, 2, 3, 1).reshape(-1, 9)  # every position is one sample
    flat_values, flat_indices, flat_fill = encode_topk(flat, 4)
    assert torch.equal(values.permute(0, 2, 3, 1).reshape(-1, 4), flat_values)
    assert torch.equal(indices.permute(0, 2, 3, 1).reshape(-1, 4), flat_indices)
    torch.testing.assert_close(fill.reshape(-1), flat_fill, rtol=0, atol=1e-5)  # logsumexp sums in another order
    decoded = decode_topk(values, indices, fill, 9)
    assert decoded.shape == logits.shape
    by_position = decode_topk(flat_values, flat_indices, flat_fill, 9)
    torch.testing.assert_close(decoded.permute(0, 2, 3, 1).reshape(-1, 9), by_position, rtol=0, atol=1e-5)
    torch.testing.assert_close(decoded.softmax(1).sum(1), torch.ones(2, 3, 4), rtol=0, atol=1e-6)
    assert torch.equal(_round_trip(logits, 9), logits)


def test_decoding_reads_stored_dtypes() -> None:
    logits = _logits(4, 10)
    values, indices, fill = encode_topk(logits, 3)
    decoded = decode_topk(values.half(), indices.to(torch.int16), fill, 10)
    assert decoded.dtype == torch.float32
    assert torch.equal(decoded, decode_topk(values.half().float(), indices, fill, 10))


@pytest.mark.parametrize(
    ("classes", "dtype"), [(10, torch.int16), (1000, torch.int16), (32767, torch.int16), (32768, torch.int32)]
)
def test_index_dtype_is_int16_up_to_32767_classes(classes: int, dtype: torch.dtype) -> None:
    assert index_dtype(classes) == dtype


def test_int16_indices_address_the_last_class() -> None:
    logits = torch.zeros(1, 32767)
    logits[0, -1] = 5.0
    values, indices, fill = encode_topk(logits, 1)
    assert int(indices.to(index_dtype(32767))[0, 0]) == 32766
    assert decode_topk(values, indices.to(torch.int16), fill, 32767)[0].argmax() == 32766


# --- the KD loss on decoded logits ---------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_on_logits_decoded_with_every_class_is_the_full_kd(temperature: float) -> None:
    student, teacher = _logits(5, 10, seed=1), _logits(5, 10, seed=2)
    decoded = _round_trip(teacher, 10)
    assert torch.equal(kd_divergence(student, decoded, temperature), kd_divergence(student, teacher, temperature))


@pytest.mark.parametrize("k", [1, 4, 8])  # k = C - 1 would leave one other class: the full KD again
def test_kd_at_temperature_1_on_top_k_is_the_kl_of_the_sparse_teacher(k: int) -> None:
    student, teacher = _logits(6, 10, seed=3), _logits(6, 10, seed=4)
    target = _sparse_teacher(teacher, k)  # (B, C)
    log_q = student.double().log_softmax(1)
    by_hand = (target * (target.log() - log_q)).sum(1).mean()  # KL(p' || q), batchmean
    loss = kd_divergence(student, _round_trip(teacher, k), 1.0)
    assert abs(float(loss) - float(by_hand)) < 1e-5
    assert abs(float(loss) - float(kd_divergence(student, teacher, 1.0))) > 1e-4  # k < C is not the full KD


# --- size and storage ----------------------------------------------------------------------------


def _nbytes(fields: dict[tuple[str, str, str], torch.Tensor]) -> int:
    return sum(value.numel() * value.element_size() for value in fields.values())


def test_top_32_of_1000_classes_is_at_least_15x_smaller_than_fp32_logits() -> None:
    logits = _logits(64, 1000)
    fields = encode_outputs({"teacher": {"logits": logits}}, ("logits",), CacheConfig(logits_topk=32))
    assert set(fields) == {("teacher", "logits", part) for part in ("values", "indices", "fill")}
    values, indices, fill = (fields[("teacher", "logits", part)] for part in ("values", "indices", "fill"))
    assert (values.dtype, indices.dtype, fill.dtype) == (torch.float16, torch.int16, torch.float32)
    assert values.shape == indices.shape == (64, 32) and fill.shape == (64,)
    per_row = 32 * (values.element_size() + indices.element_size()) + fill.element_size()
    assert per_row == 132 and _nbytes(fields) == 64 * per_row
    full = logits.numel() * torch.float32.itemsize
    assert full / _nbytes(fields) >= 15  # 4000 / 132 = 30.3


def test_top_32_of_1000_classes_on_disk_is_at_least_15x_smaller(tmp_path: Path) -> None:
    rows = 256
    header = {"fingerprint": {}, "rows": rows, "samples": rows, "views": 1, "replay": False, "classes": 1000}
    writer = CacheWriter.start(tmp_path / "cache", {**header, "teachers": ["teacher"]})
    for start in range(0, rows, 64):
        fields = encode_outputs({"teacher": {"logits": _logits(64, 1000, seed=start)}}, ("logits",), CacheConfig())
        writer.write(start, fields, None)
    writer.finish({})
    report = cache_report(CacheReader(tmp_path / "cache"))
    assert report["fp32_bytes"] == rows * 1000 * 4
    assert report["ratio"] >= 15  # .npy headers included


def test_full_logits_and_taps_are_stored_whole_in_the_storage_dtype() -> None:
    outputs = {"teacher": {"logits": _logits(4, 10), "feat": _logits(4, 3, 2, 2)}}
    fp16 = encode_outputs(outputs, ("logits",), CacheConfig(full_logits=True))
    assert set(fp16) == {("teacher", "logits", "dense"), ("teacher", "feat", "dense")}
    assert all(value.dtype == torch.float16 for value in fp16.values())
    fp32 = encode_outputs(outputs, ("logits",), CacheConfig(full_logits=True, dtype="fp32"))
    assert torch.equal(fp32[("teacher", "feat", "dense")], outputs["teacher"]["feat"])
    assert torch.equal(fp32[("teacher", "logits", "dense")], outputs["teacher"]["logits"])
    topk = encode_outputs(outputs, ("logits",), CacheConfig(logits_topk=3))
    assert topk[("teacher", "feat", "dense")].dtype == torch.float16  # taps stay whole


def test_values_beyond_fp16_are_refused_with_the_fix() -> None:
    logits = _logits(2, 10)
    logits[0, 0] = 1e5
    with pytest.raises(CacheError, match="cache.dtype: fp32"):
        encode_outputs({"teacher": {"logits": logits}}, ("logits",), CacheConfig())
    fields = encode_outputs({"teacher": {"logits": logits}}, ("logits",), CacheConfig(dtype="fp32"))
    assert fields[("teacher", "logits", "values")][0, 0] == 1e5


def test_non_finite_outputs_are_refused() -> None:
    feat = _logits(2, 4)
    feat[1, 2] = float("nan")
    with pytest.raises(CacheError, match="non-finite values for 'feat'"):
        encode_outputs({"teacher": {"logits": _logits(2, 10), "feat": feat}}, ("logits",), CacheConfig())
