"""Response and feature distillation terms for YOLO heads (pure torch: no ultralytics import).

Shapes follow Ultralytics' raw head outputs: ``boxes`` (B, 4 * reg_max, A) distance-distribution logits,
``scores`` (B, nc, A) class logits, over A anchors of every level concatenated; neck features (B, C, H, W).

Top-K response KD: the teacher's K most confident anchors per image (confidence = max class sigmoid) are
distilled, with the same anchor indices gathered from the student, so the student learns where the teacher
sees objects and what it sees there, not the near-zero background that dominates the other anchors.

Precision: the response terms run in float32 with autocast off. They read only B x K anchors (cheap), and in
fp16 a CIoU of pixel-sized boxes overflows (an area above 65504 px^2 is inf, and inf / inf is NaN). Boxes are
also compared in grid units, not pixels: both boxes at an anchor share its stride and CIoU is scale-invariant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-7  # as Ultralytics' bbox_iou


def resolve_topk(topk: int | float, anchors: int) -> int:
    """K anchors per image: an int is a count, a float in (0, 1] a fraction of `anchors` (at least 1, at most all)."""
    k = topk if isinstance(topk, int) else math.ceil(topk * anchors)
    return max(1, min(int(k), anchors))


def topk_anchors(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, K) of each image's `k` anchors with the highest max-class score; scores (B, nc, A) logits.

    The max over classes is taken on logits: sigmoid is monotonic, so the order (and the indices) are the same.
    """
    return scores.amax(dim=1).topk(k, dim=1).indices


def gather_anchors(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, C, A) gathered at (B, K) anchor indices -> (B, K, C)."""
    return x.gather(2, index.unsqueeze(1).expand(-1, x.shape[1], -1)).transpose(1, 2)


def decode_boxes(dist: torch.Tensor, anchors: torch.Tensor, reg_max: int) -> torch.Tensor:
    """xyxy boxes (B, K, 4) in grid units (pixels / the anchor's stride) from distance logits (B, K, 4 * reg_max)
    at anchor centres (B, K, 2) in grid units; the expectation over ``reg_max`` bins as Ultralytics' DFL decodes.
    Not scaled to pixels: CIoU is scale-invariant, and grid units keep the products small (see the module note)."""
    if reg_max > 1:
        bins = torch.arange(reg_max, dtype=dist.dtype, device=dist.device)
        dist = dist.view(*dist.shape[:-1], 4, reg_max).softmax(-1) @ bins  # (B, K, 4) ltrb
    left_top, right_bottom = dist.chunk(2, dim=-1)
    return torch.cat((anchors - left_top, anchors + right_bottom), dim=-1)


def ciou(box1: torch.Tensor, box2: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Complete IoU of xyxy boxes (..., 4), elementwise (Zheng et al., AAAI 2020):
    ``IoU - rho^2 / c^2 - alpha * v``, ``v = 4 / pi^2 (atan(w2/h2) - atan(w1/h1))^2``, ``alpha = v / (v - IoU + 1)``
    (alpha a constant in the gradient, as Ultralytics' bbox_iou); rho: centre distance, c: enclosing diagonal.
    Computed in float32 whatever the inputs: areas and squared distances overflow fp16 for boxes over 256 px.
    """
    (x1, y1, x2, y2), (u1, v1, u2, v2) = box1.float().unbind(-1), box2.float().unbind(-1)
    w1, h1, w2, h2 = x2 - x1, y2 - y1 + eps, u2 - u1, v2 - v1 + eps
    inter = (torch.minimum(x2, u2) - torch.maximum(x1, u1)).clamp(min=0) * (
        torch.minimum(y2, v2) - torch.maximum(y1, v1)
    ).clamp(min=0)
    iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
    cw, ch = torch.maximum(x2, u2) - torch.minimum(x1, u1), torch.maximum(y2, v2) - torch.minimum(y1, v1)
    c2 = cw.pow(2) + ch.pow(2) + eps  # enclosing box diagonal squared
    rho2 = ((u1 + u2 - x1 - x2).pow(2) + (v1 + v2 - y1 - y2).pow(2)) / 4  # centre distance squared
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def ciou_loss(student_boxes: torch.Tensor, teacher_boxes: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - CIoU`` over the selected anchors; boxes (B, K, 4) xyxy."""
    return (1.0 - ciou(student_boxes, teacher_boxes)).mean()


def kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, mode: str) -> torch.Tensor:
    """Hinton KD on class logits (B, K, nc): ``T^2 * KL(p_t || p_s)`` per anchor, averaged over anchors.

    ``softmax``: p = softmax(z / T) over the classes. ``sigmoid``: each class is its own Bernoulli sigmoid(z / T)
    (the head is trained with BCE), the KLs summed over the classes.
    """
    s, t = student_logits.float() / temperature, teacher_logits.float() / temperature
    if mode == "softmax":
        per_anchor = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1)
    elif mode == "sigmoid":
        p_t = torch.sigmoid(t)
        per_class = p_t * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p_t) * (F.logsigmoid(-t) - F.logsigmoid(-s))
        per_anchor = per_class.sum(-1)
    else:
        raise ValueError(f"kl mode must be 'softmax' or 'sigmoid', got {mode!r}")
    return per_anchor.mean() * temperature**2


@dataclass
class HeadOutputs:
    """One model's raw head outputs on a batch, and where its anchors are."""

    boxes: torch.Tensor  # (B, 4 * reg_max, A)
    scores: torch.Tensor  # (B, nc, A)
    reg_max: int


@dataclass
class TopK:
    """The teacher's side of Top-K response KD, gathered once per batch (small: B x K)."""

    index: torch.Tensor  # (B, K)
    boxes: torch.Tensor  # (B, K, 4) xyxy, grid units, float32
    logits: torch.Tensor  # (B, K, nc) float32


def teacher_topk(teacher: HeadOutputs, anchors: torch.Tensor, k: int) -> TopK:
    """Select and decode the teacher's Top-K anchors (float32); anchors (A, 2) in grid units."""
    index = topk_anchors(teacher.scores, k)
    with _full_precision(teacher.boxes):
        boxes = decode_boxes(gather_anchors(teacher.boxes, index).float(), anchors[index].float(), teacher.reg_max)
        return TopK(index, boxes, gather_anchors(teacher.scores, index).float())


def response_losses(
    student: HeadOutputs, top: TopK, anchors: torch.Tensor, temperature: float, kl_mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(CIoU loss, KL loss) of the student at the teacher's Top-K anchors, in float32 with autocast off."""
    with _full_precision(student.boxes):
        dist = gather_anchors(student.boxes, top.index).float()  # (B, K, 4 * reg_max)
        boxes = decode_boxes(dist, anchors[top.index].float(), student.reg_max)
        logits = gather_anchors(student.scores, top.index).float()  # (B, K, nc)
        return ciou_loss(boxes, top.boxes), kl_loss(logits, top.logits, temperature, kl_mode)


def _full_precision(like: torch.Tensor) -> torch.autocast:
    """Autocast off on `like`'s device: the small B x K terms stay float32 inside an AMP step."""
    return torch.autocast(device_type=like.device.type, enabled=False)


def score_weighted_mse(student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Feature imitation at one level, weighted by where the teacher is confident (Ultralytics' ``loss_sl2``):
    ``sum(w * (f_s - f_t)^2) / (C * sum(w))``; features (B, C, H, W), weight (B, 1, H * W)."""
    n, c = student.shape[:2]
    mse = (student.reshape(n, c, -1) - teacher.reshape(n, c, -1)).pow(2)
    return (mse * weight).sum() / (weight.sum() * c + 1e-9)


def feature_loss(
    student_feats: list[torch.Tensor],
    teacher_feats: list[torch.Tensor],
    teacher_scores: torch.Tensor,
    projectors: nn.ModuleList,
) -> torch.Tensor:
    """Score-weighted imitation summed over the neck levels; teacher_scores (B, nc, A) logits split by level."""
    sizes = [f.shape[-2] * f.shape[-1] for f in teacher_feats]
    weights = (part.sigmoid().amax(dim=1, keepdim=True) for part in teacher_scores.split(sizes, dim=-1))
    levels = zip(student_feats, teacher_feats, weights, projectors, strict=True)
    return sum(score_weighted_mse(project(s), t, w) for s, t, w, project in levels)


def projector(student_channels: int, teacher_channels: int) -> nn.Module:
    """Student -> teacher channels, as Ultralytics' distill_model builds it (1x1 conv, ReLU, 1x1 conv); trained
    with the student, never exported with it."""
    return nn.Sequential(
        nn.Conv2d(student_channels, teacher_channels, 1),
        nn.ReLU(inplace=True),
        nn.Conv2d(teacher_channels, teacher_channels, 1),
    )
