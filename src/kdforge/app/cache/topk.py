"""Top-k logits: what the cache keeps of the teacher's class scores, and how a term reads them back.

A (B, C, ...) logit tensor is stored as the k largest logits along the class axis, their class indices,
and one ``fill`` logit per position. Decoding gives dense logits again: the kept classes have their own
logits, every other class has ``fill``, chosen so that at T = 1 the mass outside the top-k is exactly the
teacher's, spread evenly over the C - k other classes::

    fill = logsumexp(z) + log((1 - sum_{i in top-k} softmax(z)_i) / (C - k))

So ``softmax(decoded)`` equals the teacher's probabilities on the top-k classes and their total elsewhere;
at another temperature the other classes share their mass evenly (their individual logits are lost). A
term reads decoded logits like live ones, so KD, DKD and ensembles need no special case. With k = C the
decoded logits are the teacher's (within the storage precision).
"""

from __future__ import annotations

import torch

TINY_MASS = 1e-12  # the mass given to the other classes when the top-k hold (numerically) all of it


def encode_topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values (B, k, ...), indices (B, k, ...), fill (B, ...)) of logits (B, C, ...), in float32."""
    logits = logits.float()
    classes = logits.shape[1]
    k = min(k, classes)
    values, indices = logits.topk(k, dim=1)
    lse = logits.logsumexp(1)
    if k == classes:
        return values, indices, lse  # nothing to fill: any value decodes the same
    kept = (values - lse.unsqueeze(1)).exp().sum(1)
    rest = (1.0 - kept).clamp_min(TINY_MASS)
    return values, indices, lse + (rest / (classes - k)).log()


def decode_topk(values: torch.Tensor, indices: torch.Tensor, fill: torch.Tensor, classes: int) -> torch.Tensor:
    """Dense float32 logits (B, classes, ...) from `encode_topk`'s parts (any float dtype, any int dtype)."""
    shape = (values.shape[0], classes, *values.shape[2:])
    dense = fill.float().unsqueeze(1).expand(shape).contiguous()
    return dense.scatter_(1, indices.long(), values.float())


def index_dtype(classes: int) -> torch.dtype:
    """The smallest integer type that holds every class index."""
    return torch.int16 if classes <= torch.iinfo(torch.int16).max else torch.int32
