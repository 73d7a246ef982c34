"""Adapters: the feature adapter (projection + resize, built from one example pair) and the teacher's
input adapter (renormalization + resize)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdforge.distill.adapters import FeatureAdapter, InputAdapter

# --- feature adapter ------------------------------------------------------------------------------


def test_adapter_refuses_different_ranks() -> None:
    with pytest.raises(ValueError, match="differ in rank"):
        FeatureAdapter(torch.Size([2, 4, 6, 6]), torch.Size([2, 8]))


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
