"""Adapters: the feature adapter (projection + resize, built from one example pair) and the teacher's
input adapter (renormalization + resize)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdforge.distill.adapters import FeatureAdapter, InputAdapter, tokens_to_map

# --- feature adapter ------------------------------------------------------------------------------


def test_adapter_refuses_a_vector_against_a_map() -> None:
    with pytest.raises(ValueError, match="a vector cannot be compared with a map or tokens"):
        FeatureAdapter(torch.Size([2, 4, 6, 6]), torch.Size([2, 8]))


def test_tokens_to_map_drops_the_prefix_tokens_and_keeps_grid_order() -> None:
    grid = torch.arange(2 * 9 * 4, dtype=torch.float32).reshape(2, 9, 4)  # (B, 3*3 patches, D)
    tokens = torch.cat([torch.full((2, 2, 4), -1.0), grid], dim=1)  # class + register token first
    fmap = tokens_to_map(tokens)
    assert fmap.shape == (2, 4, 3, 3)
    assert torch.equal(fmap[1, :, 2, 1], grid[1, 2 * 3 + 1])


def test_vit_student_tokens_meet_a_cnn_teacher_map() -> None:
    torch.manual_seed(0)
    adapter = FeatureAdapter(torch.Size([2, 1 + 16, 8]), torch.Size([2, 12, 7, 7]))  # ViT 4x4 grid vs 7x7 map
    student, teacher = torch.randn(2, 17, 8, requires_grad=True), torch.randn(2, 12, 7, 7)
    out = adapter(student)
    assert out.shape == (2, 12, 7, 7) and isinstance(adapter.proj, nn.Conv2d)
    assert torch.equal(adapter.teacher_view(teacher), teacher)
    out.sum().backward()
    assert student.grad[:, 0].abs().sum() == 0 and student.grad[:, 1:].abs().sum() > 0  # class token unused


def test_cnn_student_map_meets_vit_teacher_tokens() -> None:
    adapter = FeatureAdapter(torch.Size([2, 4, 6, 6]), torch.Size([2, 1 + 9, 16]))
    teacher = torch.randn(2, 10, 16)
    assert adapter(torch.randn(2, 4, 6, 6)).shape == adapter.teacher_view(teacher).shape == (2, 16, 3, 3)


def test_tokens_of_equal_count_are_matched_token_by_token() -> None:
    adapter = FeatureAdapter(torch.Size([2, 10, 8]), torch.Size([2, 10, 12]))
    assert isinstance(adapter.proj, nn.Linear) and not adapter.as_maps
    assert adapter(torch.randn(2, 10, 8)).shape == (2, 10, 12)


def test_feature_adapter_projects_maps_with_a_1x1_conv_and_resizes() -> None:
    torch.manual_seed(0)
    adapter = FeatureAdapter(torch.Size([2, 3, 8, 8]), torch.Size([2, 5, 4, 4]))
    assert isinstance(adapter.proj, nn.Conv2d) and adapter.proj.kernel_size == (1, 1)
    x = torch.randn(2, 3, 8, 8)
    out = adapter(x)
    assert out.shape == (2, 5, 4, 4)
    projected = torch.einsum("ts,bshw->bthw", adapter.proj.weight[:, :, 0, 0], x)  # (B, C_t, 8, 8)
    torch.testing.assert_close(out, F.interpolate(projected, size=(4, 4), mode="bilinear", align_corners=False))


def test_feature_adapter_projects_tokens_on_the_last_axis() -> None:
    torch.manual_seed(0)
    adapter = FeatureAdapter(torch.Size([2, 7, 4]), torch.Size([2, 7, 6]))  # (B, N, C)
    x = torch.randn(2, 7, 4)
    torch.testing.assert_close(adapter(x), x @ adapter.proj.weight.T)


def test_feature_adapter_is_identity_for_equal_shapes() -> None:
    adapter = FeatureAdapter(torch.Size([2, 4, 3, 3]), torch.Size([2, 4, 3, 3]))
    x = torch.randn(2, 4, 3, 3)
    assert list(adapter.parameters()) == []
    assert torch.equal(adapter(x), x)


# --- input adapter --------------------------------------------------------------------------------


def test_input_adapter_renormalizes_per_channel() -> None:
    data_mean, data_std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    adapter = InputAdapter(data_mean, data_std, mean, std)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 5)
    out = adapter(x)
    assert out.shape == x.shape
    for c in range(3):
        expected = (x[:, c] * data_std[c] + data_mean[c] - mean[c]) / std[c]
        torch.testing.assert_close(out[:, c], expected)


def test_input_adapter_resizes_to_the_teacher_size() -> None:
    adapter = InputAdapter((0.0,), (1.0,), mean=(0.5,), std=(0.5,), size=6)
    x = torch.full((2, 1, 3, 3), 0.75)
    out = adapter(x)
    assert out.shape == (2, 1, 6, 6)
    # (0.75 - 0.5) / 0.5 everywhere: a constant image stays constant under resize.
    torch.testing.assert_close(out, torch.full((2, 1, 6, 6), 0.5))
    torch.manual_seed(0)
    image = torch.rand(1, 3, 8, 8)
    down = InputAdapter((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), size=(4, 2))(image)
    assert down.shape == (1, 3, 4, 2)
    reference = F.interpolate(image, size=(4, 2), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(down, reference)
    assert torch.equal(InputAdapter((0.0,), (1.0,), size=8)(image), image)  # already at the teacher size


def test_input_adapter_defaults_to_identity() -> None:
    adapter = InputAdapter((0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    assert not adapter.renormalize
    x = torch.randn(1, 3, 4, 4)
    assert torch.equal(adapter(x), x)
    same = InputAdapter((0.5,), (0.2,), mean=(0.5,), std=(0.2,), size=(4, 4))
    assert torch.equal(same(torch.ones(1, 1, 4, 4)), torch.ones(1, 1, 4, 4))


def test_a_registered_token_layout_handles_registers_and_non_square_grids() -> None:
    import timm

    from kdforge.distill.adapters import register_token_layout
    from kdforge.models.taps import TappedModel

    vit = TappedModel(timm.create_model("test_vit", img_size=(32, 48), patch_size=8, reg_tokens=2), {"f": "blocks.5"})
    assert vit.token_layout() == (3, 4, 6)  # class + 2 registers, a 4x6 grid: 27 tokens, which is not 5x5 + 2
    register_token_layout(vit.token_layout())
    tokens = vit(torch.randn(2, 3, 32, 48))["feat:f"]
    fmap = tokens_to_map(tokens)
    assert fmap.shape == (2, tokens.shape[2], 4, 6)
    assert torch.equal(fmap[0, :, 1, 2], tokens[0, 3 + 1 * 6 + 2])


def test_an_ambiguous_token_count_is_refused() -> None:
    from kdforge.core.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot tell the patch grid of 110 tokens"):
        tokens_to_map(torch.randn(1, 110, 4))  # 10x10 + 10 prefix tokens? or 10x11? unknown
