"""Multi-crop batches through a model, and the pairing of the student's crops with the teacher's.

A multi-crop batch input is ``{"global": (B, G, C, H, W), "local": (B, L, C, h, w)}``. Each crop group runs
through the network as one batch (the groups differ in size). Outputs gain a crop axis after the batch
axis: outputs that are not taps (``embedding``) hold every crop the model reads, (B, G [+ L], ...); taps
(patch tokens, feature maps) hold the global crops only, whose grids match the teacher's.

The teacher reads the global crops only (as in DINO). `pair_crops` lines the two up for the distillation
terms: student global crop i with teacher global crop i (the same pixels), and each local crop with the mean
of the teacher's global crops (a part of the image must predict the whole image's representation).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from kdforge.core.errors import ConfigError
from kdforge.data.inputs import Inputs
from kdforge.models.taps import TAP_PREFIX, TappedModel

Outputs = dict[str, torch.Tensor]


def is_multicrop(inputs: Inputs) -> bool:
    return isinstance(inputs, Mapping) and "global" in inputs and isinstance(inputs["global"], torch.Tensor)


def global_crops(inputs: Inputs) -> Inputs:
    """What a teacher reads of a batch: the global crops of a multi-crop input, else the input itself (the
    local crops are never resized, moved or run for it)."""
    return {"global": inputs["global"]} if is_multicrop(inputs) else inputs


class MultiCropModel(TappedModel):
    """A `TappedModel` that also takes multi-crop inputs (a plain tensor, e.g. a val image, passes through).

    Args:
        with_locals: whether the local crops run too (the student: yes; the teacher: no).
    """

    def __init__(self, *args: Any, with_locals: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.with_locals = with_locals

    def forward(self, inputs: Inputs) -> Outputs:
        if not is_multicrop(inputs):
            return super().forward(inputs)
        outputs = self._group(inputs["global"])
        if self.with_locals and "local" in inputs:
            local = self._group(inputs["local"], "local")
            for key, value in outputs.items():
                # Embeddings gain the local crops; taps and size-dependent outputs keep the global crops only.
                if not key.startswith(TAP_PREFIX) and local[key].shape[2:] == value.shape[2:]:
                    outputs[key] = torch.cat([value, local[key]], dim=1)
        return outputs

    def _group(self, crops: torch.Tensor, name: str = "global") -> Outputs:
        """One crop group (B, N, C, H, W) through the network as B*N images; outputs (B, N, ...)."""
        b, n = crops.shape[:2]
        try:
            outputs = super().forward(crops.flatten(0, 1))
        except (AssertionError, RuntimeError, ValueError) as exc:
            raise ConfigError(
                f"the model cannot read the {name} crops ({tuple(crops.shape[2:])}): {exc}. For a timm ViT set "
                "kwargs.dynamic_img_size: true; or change data.multicrop (local_size, use_local_crops: false)."
            ) from exc
        return {k: v.unflatten(0, (b, n)) for k, v in outputs.items()}


def pair_crops(student: Outputs, teacher: Outputs) -> tuple[Outputs, Outputs]:
    """Both sides flattened to one row per student crop, (B * V, ...): teacher global crop i for student crop
    i < G, the mean of the teacher's global crops for each local crop. Keys only one side has are flattened."""
    paired_teacher = {}
    for key, value in teacher.items():
        extra = student[key].shape[1] - value.shape[1] if key in student else 0
        if extra > 0:
            mean = value.float().mean(dim=1, keepdim=True).to(value.dtype)
            value = torch.cat([value, mean.expand(-1, extra, *value.shape[2:])], dim=1)
        paired_teacher[key] = value.flatten(0, 1)
    return {k: v.flatten(0, 1) for k, v in student.items()}, paired_teacher
