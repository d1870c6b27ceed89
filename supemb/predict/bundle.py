"""Load a bundle and predict from it: ONNX Runtime for the encoder, FAISS for the gallery.

    bundle = supemb.load_bundle("bundles/age")            # device="auto"
    bundle.embed(["a.jpg", "b.jpg"])                        # float32 [2, D]
    p = bundle.predict("a.jpg")[0]                          # Prediction
    p.value, p.uncertainty, p.neighbours[0]

The manifest's "metric" is the geometry the encoder's training loss shaped,
and everything here uses it: "cosine" (encoder.onnx outputs unit-length
embeddings; similarity s = their dot product) or "l2" (the raw encoder output;
s = -Euclidean distance, larger = more similar). A manifest without a metric
(older bundles) means cosine.

Prediction from neighbours (the k most similar gallery items, weights
w_j ∝ exp(s_j / t), t the manifest's kNN temperature, in s's units):
- classes: the similarity-weighted vote gives class probabilities (t = 0.07
  unless the manifest says otherwise); the uncertainty is 1 - the top
  probability;
- values: the weighted mean (or median) of the neighbours' targets (t = 0.1
  unless the manifest says otherwise), with the weighted standard deviation
  of those targets as the uncertainty;
- EEG: every window of a recording is predicted and the recording gets the
  mean (class probabilities averaged); its uncertainty pools the windows'
  spreads and their disagreement (law of total variance), and its neighbours
  are the gallery recordings most similar to any of its windows.
The arithmetic is `supemb.train.metrics.neighbour_vote` / `neighbour_regress`,
the same functions the trainer evaluates with.

A `Bundle` is safe to use from several threads at once: ONNX Runtime's
`run` and the index's `search` are thread-safe and predict keeps no state.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from supemb.errors import UserError
from supemb.predict import manifest as mf
from supemb.embed.batches import Failure, decoded_batches, eeg_decoder, image_decoder

Device = Literal["auto", "cpu", "cuda"]
_PROGRESS_MIN = 200  # inputs: with progress=None, a bar from this many on, on a terminal


@dataclass(frozen=True)
class Neighbour:
    """A gallery item behind a prediction: its position in the gallery, label
    (target value or class name), similarity to the query in the bundle's
    metric (cosine similarity, or -Euclidean distance for "l2"), and id
    (file name, or the recording for EEG)."""

    index: int
    label: float | str
    similarity: float
    id: str | None = None


@dataclass
class Prediction:
    """One input's prediction. Regression: `value`; classification: `label`
    and `probabilities`. `uncertainty`: the neighbours' weighted spread (values,
    in target units) or 1 - top probability (classes). `error` is set, and the
    rest empty, for an input that could not be read (on_error="skip").
    `embedding` (only with `Bundle.predict(..., embeddings=True)`): the
    input's embedding [D] in the bundle's metric, the row `Bundle.embed`
    gives (EEG: `recording_embeddings` of the windows); float32 values as a
    plain list, so `to_dict()` stays JSON-able."""

    source: str
    value: float | None = None
    label: str | None = None
    probabilities: dict[str, float] | None = None
    uncertainty: float | None = None
    neighbours: list[Neighbour] = field(default_factory=list)
    windows: int | None = None  # EEG: windows the recording gave
    error: str | None = None
    embedding: list[float] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: v for k, v in d.items() if v is not None}


def _as_list(inputs: Any) -> tuple[list[Any], bool]:
    """(items, was_a_single_input)."""
    if isinstance(inputs, (str, Path)) or hasattr(inputs, "get_data"):
        return [inputs], True
    if isinstance(inputs, np.ndarray):
        return ([inputs], True) if inputs.ndim in (2, 3) else (list(inputs), False)
    try:
        from PIL import Image

        if isinstance(inputs, Image.Image):
            return [inputs], True
    except ImportError:  # pragma: no cover - pillow is a dependency
        pass
    if isinstance(inputs, Sequence):
        return list(inputs), False
    raise UserError(f"inputs must be a path, an image, a recording, or a list of them, not {type(inputs).__name__}")


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device not in ("auto", "cuda"):
        raise UserError(f"device must be auto, cpu or cuda, got {device!r}")
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise UserError("device='cuda': this ONNX Runtime has no CUDA provider "
                        "(pip install 'supemb[gpu]' for onnxruntime-gpu), use device='cpu'")
    return ["CPUExecutionProvider"]


def spec_from_preprocessing(prep: dict[str, Any], modality: str) -> Any:
    """The preprocessing spec (image `PreprocessSpec` or `EEGSpec`) saved with a model."""
    fields = {k: v for k, v in prep.items() if k != "modality"}
    if modality == "image":
        from supemb.preprocess.image import PreprocessSpec

        return PreprocessSpec.from_dict(fields)
    from supemb.data.eeg import EEGSpec

    return EEGSpec.from_dict(fields)


class Encoder:
    """An ONNX encoder in ONNX Runtime with the decoding of its inputs:
    inputs -> embeddings (unit length for a cosine bundle, raw for l2). Used
    by `Bundle` and by export (which embeds the gallery with the exported
    model itself)."""

    def __init__(self, onnx_path: Path, modality: str, spec: Any, device: Device = "auto") -> None:
        import onnxruntime as ort

        self.modality, self.spec = modality, spec
        if modality == "image":
            self.decode = image_decoder(spec)
            want_input = [3, spec.image_size, spec.image_size]
        else:
            self.decode = eeg_decoder(spec)
            want_input = [spec.n_channels, spec.window_samples]
        providers = _providers(device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle worker threads sleep instead of spinning: the decode threads that
        # feed the next batch, and anything else on the machine, need those cores.
        # (On 2 shared cores, ONNX Runtime at batch 1 ran 2-3x faster without spinning.)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types for a bad model
            raise UserError(f"{onnx_path}: ONNX Runtime cannot load it ({' '.join(str(err).split())[:300]})") from None
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        if providers[0] == "CUDAExecutionProvider" and self.device != "cuda":
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
                   on_error: str = "raise") -> tuple[np.ndarray, np.ndarray, list[Failure]]:
        """(row embeddings [R, D], owner [R] input position of each row, failures).
        An image gives one row, an EEG recording one row per window."""
        if on_error not in ("raise", "skip"):
            raise UserError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        bar = None
        if progress or (progress is None and len(items) >= _PROGRESS_MIN and sys.stderr.isatty()):
            from tqdm import tqdm

            bar = tqdm(total=len(items), desc=f"embedding ({self.device})", unit="input", leave=False)
        embs, owners, failures = [], [], []
        done = 0
        try:
            for batch in decoded_batches(items, self.decode, batch_size):
                if batch.failures and on_error == "raise":
                    raise UserError(batch.failures[0].message)
                failures.extend(batch.failures)
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


class Bundle:
    """A loaded bundle (see `supemb.predict.manifest` for the files)."""

    def __init__(self, path: str | Path, device: Device = "auto") -> None:
        from supemb.index.gallery import GalleryIndex

        self.source = Path(path)
        root = mf.open_bundle_dir(path)
        self.root = root
        m = mf.read_manifest(root)
        mf.verify_files(root, m)
        self.manifest = m
        self.task: str = m["task"]
        self.modality: str = m["modality"]
        self.embedding_dim = int(m["embedding_dim"])
        self.labels: list[str] = list(m.get("labels") or [])
        target = m.get("target") or {}
        self.target_name: str = target.get("name", "target")
        self.unit: str = target.get("unit", "")
        self.metric: str = m.get("metric", "cosine")  # checked by read_manifest
        self.knn: dict[str, Any] = dict(m["knn"])
        self.default_k = int(self.knn.get("k", 10))
        self.name: str = m.get("name") or self.source.name

        self.spec = spec_from_preprocessing(m["preprocessing"], self.modality)

        self.encoder = Encoder(root / "encoder.onnx", self.modality, self.spec, device)
        self.device = self.encoder.device
        if self.encoder.output_dim is not None and self.encoder.output_dim != self.embedding_dim:
            raise UserError(f"{root / 'encoder.onnx'}: outputs {self.encoder.output_dim}-d embeddings but the "
                            f"manifest says {self.embedding_dim}; the bundle's files do not belong together")

        # --- gallery
        self.index = GalleryIndex.load(root / "index.faiss", params=m.get("index"), device=device,
                                       metric=self.metric)
        if self.index.dim != self.embedding_dim:
            raise UserError(f"{root / 'index.faiss'}: holds {self.index.dim}-d vectors but encoder.onnx outputs "
                            f"{self.embedding_dim}-d embeddings; the bundle's files do not belong together")
        self.targets = mf.load_npy(root / "targets.npy")
        if self.targets.ndim != 1 or len(self.targets) != self.index.ntotal:
            raise UserError(f"{root / 'targets.npy'}: has shape {list(self.targets.shape)} but the index holds "
                            f"{self.index.ntotal} items")
        if self.task == "classification":
            if self.targets.dtype.kind not in "iu" or self.targets.min() < 0 or self.targets.max() >= len(self.labels):
                raise UserError(f"{root / 'targets.npy'}: class ids must be integers in [0, {len(self.labels)})")
        gallery = _read_gallery_json(root / "gallery.json", len(self.targets))
        self.ids: list[str] = gallery["ids"]
        self.groups: np.ndarray | None = (
            np.asarray(gallery["groups"], dtype=np.int64) if gallery.get("groups") is not None else None)
        self.recordings: list[str] = list(gallery.get("recordings") or [])
        thumbs = root / "thumbnails.npy"
        self.thumbnails: np.ndarray | None = mf.load_npy(thumbs) if thumbs.is_file() else None
        if self.thumbnails is not None and len(self.thumbnails) != len(self.targets):
            raise UserError(f"{thumbs}: {len(self.thumbnails)} thumbnails for {len(self.targets)} gallery items")

    # ----------------------------------------------------------------- info

    def __repr__(self) -> str:
        what = f"{len(self.labels)} classes" if self.task == "classification" else f"{self.target_name}"
        return (f"Bundle({str(self.source)!r}, {self.modality} {self.task} of {what}, "
                f"{self.embedding_dim}-d {self.metric}, gallery {self.index.ntotal}, encoder on {self.device}, "
                f"index on {'gpu' if self.index.on_gpu else 'cpu'})")

    @property
    def is_demo(self) -> bool:
        """A demonstration bundle trained on synthetic data (the defaults shipped with supemb)."""
        return bool(self.manifest.get("synthetic", False))

    # ---------------------------------------------------------------- embed

    def embed_arrays(self, x: np.ndarray) -> np.ndarray:
        """Already-preprocessed inputs `[N, ...]` (float32) -> embeddings `[N, D]`."""
        return self.encoder.embed_arrays(x)

    def embed(self, inputs: Any, batch_size: int = 64, progress: bool | None = None) -> np.ndarray:
        """Inputs (paths, PIL images, uint8 arrays; or EEG recordings) -> float32 `[N, D]`
        in the bundle's metric: unit-length rows (cosine) or raw encoder outputs (l2).
        An EEG recording's row is `recording_embeddings` of its windows'."""
        items, _ = _as_list(inputs)
        emb, owner, _ = self.encoder.embed_rows(items, batch_size, progress, "raise")
        if self.modality == "image":
            return emb
        return recording_embeddings(emb, owner, len(items), self.metric)

    # -------------------------------------------------------------- predict

    def predict(self, inputs: Any, k: int | None = None, *, batch_size: int = 64,
                on_error: Literal["raise", "skip"] = "raise", reduce: str | None = None,
                progress: bool | None = None, embeddings: bool = False) -> list[Prediction]:
        """One `Prediction` per input, in order (a single input gives a list of one).

        k: neighbours (default: the bundle's). reduce: "mean" (default) or
        "median" of the neighbours' targets (regression). on_error="skip":
        an input that cannot be read gets a Prediction with `error` set
        instead of stopping the others. embeddings=True also fills each
        prediction's `embedding` (from the same encoder pass).
        """
        items, _ = _as_list(inputs)
        k = self.default_k if k is None else int(k)
        if k < 1:
            raise UserError(f"k must be >= 1, got {k}")
        emb, owner, failures = self.encoder.embed_rows(items, batch_size, progress, on_error)
        preds = self.predict_embeddings(emb, owner, items, k=k, reduce=reduce, failures=failures)
        if embeddings:  # per input as `embed` gives it: an image's one row, a recording's pooled windows
            if self.modality == "image":
                per_input = np.zeros((len(items), emb.shape[1]), np.float32)
                per_input[owner] = emb
            else:
                per_input = recording_embeddings(emb, owner, len(items), self.metric)
            for p, vector in zip(preds, per_input):
                if p.ok:
                    p.embedding = vector.tolist()
        return preds

    def predict_embeddings(self, emb: np.ndarray, owner: np.ndarray, items: Sequence[Any], k: int,
                           reduce: str | None = None, failures: Sequence[Failure] = ()) -> list[Prediction]:
        """Predictions from row embeddings `emb` [R, D] whose input positions are `owner` [R]."""
        from supemb.embed.batches import describe
        from supemb.train import metrics

        k = min(k, self.index.ntotal)
        out: list[Prediction | None] = [None] * len(items)
        for f in failures:
            out[f.position] = Prediction(source=f.source, error=f.message)
        if len(emb):
            sim, idx = self.index.search(emb, k)
            sim = sim.astype(np.float64)
            knn = self.knn
            # Per input, over its rows (an EEG recording's windows): the mean
            # prediction; for regression the uncertainty combines the mean
            # within-row spread and the spread of the rows' predictions.
            # Vectorised over all inputs; the loop below only builds objects.
            n_rows = np.bincount(owner, minlength=len(items)).astype(np.float64)
            per_input = np.maximum(n_rows, 1.0)
            if self.task == "regression":
                pred, spread = metrics.neighbour_regress(
                    sim, self.targets[idx], weighting=knn.get("weighting", "softmax"),
                    temperature=float(knn.get("temperature", 0.1)), reduce=reduce or knn.get("reduce", "mean"))
                value = np.bincount(owner, pred, minlength=len(items)) / per_input
                var = (np.bincount(owner, spread**2 + (pred - value[owner]) ** 2, minlength=len(items))
                       / per_input)
                uncertainty = np.sqrt(var)
            else:
                probs = metrics.neighbour_vote(sim, self.targets[idx], len(self.labels),
                                               float(knn.get("temperature", 0.07)))
                mean_probs = np.zeros((len(items), probs.shape[1]))
                np.add.at(mean_probs, owner, probs)
                mean_probs /= per_input[:, None]
                top_class = mean_probs.argmax(axis=1)
            for pos, rows in rows_by_owner(owner):
                p = Prediction(source=describe(items[pos], int(pos)))
                if self.task == "regression":
                    p.value, p.uncertainty = float(value[pos]), float(uncertainty[pos])
                else:
                    pr, top = mean_probs[pos], int(top_class[pos])
                    p.label, p.uncertainty = self.labels[top], float(1.0 - pr[top])
                    p.probabilities = dict(zip(self.labels, pr.tolist()))
                p.neighbours = self._neighbours(idx[rows], sim[rows], k)
                if self.modality == "eeg":
                    p.windows = len(rows)
                out[pos] = p
        return [p if p is not None else Prediction(source=describe(items[i], i), error="no prediction")
                for i, p in enumerate(out)]

    def _label_of(self, j: int) -> float | str:
        t = self.targets[j]
        return self.labels[int(t)] if self.task == "classification" else float(t)

    def _neighbours(self, idx: np.ndarray, sim: np.ndarray, k: int) -> list[Neighbour]:
        """Neighbours of one input from its rows' search results idx, sim [r, k]."""
        if self.groups is None:  # images: the first (only) row's neighbours
            return [Neighbour(j, self._label_of(j), s, self.ids[j] if self.ids else None)
                    for j, s in zip(idx[0].tolist(), sim[0].tolist())]
        # EEG: gallery windows -> their recordings, best similarity per recording
        flat_j, flat_s = idx.reshape(-1), sim.reshape(-1)
        order = np.argsort(-flat_s, kind="stable")
        seen: dict[int, Neighbour] = {}
        for o in order:
            j = int(flat_j[o])
            rec = int(self.groups[j])
            if rec not in seen:
                name = self.recordings[rec] if rec < len(self.recordings) else self.ids[j]
                seen[rec] = Neighbour(j, self._label_of(j), float(flat_s[o]), name)
                if len(seen) == k:
                    break
        return list(seen.values())


def recording_embeddings(emb: np.ndarray, owner: np.ndarray, n: int, metric: str) -> np.ndarray:
    """One embedding per input from its rows (an EEG recording's windows).

    emb: [R, D] row embeddings, owner: [R] input position (0 .. n-1) of each
    row. "cosine": the L2-normalised mean of the rows (a unit vector, like
    the rows); "l2": the plain mean of the rows' raw embeddings (the point
    closest, in squared Euclidean distance, to all of them). An input with
    no rows gets zeros. Returns float32 [n, D].
    """
    emb = np.asarray(emb, np.float32)
    owner = np.asarray(owner, np.int64)
    out = np.zeros((n, emb.shape[1]), np.float32)
    np.add.at(out, owner, emb)
    if metric == "cosine":  # the sum has the direction of the mean
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    counts = np.bincount(owner, minlength=n).astype(np.float32)
    return out / np.maximum(counts, 1.0)[:, None]


def rows_by_owner(owner: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """[(input position, its row indices)] in input order; O(R log R), not O(R x inputs)."""
    order = np.argsort(owner, kind="stable")
    positions, starts = np.unique(owner[order], return_index=True)
    return [(int(pos), rows) for pos, rows in zip(positions, np.split(order, starts[1:]))]


def _read_gallery_json(path: Path, n: int) -> dict[str, Any]:
    import json

    try:
        g = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    ids = g.get("ids") if isinstance(g, dict) else None
    if not isinstance(ids, list) or len(ids) != n:
        raise UserError(f"{path}: needs \"ids\", one per gallery item ({n})")
    groups = g.get("groups")
    if groups is not None and (not isinstance(groups, list) or len(groups) != n):
        raise UserError(f"{path}: \"groups\" must give one recording per gallery item ({n})")
    return g


def load_bundle(path: str | Path, device: Device = "auto") -> Bundle:
    """Load and verify a bundle directory (or .zip). device: "auto" (CUDA when
    ONNX Runtime / FAISS have it, else CPU), "cpu", or "cuda" (an error if absent).
    `bundle.device` says where the encoder runs."""
    return Bundle(path, device=device)
