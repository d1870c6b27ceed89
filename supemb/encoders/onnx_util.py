"""Export a module to one self-contained .onnx file with a dynamic batch axis, and check it.

`export_onnx` writes the file; `parity` compares ONNX Runtime with PyTorch on
the same inputs (the one check every export and test uses); `HalfPrecision`
wraps a module for a float16 graph.

torch 2.13's `torch.onnx.export` defaults to the torch.export-based
("dynamo") exporter, which needs the `onnxscript` package; supemb does not
depend on it. So `exporter="auto"` uses the dynamo exporter when onnxscript is
installed and the TorchScript exporter (`dynamo=False`, still shipped, marked
deprecated) otherwise. Both give a single file (weights embedded; the dynamo
exporter is told `external_data=False`) whose batch axis is symbolic, and
both match PyTorch within 1e-4 on every supemb encoder.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import warnings
from collections.abc import Callable
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


def parity(module: nn.Module, onnx: str | Path | Callable[[np.ndarray], np.ndarray], x: np.ndarray | Tensor,
           tol: float = math.inf, head: tuple[np.ndarray | list[float], float] | None = None) -> dict[str, float]:
    """Max |ONNX Runtime - PyTorch| at batch 1 and at batch len(x): {"batch_1": d, "batch_N": d}.

    module: run in eval mode (its mode is restored), on the CPU, in float32 out.
    onnx: the .onnx file (run with ONNX Runtime on the CPU), or a function that runs
        the exported graph on a float32 batch (e.g. a bundle encoder's `embed_arrays`).
    x: example inputs `[N, ...]`. A shape mismatch counts as an infinite difference.
    head: (weight [D], tolerance) of a linear head a value is served through (a bundle's
        knn.residual): adds "head", the max |w . e(ONNX) - w . e(PyTorch)| at batch N (its bias
        cancels), from the same two forward passes; see `head_parity`.
    Raises UserError when a difference is above `tol`: the graph does not reproduce the module.
    """
    if not callable(onnx):
        import onnxruntime as ort  # only the check needs it, not the export

        session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        run = lambda batch: session.run(None, {name: batch})[0]  # noqa: E731
    else:
        run = onnx
    x = x.detach().cpu().numpy() if isinstance(x, Tensor) else x
    out: dict[str, float] = {}
    was_training = module.training
    module.eval()
    try:
        for n in sorted({1, len(x)}):
            batch = np.ascontiguousarray(x[:n], dtype=np.float32)
            with torch.no_grad():
                want = module(torch.from_numpy(batch)).float().numpy()
            got = run(batch)
            diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
            out[f"batch_{n}"] = diff
            if not diff <= tol:
                raise UserError(f"export parity check failed: max |ONNX Runtime - PyTorch| = {diff:.3g} at batch "
                                f"{n} (allowed {tol:g}); the ONNX graph does not reproduce the model")
            if head is not None and n == len(x):
                out["head"] = _head_difference(got, want, *head)
    finally:
        module.train(was_training)
    return out


def _head_difference(got: np.ndarray, want: np.ndarray, weight: np.ndarray | list[float], tol: float) -> float:
    w = np.asarray(weight, dtype=np.float64)
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    diff = float(np.abs(got @ w - want @ w).max()) if got.shape == want.shape == (len(got), len(w)) else math.inf
    if not diff <= tol:
        raise UserError(f"export parity check failed: the ONNX graph moves the linear head's values by up to "
                        f"{diff:.3g} (allowed {tol:g}); it does not reproduce what the model serves")
    return diff


def head_parity(module: nn.Module, run: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                weight: np.ndarray | list[float], tol: float = math.inf) -> float:
    """Max |w . e(ONNX) - w . e(PyTorch)| over the embeddings e of `x`, for a linear head's
    weight w [D] (its bias cancels): how far the graph moves a value served through that head
    (a bundle's knn.residual), in target units. A float16 graph's small embedding error is
    multiplied by the head's weights, which `parity` does not see. Raises UserError above `tol`.
    (`parity(..., head=(w, tol))` gives it from the passes that check the embeddings.)"""
    return parity(module, run, x, head=(weight, tol))["head"]


def parity_scale(module: nn.Module, x: np.ndarray, metric: str) -> float:
    """What a parity tolerance is relative to: 1 for unit-length ("cosine") embeddings; for
    raw "l2" ones the largest row norm of the module's embeddings of `x` (at least 1), so the
    tolerance is relative to the size of what is compared."""
    if metric == "cosine":
        return 1.0
    with torch.no_grad():
        emb = module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).float().numpy()
    return max(1.0, float(np.linalg.norm(emb, axis=1).max()))


class HalfPrecision(nn.Module):
    """float32 in -> float16 compute (a copy of the module) -> float32 out: a float16 graph
    whose inputs and outputs stay float32."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.m = copy.deepcopy(module).half().eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.m(x.half()).float()
