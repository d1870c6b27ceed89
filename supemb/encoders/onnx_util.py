"""Export a module to one self-contained .onnx file with a dynamic batch axis.

torch 2.13's `torch.onnx.export` defaults to the torch.export-based
("dynamo") exporter, which needs the `onnxscript` package; supemb does not
depend on it. So `exporter="auto"` uses the dynamo exporter when onnxscript is
installed and the TorchScript exporter (`dynamo=False`, still shipped, marked
deprecated) otherwise. Both give a single file (weights embedded; the dynamo
exporter is told `external_data=False`) whose batch axis is symbolic, and
both match PyTorch within 1e-4 on every supemb encoder.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from supemb.errors import UserError

Exporter = Literal["auto", "dynamo", "torchscript"]
DEFAULT_OPSET = 18
# What the TorchScript exporter says about itself on every call; we chose it
# knowingly (see the module docstring), so the notice is noise to our users.
_TORCHSCRIPT_NOTICES = (
    r".*legacy TorchScript-based ONNX export.*",
    r".*The feature will be removed.*",
)


def resolve_exporter(exporter: Exporter = "auto") -> Literal["dynamo", "torchscript"]:
    """Which exporter `export_onnx` will use."""
    if exporter == "auto":
        return "dynamo" if importlib.util.find_spec("onnxscript") is not None else "torchscript"
    if exporter == "dynamo" and importlib.util.find_spec("onnxscript") is None:
        raise UserError("ONNX export: the dynamo exporter needs onnxscript: pip install onnxscript")
    if exporter not in ("dynamo", "torchscript"):
        raise UserError(f"ONNX export: exporter must be auto, dynamo or torchscript, got {exporter!r}")
    return exporter


def export_onnx(
    module: nn.Module,
    example_input: Tensor,
    path: str | Path,
    dynamic_batch: bool = True,
    *,
    input_name: str = "input",
    output_name: str = "output",
    opset: int = DEFAULT_OPSET,
    exporter: Exporter = "auto",
) -> Path:
    """Export `module` (in eval mode) to the single file `path`.

    example_input: one input batch, e.g. `[B, 3, H, W]`; its non-batch shape
        is fixed in the graph. With `dynamic_batch`, axis 0 of the input and
        the output is named "batch" and any batch size runs.
    Returns the path. The module's train/eval mode is restored afterwards.
    The graph is checked with `onnx.checker` before returning.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    which = resolve_exporter(exporter)
    x = example_input.detach()
    if dynamic_batch and x.shape[0] == 1:
        # torch.export specialises size-1 dims to constants; trace at batch 2.
        x = torch.cat([x, x])
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            if which == "dynamo":
                _export_dynamo(module, x, path, dynamic_batch, input_name, output_name, opset)
            else:
                _export_torchscript(module, x, path, dynamic_batch, input_name, output_name, opset)
    finally:
        module.train(was_training)
    onnx.checker.check_model(str(path), full_check=True)
    return path


def _export_torchscript(
    module: nn.Module, x: Tensor, path: Path, dynamic_batch: bool,
    input_name: str, output_name: str, opset: int,
) -> None:
    axes = {input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        for notice in _TORCHSCRIPT_NOTICES:
            warnings.filterwarnings("ignore", message=notice, category=DeprecationWarning)
        torch.onnx.export(
            module, (x,), str(path), dynamo=False, input_names=[input_name],
            output_names=[output_name], dynamic_axes=axes, opset_version=opset,
            do_constant_folding=True,
        )


def _export_dynamo(
    module: nn.Module, x: Tensor, path: Path, dynamic_batch: bool,
    input_name: str, output_name: str, opset: int,
) -> None:
    shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    program = torch.onnx.export(
        module, (x,), dynamo=True, input_names=[input_name], output_names=[output_name],
        dynamic_shapes=shapes, opset_version=opset, optimize=True, verbose=False,
    )
    # One file: weights inside the .onnx (all our encoders are far below 2 GB).
    program.save(str(path), external_data=False)


def onnx_max_abs_diff(module: nn.Module, path: str | Path, x: Tensor) -> float:
    """Largest |PyTorch(eval) - ONNX Runtime| over the outputs for input `x`."""
    import onnxruntime as ort  # only the check needs it, not the export

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    (got,) = session.run(None, {name: x.detach().cpu().numpy().astype(np.float32)})
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            want = module(x).cpu().numpy()
    finally:
        module.train(was_training)
    if got.shape != want.shape:
        return float("inf")
    return float(np.abs(got - want).max())
