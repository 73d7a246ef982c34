"""export_all: every asked format is tried; a failing one is reported and the others are still written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from kdforge.app.export import export_all
from kdforge.models.zoo import SimpleCNN, cnn


def _net() -> SimpleCNN:
    torch.manual_seed(0)
    net = cnn(num_classes=4, in_chans=1, widths=(4, 8))
    net.train()(torch.randn(8, 1, 8, 8))  # non-trivial BN statistics
    return net.eval()


def test_safetensors_and_torchscript_are_written_and_match_the_model(tmp_path: Path) -> None:
    net = _net()
    written, failed = export_all(net, torch.zeros(1, 1, 8, 8), tmp_path, ["safetensors", "torchscript"])
    assert failed == []
    assert written == [tmp_path / "student.safetensors", tmp_path / "student.torchscript.pt"]

    weights = load_file(str(tmp_path / "student.safetensors"))
    assert weights.keys() == net.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items())

    scripted = torch.jit.load(str(tmp_path / "student.torchscript.pt"))
    x = torch.randn(3, 1, 8, 8)  # another batch size than the example
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.safetensors", "student.torchscript.pt"]


def test_a_failing_format_is_reported_and_the_others_are_written(tmp_path: Path, monkeypatch) -> None:
    def no_trace(*_args, **_kwargs):
        raise RuntimeError("cannot trace this model\nsecond line")

    monkeypatch.setattr(torch.jit, "trace", no_trace)
    written, failed = export_all(_net(), torch.zeros(1, 1, 8, 8), tmp_path, ["torchscript", "safetensors", "tflite"])
    assert written == [tmp_path / "student.safetensors"]
    assert failed[0] == "torchscript: RuntimeError: cannot trace this model"
    assert failed[1].startswith("tflite: RegistryError: unknown export format 'tflite'")
    assert (tmp_path / "student.safetensors").is_file()
    assert not (tmp_path / "student.torchscript.pt").exists()


@pytest.mark.parametrize("formats", [[], ["safetensors"]])
def test_only_the_asked_formats_are_written(tmp_path: Path, formats: list[str]) -> None:
    written, failed = export_all(_net(), torch.zeros(1, 1, 8, 8), tmp_path, formats)
    assert [p.name for p in written] == [f"student.{f}" for f in formats] and failed == []
    assert len(list(tmp_path.iterdir())) == len(formats)


def test_onnx_export_has_a_dynamic_batch_and_matches_pytorch(tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    net = _net()
    written, failed = export_all(net, torch.randn(2, 1, 8, 8), tmp_path, ["onnx"])
    assert failed == [] and written == [tmp_path / "student.onnx"]
    session = onnxruntime.InferenceSession(str(written[0]), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 1, 8, 8)
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(got, net(x), rtol=1e-4, atol=1e-5)


def test_onnx_export_of_a_dense_prediction_student_matches_within_tolerance(tmp_path: Path) -> None:
    """A segmentation-style student ((B, C, H, W) logits per pixel) exports and matches PyTorch within 1e-4."""
    onnxruntime = pytest.importorskip("onnxruntime")
    from kdforge.app.export import ONNX_TOLERANCE

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 5, 1),
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
    ).eval()
    written, failed = export_all(net, torch.randn(2, 3, 16, 16), tmp_path, ["onnx"])
    assert failed == []
    session = onnxruntime.InferenceSession(str(written[0]), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 16, 16)
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        want = net(x)
    assert got.shape == (3, 5, 32, 32) and (got - want).abs().max() <= ONNX_TOLERANCE


def test_an_onnx_export_that_differs_from_pytorch_is_refused(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("onnxruntime")
    import onnxruntime

    real = onnxruntime.InferenceSession.run
    monkeypatch.setattr(onnxruntime.InferenceSession, "run", lambda self, *a: [real(self, *a)[0] + 1e-3])
    written, failed = export_all(_net(), torch.randn(2, 1, 8, 8), tmp_path, ["onnx"])
    assert written == [] and "differs from PyTorch" in failed[0]
    assert not (tmp_path / "student.onnx").exists()  # the atomic write left nothing behind
