"""Export a trained student: safetensors always; TorchScript and ONNX where the model allows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from kdforge.core import runfiles
from kdforge.core.atomic import atomic_write
from kdforge.core.errors import KDForgeError
from kdforge.core.registry import Registry

Exporter = Callable[[nn.Module, torch.Tensor, Path], Path]
EXPORTERS: Registry[Exporter] = Registry("export format")
FILE_NAMES = {"safetensors": runfiles.STUDENT, "torchscript": "student.torchscript.pt", "onnx": "student.onnx"}


@EXPORTERS.register("safetensors")
def export_student(net: nn.Module, _example: torch.Tensor | None, path: Path) -> Path:
    """The student's weights as safetensors (shared tensors handled)."""
    from safetensors.torch import save_model

    return atomic_write(path, lambda tmp: save_model(net, tmp, metadata={"format": "pt", "producer": "kdforge"}))


@EXPORTERS.register("torchscript")
def export_torchscript(net: nn.Module, example: torch.Tensor, path: Path) -> Path:
    with torch.no_grad():
        traced = torch.jit.trace(net.eval(), example, check_trace=False)
    return atomic_write(path, lambda tmp: traced.save(tmp))


@EXPORTERS.register("onnx")
def export_onnx(net: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """ONNX with a dynamic batch axis, checked against PyTorch with onnxruntime when it is installed."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise KDForgeError("ONNX export needs the onnx extra: pip install 'kdforge[onnx]'.") from exc
    net = net.eval()

    def write(tmp: str) -> None:
        torch.onnx.export(
            net,
            (example,),
            tmp,
            input_names=["input"],
            output_names=["output"],
            dynamo=True,
            verbose=False,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
        _check_onnx(net, example, tmp)

    return atomic_write(path, write)


ONNX_TOLERANCE = 1e-4  # largest absolute difference from PyTorch an export may show


def _check_onnx(net: nn.Module, example: torch.Tensor, onnx_path: str) -> None:
    """Refuse an export whose outputs differ from PyTorch's by more than `ONNX_TOLERANCE`, at the example's
    batch size and at another one (the batch axis is dynamic); skipped without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        return
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    for batch in (example, torch.cat([example, example[:1]])):
        got = torch.from_numpy(session.run(None, {"input": batch.numpy()})[0])
        with torch.no_grad():
            want = net(batch)
        if got.shape != want.shape or not torch.allclose(got, want, rtol=0.0, atol=ONNX_TOLERANCE):
            difference = (got - want).abs().max() if got.shape == want.shape else f"shape {tuple(got.shape)}"
            raise KDForgeError(f"the ONNX export differs from PyTorch (batch {len(batch)}): {difference}.")


def export_all(net: nn.Module, example: torch.Tensor, out: Path, formats: list[str]) -> tuple[list[Path], list[str]]:
    """Try every format; returns the written paths and, for formats the model does not export to, why."""
    written, failed = [], []
    for fmt in formats:
        try:
            written.append(EXPORTERS.get(fmt)(net, example, out / FILE_NAMES[fmt]))
        except Exception as exc:  # noqa: BLE001 - tracing/export errors vary by model; report and go on
            failed.append(f"{fmt}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return written, failed
