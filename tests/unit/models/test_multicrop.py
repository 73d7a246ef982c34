"""MultiCropModel (crop groups through a tapped net) and pair_crops (student crops lined up with the teacher's)."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn
from torch.testing import assert_close

from kdforge.core.errors import ConfigError
from kdforge.models.multicrop import MultiCropModel, global_crops, is_multicrop, pair_crops
from kdforge.models.taps import TappedModel

B, G, L, C, D = 2, 2, 3, 3, 5  # batch, global crops, local crops, channels, output width
TAPS = {"conv": "0"}


def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(C, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, D)
    ).eval()


def crops() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "global": torch.randn(B, G, C, 8, 8, generator=generator),
        "local": torch.randn(B, L, C, 4, 4, generator=generator),
    }


def test_non_tap_outputs_hold_every_crop_as_if_run_one_by_one() -> None:
    net, batch = tiny_net(), crops()
    with torch.no_grad():
        outputs = MultiCropModel(net, TAPS)(batch)
        assert set(outputs) == {"logits", "feat:conv"}
        assert outputs["logits"].shape == (B, G + L, D)
        for b in range(B):
            for v in range(G + L):
                crop = batch["global"][b, v] if v < G else batch["local"][b, v - G]
                assert_close(outputs["logits"][b, v], net(crop.unsqueeze(0))[0])


def test_taps_hold_the_global_crops_only() -> None:
    net, batch = tiny_net(), crops()
    with torch.no_grad():
        tap = MultiCropModel(net, TAPS)(batch)["feat:conv"]
        assert tap.shape == (B, G, 4, 8, 8)
        assert_close(tap, net[0](batch["global"].flatten(0, 1)).unflatten(0, (B, G)))


def test_without_locals_only_the_global_crops_run() -> None:
    net, batch = tiny_net(), crops()
    with torch.no_grad():
        outputs = MultiCropModel(net, TAPS, with_locals=False)(batch)
        assert outputs["logits"].shape == (B, G, D) and outputs["feat:conv"].shape == (B, G, 4, 8, 8)
        assert_close(outputs["logits"], net(batch["global"].flatten(0, 1)).unflatten(0, (B, G)))


def test_globals_alone_run_without_a_local_key() -> None:
    net, batch = tiny_net(), crops()
    with torch.no_grad():
        assert MultiCropModel(net, TAPS)({"global": batch["global"]})["logits"].shape == (B, G, D)


def test_a_plain_tensor_passes_through_as_in_tapped_model() -> None:
    net, image = tiny_net(), torch.randn(B, C, 8, 8)
    with torch.no_grad():
        multi, plain = MultiCropModel(net, TAPS)(image), TappedModel(net, TAPS)(image)
    assert set(multi) == set(plain) == {"logits", "feat:conv"}
    for key in plain:
        assert torch.equal(multi[key], plain[key])
    assert multi["logits"].shape == (B, D)


def test_is_multicrop() -> None:
    assert is_multicrop(crops())
    assert not is_multicrop(torch.zeros(1, 3, 8, 8))
    assert not is_multicrop({"camera": torch.zeros(1, 3)})


# Student: B = 2 samples, G = 2 global + L = 1 local crops of width 2; teacher: the 2 global crops only.
# Teacher sample 0 globals [1, 2], [3, 5] (mean [2, 3.5]); sample 1 globals [10, 0], [20, 4] (mean [15, 2]).
TEACHER_EMBEDDING = torch.tensor([[[1.0, 2.0], [3.0, 5.0]], [[10.0, 0.0], [20.0, 4.0]]])  # (B, G, 2)


def test_pair_crops_matches_globals_and_gives_locals_the_global_mean() -> None:
    student_embedding = torch.arange(12.0).reshape(2, 3, 2)  # (B, G + L, 2)
    student, teacher = pair_crops({"embedding": student_embedding}, {"embedding": TEACHER_EMBEDDING})
    assert torch.equal(student["embedding"], student_embedding.reshape(6, 2))
    expected = torch.tensor([[1.0, 2.0], [3.0, 5.0], [2.0, 3.5], [10.0, 0.0], [20.0, 4.0], [15.0, 2.0]])
    assert torch.equal(teacher["embedding"], expected)


def test_pair_crops_mean_for_several_locals_and_low_precision() -> None:
    student = {"embedding": torch.zeros(2, 4, 2, dtype=torch.float16)}  # G = 2, L = 2
    teacher = {"embedding": TEACHER_EMBEDDING.half()}
    _, paired = pair_crops(student, teacher)
    assert paired["embedding"].dtype == torch.float16
    assert paired["embedding"][2:4].tolist() == [[2.0, 3.5], [2.0, 3.5]]
    assert paired["embedding"][6:8].tolist() == [[15.0, 2.0], [15.0, 2.0]]


def test_pair_crops_flattens_keys_only_one_side_has() -> None:
    student = {"embedding": torch.zeros(2, 3, 2), "feat:tokens": torch.arange(2 * 2 * 4.0).reshape(2, 2, 4)}
    teacher = {"embedding": TEACHER_EMBEDDING, "logits": torch.arange(2 * 2 * 7.0).reshape(2, 2, 7)}
    paired_student, paired_teacher = pair_crops(student, teacher)
    assert paired_student["feat:tokens"].shape == (4, 4)
    assert torch.equal(paired_student["feat:tokens"], student["feat:tokens"].flatten(0, 1))
    assert torch.equal(paired_teacher["logits"], teacher["logits"].flatten(0, 1))
    assert "logits" not in paired_student and "feat:tokens" not in paired_teacher


@pytest.mark.parametrize("with_locals", [True, False])
def test_model_outputs_pair_with_a_global_only_teacher(with_locals: bool) -> None:
    net, batch = tiny_net(), crops()
    with torch.no_grad():
        student = MultiCropModel(net, TAPS, with_locals=with_locals)(batch)
        teacher = MultiCropModel(net, TAPS, with_locals=False)(batch)
    paired_student, paired_teacher = pair_crops(student, teacher)
    views = G + L if with_locals else G
    assert paired_student["logits"].shape == paired_teacher["logits"].shape == (B * views, D)
    assert paired_student["feat:conv"].shape == paired_teacher["feat:conv"].shape == (B * G, 4, 8, 8)
    assert_close(paired_student["logits"][:G], paired_teacher["logits"][:G])  # same net, same global crops


def test_a_fixed_size_vit_on_smaller_local_crops_names_the_fix() -> None:
    net = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=0)
    model = MultiCropModel(net, {}, lambda out: {"embedding": out})
    crops = {"global": torch.randn(1, 2, 3, 32, 32), "local": torch.randn(1, 2, 3, 16, 16)}
    with pytest.raises(ConfigError, match="local crops.*dynamic_img_size"):
        model(crops)


def test_global_crops_is_what_a_teacher_reads() -> None:
    crops = {"global": torch.zeros(1, 2, 3, 4, 4), "local": torch.zeros(1, 3, 3, 2, 2)}
    assert set(global_crops(crops)) == {"global"}
    plain = torch.zeros(2, 3)
    assert global_crops(plain) is plain


def test_outputs_whose_shape_depends_on_the_crop_size_keep_the_global_crops() -> None:
    model = MultiCropModel(nn.Identity(), {}, lambda out: {"embedding": out.mean((1, 2, 3))[:, None], "map": out})
    crops = {"global": torch.randn(2, 2, 1, 4, 4), "local": torch.randn(2, 3, 1, 2, 2)}
    outputs = model(crops)
    assert outputs["embedding"].shape == (2, 5, 1) and outputs["map"].shape == (2, 2, 1, 4, 4)


@pytest.mark.slow
def test_multicrop_model_under_torch_compile() -> None:
    """``train.compile_student`` compiles the multi-crop student: each crop group's shape compiles once."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = MultiCropModel(net, {"conv": "0"}, lambda out: {"embedding": out})
    crops = {"global": torch.randn(2, 2, 3, 16, 16), "local": torch.randn(2, 3, 3, 8, 8)}
    with torch.no_grad():
        eager = model(crops)
        compiled = torch.compile(model)(crops)
    assert compiled.keys() == eager.keys() == {"embedding", "feat:conv"}
    for key, value in eager.items():
        torch.testing.assert_close(compiled[key], value, rtol=1e-4, atol=1e-5, msg=key)
