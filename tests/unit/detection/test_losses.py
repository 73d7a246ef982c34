"""Top-K response KD and feature imitation (kdforge.app.detection.losses) against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from kdforge.app.detection.losses import (
    HeadOutputs,
    ciou,
    ciou_loss,
    decode_boxes,
    feature_loss,
    kl_loss,
    resolve_topk,
    response_losses,
    score_weighted_mse,
    teacher_topk,
    topk_anchors,
)


def test_topk_picks_the_k_highest_teacher_scores_per_image() -> None:
    # (B=2, nc=2, A=5): image 0's best anchors by max-class logit are 3 (4.0) and 1 (3.0); image 1's are 0 and 4.
    scores = torch.tensor(
        [
            [[0.1, 3.0, -1.0, 0.0, 0.5], [0.2, -2.0, 0.3, 4.0, 0.0]],
            [[5.0, 0.0, 0.1, 0.2, 1.0], [-1.0, 0.3, 0.0, 0.1, 2.5]],
        ]
    )
    index = topk_anchors(scores, 2)
    assert index.tolist() == [[3, 1], [0, 4]]
    for image in range(2):  # every unselected anchor scores below every selected one
        best = scores[image].amax(0)
        chosen = set(index[image].tolist())
        assert min(best[list(chosen)]) > max(best[[a for a in range(5) if a not in chosen]])


def test_resolve_topk_counts_and_fractions() -> None:
    assert resolve_topk(10, 336) == 10
    assert resolve_topk(0.0125, 8400) == 105
    assert resolve_topk(0.0125, 336) == 5  # ceil(4.2)
    assert resolve_topk(1000, 336) == 336
    assert resolve_topk(1e-9, 336) == 1


def test_decode_boxes_takes_the_expected_distance_per_side() -> None:
    reg_max = 4
    # Each side's logits put all mass on one bin: distances l=1, t=2, r=3, b=0 (grid units).
    logits = torch.full((1, 1, 4, reg_max), -1e4)
    for side, bin_ in enumerate((1, 2, 3, 0)):
        logits[0, 0, side, bin_] = 0.0
    boxes = decode_boxes(logits.view(1, 1, -1), torch.tensor([[[5.5, 5.5]]]), reg_max)
    assert boxes.squeeze().tolist() == pytest.approx([5.5 - 1, 5.5 - 2, 5.5 + 3, 5.5])  # grid units, not pixels


def test_ciou_of_large_boxes_in_fp16_is_finite_and_equals_fp32() -> None:
    # 400 x 400 px: the area (160000) is inf in fp16 (max 65504); computed as is, inf / inf gives NaN under AMP.
    a, b = torch.tensor([[0.0, 0.0, 400.0, 400.0]]), torch.tensor([[10.0, 10.0, 410.0, 410.0]])
    half = ciou(a.half(), b.half())
    assert torch.isfinite(half).all() and half.dtype == torch.float32
    assert half.item() == pytest.approx(ciou(a, b).item(), abs=1e-6)
    assert half.item() == pytest.approx(_hand_ciou(a[0].tolist(), b[0].tolist()), abs=1e-6)


def test_ciou_is_scale_invariant_so_grid_units_give_the_pixel_value() -> None:
    a, b = torch.tensor([1.0, 2.0, 5.0, 4.5]), torch.tensor([1.5, 1.0, 6.0, 5.0])
    assert ciou(a * 32, b * 32).item() == pytest.approx(ciou(a, b).item(), abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_response_losses_under_autocast_are_float32_and_match(dtype: torch.dtype) -> None:
    teacher, student = _outputs(0, anchors=20), _outputs(1, anchors=20)
    anchors = _anchor_grid()[0] * 16  # far-out anchors (a 640 px image at stride 8 is 80 cells wide)
    low = [HeadOutputs(o.boxes.to(dtype) * 4, o.scores.to(dtype), 4) for o in (teacher, student)]
    with torch.autocast("cpu", dtype=dtype):
        got = response_losses(low[1], teacher_topk(low[0], anchors, 5), anchors, 2.0, "sigmoid")
    full = [HeadOutputs(o.boxes.float(), o.scores.float(), 4) for o in low]
    want = response_losses(full[1], teacher_topk(full[0], anchors, 5), anchors, 2.0, "sigmoid")
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32 and torch.isfinite(g)
        assert g.item() == pytest.approx(w.item(), rel=1e-5)


def _hand_ciou(a: list[float], b: list[float], eps: float = 1e-7) -> float:
    w1, h1, w2, h2 = a[2] - a[0], a[3] - a[1] + eps, b[2] - b[0], b[3] - b[1] + eps
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
    c2 = (max(a[2], b[2]) - min(a[0], b[0])) ** 2 + (max(a[3], b[3]) - min(a[1], b[1])) ** 2 + eps
    rho2 = ((b[0] + b[2] - a[0] - a[2]) ** 2 + (b[1] + b[3] - a[1] - a[3]) ** 2) / 4
    v = 4 / math.pi**2 * (math.atan(w2 / h2) - math.atan(w1 / h1)) ** 2
    alpha = v / (v - iou + 1 + eps)
    return iou - rho2 / c2 - alpha * v


def test_ciou_equals_the_hand_computation() -> None:
    a, b = [0.0, 0.0, 4.0, 2.0], [1.0, 1.0, 5.0, 4.0]
    # inter 3*1=3, union 8+12-3=17, IoU 3/17; enclosing 5x4: c2 = 41; centres (2,1),(3,2.5): rho2 = 1 + 2.25
    assert ciou(torch.tensor(a), torch.tensor(b)).item() == pytest.approx(_hand_ciou(a, b), abs=1e-6)
    assert _hand_ciou(a, b) == pytest.approx(3 / 17 - 3.25 / 41 - 0.0, abs=0.02)  # the aspect term is small here
    apart = [10.0, 10.0, 12.0, 14.0]
    assert ciou(torch.tensor(a), torch.tensor(apart)).item() == pytest.approx(_hand_ciou(a, apart), abs=1e-6)


def test_ciou_matches_ultralytics_bbox_iou() -> None:
    pytest.importorskip("ultralytics")
    from ultralytics.utils.metrics import bbox_iou

    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(64, 2, generator=gen) * 50
    box1 = torch.cat([xy, xy + 1 + torch.rand(64, 2, generator=gen) * 20], 1)
    box2 = box1 + torch.randn(64, 4, generator=gen) * 3
    expected = bbox_iou(box1, box2, xywh=False, CIoU=True).squeeze(-1)
    assert torch.allclose(ciou(box1, box2), expected, atol=1e-6)


def test_kl_equals_the_hand_computation() -> None:
    s, t, temp = [1.0, 0.0, -1.0], [2.0, 0.5, 0.0], 2.0
    soft = lambda z: [math.exp(v / temp) / sum(math.exp(u / temp) for u in z) for v in z]  # noqa: E731
    expected = sum(pt * math.log(pt / ps) for pt, ps in zip(soft(t), soft(s), strict=True)) * temp**2
    got = kl_loss(torch.tensor([[s]]), torch.tensor([[t]]), temp, "softmax")
    assert got.item() == pytest.approx(expected, rel=1e-4)

    sig = lambda z: 1 / (1 + math.exp(-z / temp))  # noqa: E731
    bern = sum(
        sig(b) * math.log(sig(b) / sig(a)) + (1 - sig(b)) * math.log((1 - sig(b)) / (1 - sig(a)))
        for a, b in zip(s, t, strict=True)
    )
    got = kl_loss(torch.tensor([[s]]), torch.tensor([[t]]), temp, "sigmoid")
    assert got.item() == pytest.approx(bern * temp**2, rel=1e-5)


def _outputs(seed: int, batch: int = 2, nc: int = 3, anchors: int = 20, reg_max: int = 4) -> HeadOutputs:
    gen = torch.Generator().manual_seed(seed)
    boxes = torch.randn(batch, 4 * reg_max, anchors, generator=gen)
    return HeadOutputs(boxes, torch.randn(batch, nc, anchors, generator=gen), reg_max)


def _anchor_grid(anchors: int = 20) -> tuple[torch.Tensor]:
    return (torch.stack([torch.arange(anchors) % 5 + 0.5, torch.arange(anchors) // 5 + 0.5], 1).float(),)


def test_response_losses_are_zero_when_the_student_outputs_equal_the_teachers() -> None:
    teacher = _outputs(0)
    (anchors,) = _anchor_grid()
    top = teacher_topk(teacher, anchors, k=5)
    student = HeadOutputs(teacher.boxes.clone().requires_grad_(), teacher.scores.clone().requires_grad_(), 4)
    ciou_part, kl_part = response_losses(student, top, anchors, 2.0, "softmax")
    assert ciou_part.item() == pytest.approx(0.0, abs=1e-6)
    assert kl_part.item() == pytest.approx(0.0, abs=1e-7)
    assert response_losses(student, top, anchors, 2.0, "sigmoid")[1].item() == pytest.approx(0.0, abs=1e-6)


def test_response_losses_read_only_the_teachers_topk_anchors() -> None:
    teacher, student = _outputs(0), _outputs(1)
    (anchors,) = _anchor_grid()
    top = teacher_topk(teacher, anchors, k=4)
    boxes = student.boxes.clone().requires_grad_()
    scores = student.scores.clone().requires_grad_()
    ciou_part, kl_part = response_losses(HeadOutputs(boxes, scores, 4), top, anchors, 2.0, "softmax")
    (ciou_part + kl_part).backward()
    touched = (boxes.grad.abs().sum(1) + scores.grad.abs().sum(1)) > 0  # (B, A)
    for image in range(2):
        assert set(touched[image].nonzero().flatten().tolist()) == set(top.index[image].tolist())
    # and they equal the hand-gathered computation
    idx = top.index
    s_boxes = decode_boxes(boxes.gather(2, idx[:, None].expand(-1, 16, -1)).transpose(1, 2), anchors[idx], 4)
    assert ciou_part.item() == pytest.approx(ciou_loss(s_boxes, top.boxes).item(), rel=1e-6)


def test_score_weighted_mse_is_zero_for_equal_features_and_weighs_by_teacher_score() -> None:
    feats = torch.randn(2, 4, 3, 3)
    weight = torch.rand(2, 1, 9)
    assert score_weighted_mse(feats, feats.clone(), weight).item() == 0.0
    other = feats + 1.0  # every squared difference is 1: the weighted mean is 1 whatever the weights
    assert score_weighted_mse(other, feats, weight).item() == pytest.approx(1.0, rel=1e-6)


def test_feature_loss_sums_levels_with_the_teachers_scores_split_per_level() -> None:
    feats = [torch.randn(1, 2, 4, 4), torch.randn(1, 2, 2, 2)]
    scores = torch.randn(1, 3, 16 + 4)
    identity = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])
    assert feature_loss(feats, [f.clone() for f in feats], scores, identity).item() == 0.0
    shifted = [f + 2.0 for f in feats]
    assert feature_loss(shifted, feats, scores, identity).item() == pytest.approx(2 * 4.0, rel=1e-6)
