"""Building Ultralytics models for kdforge, and the teacher's cheap forward.

The teacher runs under ``inference_mode`` up to its Detect head's raw outputs (box and class logits, and the
neck features the head reads): no box decoding of all anchors, no NMS. A distillation step then costs the
student's step plus one teacher forward.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from ultralytics.nn.modules.head import Detect
from ultralytics.nn.tasks import DetectionModel, load_checkpoint

from kdforge.app.detection.losses import HeadOutputs
from kdforge.core.config.data import ModelSpec
from kdforge.core.errors import CheckpointError, ClassCountMismatchError, ConfigError


def check_model_file(spec: ModelSpec, role: str) -> Path:
    """The spec's ``.pt`` or ``.yaml``; a missing ``.pt`` is an error here, since Ultralytics would download it."""
    path = Path(spec.name)
    suffix = path.suffix.lower()
    if suffix not in (".pt", ".yaml", ".yml"):
        raise ConfigError(
            f"{role}.name must be an Ultralytics .pt file or a model .yaml (e.g. yolov8n.yaml), got {spec.name!r}."
        )
    if suffix == ".pt":
        if not path.is_file():
            raise CheckpointError(
                f"{role} weights {spec.name!r} not found. kdforge never downloads weights: give a local .pt, or a "
                "model .yaml (e.g. yolov8n.yaml) to start from random weights."
            )
        if not spec.trust_checkpoint:
            raise CheckpointError(
                f"{role} weights {spec.name!r} are an Ultralytics .pt, a pickled model: loading it runs code from the "
                f"file. If you trust it, set {role}.trust_checkpoint: true."
            )
    return path


def load_teacher(spec: ModelSpec, nc: int, device: torch.device) -> DetectionModel:
    """The frozen teacher (eval mode, no gradients); a ``.yaml`` builds random weights (for tests only)."""
    path = check_model_file(spec, "teacher")
    if path.suffix.lower() == ".pt":
        try:
            model = load_checkpoint(str(path))[0]
        except Exception as exc:  # Ultralytics raises many kinds on a bad file
            raise CheckpointError(f"teacher weights {str(path)!r} could not be loaded by Ultralytics: {exc}") from exc
    else:
        model = DetectionModel(str(path), nc=nc, verbose=False)
    head = detect_head(model, "teacher")
    if head.nc != nc:
        raise ClassCountMismatchError(
            f"the teacher {spec.name!r} predicts {head.nc} classes but the data has {nc}: distil from a teacher "
            "trained on the same classes (same names, same order)."
        )
    model = model.float().to(device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def detect_head(model: nn.Module, role: str) -> Detect:
    """The model's Detect head (its last layer); refuses heads kdforge cannot distil."""
    head = model.model[-1]
    if not isinstance(head, Detect) or not hasattr(head, "forward_head"):
        raise ConfigError(f"the {role} model has no Ultralytics Detect head (last layer: {type(head).__name__}).")
    if type(head).__name__ != "Detect":
        raise ConfigError(
            f"the {role} model's head is {type(head).__name__}: kdforge distils plain detection heads (Detect) only."
        )
    return head


def check_pair(teacher: nn.Module, student: nn.Module) -> None:
    """Top-K distillation gathers the same anchor indices from both: their levels and strides must match."""
    t_head, s_head = detect_head(teacher, "teacher"), detect_head(student, "student")
    t_strides, s_strides = t_head.stride.tolist(), s_head.stride.tolist()
    if t_strides != s_strides:
        raise ConfigError(
            f"teacher and student heads differ in their strides ({t_strides} vs {s_strides}), so their anchors do not "
            "line up; pick models of the same family (e.g. yolov8s/m/l/x teaching yolov8n)."
        )
    if t_head.nc != s_head.nc:
        raise ClassCountMismatchError(f"teacher predicts {t_head.nc} classes, student {s_head.nc}.")


def head_outputs(preds: dict[str, torch.Tensor] | tuple, reg_max: int) -> tuple[HeadOutputs, list[torch.Tensor]]:
    """A model's raw training outputs as `HeadOutputs` plus the neck features (one-to-many branch when dual)."""
    if isinstance(preds, tuple):  # eval mode: (decoded, raw)
        preds = preds[1]
    if "one2many" in preds:
        preds = preds["one2many"]
    return HeadOutputs(preds["boxes"], preds["scores"], reg_max), list(preds["feats"])


@torch.inference_mode()
def teacher_forward(model: DetectionModel, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run the teacher to its Detect head's raw outputs ({boxes, scores, feats}); the routing is the one
    Ultralytics' ``_predict_once`` follows, stopping before the head decodes every anchor."""
    saved: list[torch.Tensor | None] = []
    x: torch.Tensor | list[torch.Tensor] = images
    head = model.model[-1]
    for layer in model.model:
        if layer.f != -1:
            x = saved[layer.f] if isinstance(layer.f, int) else [x if j == -1 else saved[j] for j in layer.f]
        if layer is head:
            return head.forward_head(x, **head.one2many)
        x = layer(x)
        saved.append(x if layer.i in model.save else None)
    raise ConfigError("the teacher model ended without reaching its Detect head.")
