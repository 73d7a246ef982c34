"""Export a trained student: safetensors always; TorchScript and ONNX where the model allows."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from kdforge.errors import KDForgeError


def _atomic(path: Path, write: Callable[[str], None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def export_student(net: nn.Module, path: Path) -> Path:
    """The student's weights as safetensors (shared tensors handled), written atomically."""
    from safetensors.torch import save_model

    return _atomic(path, lambda tmp: save_model(net, tmp, metadata={"format": "pt", "producer": "kdforge"}))


def export_torchscript(net: nn.Module, example: torch.Tensor, path: Path) -> Path:
    net = net.eval()
    with torch.no_grad():
        traced = torch.jit.trace(net, example, check_trace=False)
    return _atomic(path, lambda tmp: traced.save(tmp))


def export_onnx(net: nn.Module, example: torch.Tensor, path: Path) -> Path:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise KDForgeError("ONNX export needs the onnx extra: pip install 'kdforge[onnx]'.") from exc
    net = net.eval()

    def write(tmp: str) -> None:
        torch.onnx.export(net, (example,), tmp, input_names=["input"], output_names=["output"], dynamo=True)

    return _atomic(path, write)


EXPORTERS: dict[str, Callable[[nn.Module, torch.Tensor, Path], Path]] = {
    "torchscript": export_torchscript,
    "onnx": export_onnx,
}
