"""The encoder at serving time: an ONNX model in ONNX Runtime, fed by its modality's decoder.

    enc = Encoder(root / "encoder.onnx", modality, pipeline, device="auto")
    emb, owner, failures = enc.embed_rows(["a.jpg", "b.jpg"])   # rows [R, D], input of each row

Inputs are decoded on a thread pool ahead of inference (`supemb.embed.batches`)
through the recorded preprocessing (`supemb.preprocess.steps`). Used by a
`Bundle` and by export, which embeds the gallery with the exported model itself.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from supemb.embed.batches import Failure, decoded_batches
from supemb.errors import UserError
from supemb.modalities.base import Modality
from supemb.preprocess.steps import Pipeline

Device = Literal["auto", "cpu", "cuda"]
_PROGRESS_MIN = 200  # inputs: with progress=None, a bar from this many on, on a terminal


def _providers(device: str, device_id: int | None = None) -> list[Any]:
    """ONNX Runtime's provider list for `device`; `device_id` picks the GPU (CUDA's "device_id" option)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device not in ("auto", "cuda"):
        raise UserError(f"device must be auto, cpu or cuda, got {device!r}")
    if "CUDAExecutionProvider" in available:
        if device_id is None:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
    if device == "cuda":
        raise UserError("device='cuda': this ONNX Runtime has no CUDA provider "
                        "(pip install 'supemb[gpu]' for onnxruntime-gpu), use device='cpu'")
    return ["CPUExecutionProvider"]


class Encoder:
    """An ONNX encoder in ONNX Runtime with the decoding of its inputs:
    inputs -> embeddings (unit length for a cosine bundle, raw for l2). Used
    by `Bundle` and by export (which embeds the gallery with the exported
    model itself). `device_id` picks the GPU for "cuda"/"auto" (default: CUDA's
    own, GPU 0); `threads` > 0 caps ONNX Runtime's intra-op threads (default:
    one per core), for several encoders in several processes on one machine."""

    def __init__(self, onnx_path: Path, modality: Modality, pipeline: Pipeline, device: Device = "auto",
                 device_id: int | None = None, threads: int = 0) -> None:
        import onnxruntime as ort

        self.onnx_path = Path(onnx_path)
        self.modality, self.pipeline = modality, pipeline
        self.decode = modality.decoder(pipeline)
        want_input = modality.input_shape(pipeline)
        providers = _providers(device, device_id)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads > 0:
            options.intra_op_num_threads = threads
        # Idle worker threads sleep instead of spinning: the decode threads that
        # feed the next batch, and anything else on the machine, need those cores.
        # (On 2 shared cores, ONNX Runtime at batch 1 ran 2-3x faster without spinning.)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types for a bad model
            raise UserError(f"{onnx_path}: ONNX Runtime cannot load it ({' '.join(str(err).split())[:300]})") from None
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        asked = providers[0] if isinstance(providers[0], str) else providers[0][0]  # a name, or (name, options)
        if asked == "CUDAExecutionProvider" and self.device != "cuda":
            warnings.warn(f"{onnx_path}: ONNX Runtime could not start its CUDA provider and fell back to CPU "
                          "(check the CUDA/cuDNN libraries); predictions run on CPU", RuntimeWarning, stacklevel=3)
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        if len(inp.shape) != len(want_input) + 1 or any(
                isinstance(a, int) and a != b for a, b in zip(inp.shape[1:], want_input)):
            raise UserError(f"{onnx_path}: takes input {inp.shape}, but the preprocessing gives "
                            f"[batch, {', '.join(map(str, want_input))}]; the bundle's files do not belong together")
        last = out.shape[-1] if out.shape else None
        self.output_dim: int | None = last if isinstance(last, int) else None

    def embed_arrays(self, x: np.ndarray) -> np.ndarray:
        """Already-preprocessed inputs `[N, ...]` -> float32 embeddings `[N, D]`."""
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        (emb,) = self.session.run(None, {self.input_name: x})
        return np.asarray(emb, dtype=np.float32)

    def embed_rows(self, items: Sequence[Any], batch_size: int = 64, progress: bool | None = None,
                   on_error: str = "raise", *, decode: Any = None,
                   meta: dict[int, dict[str, Any]] | None = None) -> tuple[np.ndarray, np.ndarray, list[Failure]]:
        """(row embeddings [R, D], owner [R] input position of each row, failures).
        An input gives the rows its modality's decoder gives (an image one, an EEG recording one per window).
        decode: another decoder than the pipeline's (e.g. without its face step); meta: filled with
        input position -> what the decoder said about it (a face's box and score)."""
        if on_error not in ("raise", "skip"):
            raise UserError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        bar = None
        if progress or (progress is None and len(items) >= _PROGRESS_MIN and sys.stderr.isatty()):
            from tqdm import tqdm

            bar = tqdm(total=len(items), desc=f"embedding ({self.device})", unit="input", leave=False)
        embs, owners, failures = [], [], []
        done = 0
        try:
            for batch in decoded_batches(items, decode or self.decode, batch_size):
                if batch.failures and on_error == "raise":
                    raise UserError(batch.failures[0].message)
                failures.extend(batch.failures)
                if meta is not None:
                    meta.update(batch.meta)
                for start in range(0, len(batch.x), batch_size):  # EEG: a batch of recordings, many windows
                    embs.append(self.embed_arrays(batch.x[start:start + batch_size]))
                owners.append(batch.owner)
                if bar is not None:
                    bar.update(batch.done - done)
                done = batch.done
        finally:
            if bar is not None:
                bar.close()
        width = embs[0].shape[1] if embs else (self.output_dim or 0)
        emb = np.concatenate(embs) if embs else np.zeros((0, width), np.float32)
        owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
        return emb, owner, failures
