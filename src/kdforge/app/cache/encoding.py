"""How teacher outputs are stored and read back: class logits as top-k parts (unless ``full_logits``),
everything else (taps) whole, in the storage dtype, with values that do not fit refused at build time."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from kdforge.app.cache.store import DENSE
from kdforge.app.cache.topk import decode_topk, encode_topk, index_dtype
from kdforge.core.config import CacheConfig
from kdforge.core.errors import CacheError
from kdforge.distill.teachers import teacher_role

FP16_MAX = float(torch.finfo(torch.float16).max)
Fields = dict[tuple[str, str, str], torch.Tensor]
Outputs = dict[str, torch.Tensor]


def encode_outputs(
    outputs: Mapping[str, Mapping[str, torch.Tensor]], logit_keys: tuple[str, ...], cfg: CacheConfig
) -> Fields:
    """Every teacher output as the arrays stored on disk: top-k parts for class logits (unless
    ``full_logits``), the whole tensor in the storage dtype for everything else (taps)."""
    storage = torch.float16 if cfg.dtype == "fp16" else torch.float32
    fields: Fields = {}
    for teacher, named in outputs.items():
        for key, value in named.items():
            if key in logit_keys and not cfg.full_logits:
                values, indices, fill = encode_topk(value, cfg.logits_topk)
                fields[(teacher, key, "values")] = _stored(values, storage, teacher, key)
                fields[(teacher, key, "indices")] = indices.to(index_dtype(value.shape[1])).cpu()
                fields[(teacher, key, "fill")] = _stored(fill, torch.float32, teacher, key)
            else:
                fields[(teacher, key, DENSE)] = _stored(value, storage, teacher, key)
    return fields


def _stored(value: torch.Tensor, dtype: torch.dtype, teacher: str, key: str) -> torch.Tensor:
    value = value.detach().float()
    finite = torch.isfinite(value).all()
    peak = value.abs().max() if value.numel() else torch.tensor(0.0)
    if not finite:
        raise CacheError(f"the {teacher_role(teacher)} gave non-finite values for {key!r}; check its weights and data.")
    if dtype == torch.float16 and peak > FP16_MAX:
        raise CacheError(
            f"the {teacher_role(teacher)}'s {key!r} reaches {float(peak):.3g}, beyond float16's range: "
            "set cache.dtype: fp32."
        )
    return value.to(dtype).cpu()


def decode_fields(fields: Mapping[str, Mapping[str, torch.Tensor]], classes: int, device: torch.device) -> Outputs:
    """One teacher's outputs from a batch of stored rows: dense fields as float32, top-k logits decoded to
    dense logits (see `kdforge.app.cache.topk`), on `device`."""
    outputs = {}
    for key, parts in fields.items():
        parts = {part: value.to(device, non_blocking=True) for part, value in parts.items()}
        if DENSE in parts:
            outputs[key] = parts[DENSE].float()
        else:
            outputs[key] = decode_topk(parts["values"], parts["indices"], parts["fill"], classes)
    return outputs
