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
  of those targets, times the manifest's knn.uncertainty_scale (calibrated on the
  run's validation split, `supemb.predict.calibration`; 1 if absent), as the
  uncertainty; for an input flagged unfamiliar at least the ± of knowing only the
  gallery's targets (`prior_halfwidth`). Where the run's validation chose it (the
  manifest's knn.residual, a linear head on the embedding: weight, bias), the
  neighbours' residuals (target minus the head's value for them) are averaged
  instead and the query's head value added (the head carries the global trend,
  the neighbours the rest: `supemb.train.selection.choose_residual`);
- EEG: every window of a recording is predicted and the recording gets the
  mean (class probabilities averaged); its uncertainty pools the windows' spreads
  and their disagreement (law of total variance), and its neighbours are the
  gallery recordings most similar to any of its windows.
The arithmetic is `supemb.predict.neighbours` (`predict_inputs`), as in training.

A `Bundle` is safe to use from several threads at once: ONNX Runtime's `run` and
the index's `search` are thread-safe and predict keeps no state.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from supemb import modalities
from supemb.embed.batches import Failure
from supemb.embed.onnx import Device, Encoder
from supemb.errors import UserError
from supemb.predict import manifest as mf
from supemb.predict import neighbours
from supemb.predict.calibration import prior_halfwidth
from supemb.predict.familiarity import Familiarity, query_statistic
from supemb.predict.neighbours import recording_embeddings, rows_by_owner


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
    """One input's prediction. Regression: `value`; classification: `label` and `probabilities`.
    `uncertainty`: the neighbours' weighted spread (of their residuals where the manifest has
    knn.residual) scaled on validation so about 68 % of errors fall inside it (values, in target
    units, at least `prior_halfwidth` if `unfamiliar`; `supemb.predict.calibration`) or 1 - top
    probability (classes). `error` is set, and the rest empty, for an input that could not be read.
    `embedding` (only with `Bundle.predict(..., embeddings=True)`): the input's embedding [D] in
    the bundle's metric, the row `Bundle.embed` gives (EEG: `recording_embeddings` of the
    windows); float32 values as a plain list, so `to_dict()` stays JSON-able. `familiarity`: the
    percentile (0..1) of the input's nearest-neighbour similarity (EEG: the median over its
    windows) within the gallery's own leave-one-out distribution, and `unfamiliar`: it is below
    the manifest's threshold, the input is unlike the gallery (`supemb.predict.familiarity`);
    both None for a bundle whose manifest has no familiarity table. `face` (a bundle whose
    preprocessing finds faces): the face it predicted from, {"box": [x0, y0, x1, y1] in the
    photo's pixels, "score": the detector's confidence}."""

    source: str
    value: float | None = None
    label: str | None = None
    probabilities: dict[str, float] | None = None
    uncertainty: float | None = None
    neighbours: list[Neighbour] = field(default_factory=list)
    windows: int | None = None  # EEG: windows the recording gave
    error: str | None = None
    embedding: list[float] | None = None
    familiarity: float | None = None
    unfamiliar: bool | None = None
    face: dict[str, Any] | None = None

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
    if isinstance(inputs, (bytes, bytearray, memoryview)):
        raise UserError(f"inputs must be a path, an image, a recording, or a list of them, not "
                        f"{type(inputs).__name__} (pass the file's path, or open it with PIL first)")
    if isinstance(inputs, np.ndarray):
        if inputs.ndim < 2:
            raise UserError(f"an array input must be one image or recording (2-D or 3-D) or a batch of them "
                            f"(one more dimension), not shape {list(inputs.shape)}")
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


class Bundle:
    """A loaded bundle (see `supemb.predict.manifest` for the files). `digest`: the sha256 of
    its canonical manifest (`manifest.manifest_digest`), which pins every file; with
    digest= given, a bundle whose digest differs is refused before anything else is read."""

    def __init__(self, path: str | Path, device: Device = "auto", digest: str | None = None) -> None:
        if digest is not None:
            mf.parse_digest(digest)  # a malformed pin is refused before the bundle is opened
        root = mf.open_bundle_dir(path)
        self.source, self.root = Path(path), root
        # a zip's private extracted copy goes with the bundle (or at exit), at once if the bundle is refused
        self._cleanup = cleanup = (weakref.finalize(self, mf.remove_extracted, root, os.getpid())
                                   if root != self.source else None)
        try:
            self._open(root, device, digest)
        except BaseException:
            if cleanup is not None:
                cleanup()
            raise

    def _open(self, root: Path, device: Device, digest: str | None) -> None:
        from supemb.index.gallery import GalleryIndex

        m = mf.as_named(mf.read_manifest, root, self.source)
        self.digest: str = mf.manifest_digest(m) if digest is None else mf.check_digest(self.source, m, digest)
        mf.as_named(mf.verify_files, root, self.source, m)
        self.manifest = m
        self.task, self.modality = str(m["task"]), str(m["modality"])
        self.embedding_dim = int(m["embedding_dim"])
        self.labels: list[str] = list(m.get("labels") or [])
        target = m.get("target") or {}
        self.target_name: str = target.get("name", "target")
        self.unit: str = target.get("unit", "")
        self.metric: str = m.get("metric", "cosine")  # checked by read_manifest
        self.knn: dict[str, Any] = dict(m["knn"])
        self.default_k = int(self.knn.get("k", 10))
        # a value's ± : the kNN spread times the scale calibrated on validation (1: bundles written before)
        scale = self.knn.get("uncertainty_scale") if self.task == "regression" else None
        self.uncertainty_scale = 1.0 if scale is None else float(scale)
        self.familiarity = Familiarity.from_manifest(m.get("familiarity"), f"{root / mf.MANIFEST}")
        self.name: str = m.get("name") or self.source.name

        # The modality plug-in and the recorded preprocessing steps (supemb.modalities, supemb.preprocess.steps).
        self.plugin, self.pipeline = modalities.from_record(
            {"modality": self.modality, **m["preprocessing"]}, f"{root / mf.MANIFEST}")
        self.spec = self.plugin.spec(self.pipeline)
        self.encoder = Encoder(root / "encoder.onnx", self.plugin, self.pipeline, device)
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
        self.residual = self.knn.get("residual")  # {"weight" [D], "bias"} or None (checked by read_manifest)
        self._head_weight: np.ndarray | None = None
        if self.residual is not None:  # the gallery's residuals, from the vectors its index holds
            from supemb.predict.familiarity import index_vectors

            self._head_weight = np.asarray(self.residual["weight"], dtype=np.float64)
            vecs = self.index.vectors()  # flat/HNSW on the CPU: no second read of the file
            vecs = index_vectors(root / "index.faiss") if vecs is None else vecs
            head_g = vecs.astype(np.float64) @ self._head_weight
            self._residuals = self.targets.astype(np.float64) - (head_g + float(self.residual["bias"]))
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
    def detects_faces(self) -> bool:
        """Whether the preprocessing crops each photo to its face (a face step)."""
        return self.pipeline.has("face")

    @property
    def is_demo(self) -> bool:
        """A demonstration bundle trained on synthetic data (the defaults shipped with supemb)."""
        return bool(self.manifest.get("synthetic", False))

    # ---------------------------------------------------------------- embed

    def embed_arrays(self, x: np.ndarray) -> np.ndarray:
        """Already-preprocessed inputs `[N, ...]` (float32) -> embeddings `[N, D]`."""
        return self.encoder.embed_arrays(x)

    def embed(self, inputs: Any, batch_size: int = 64, progress: bool | None = None,
              detect: bool = True) -> np.ndarray:
        """Inputs (paths, PIL images, uint8 arrays; or EEG recordings) -> float32 `[N, D]`
        in the bundle's metric: unit-length rows (cosine) or raw encoder outputs (l2).
        An EEG recording's row is `recording_embeddings` of its windows'; a bundle that finds
        faces embeds each photo's largest face (detect=False: the photos are face crops)."""
        items, _ = _as_list(inputs)
        emb, owner, _ = self.encoder.embed_rows(items, batch_size, progress, "raise", decode=self.decoder_for(detect))
        return self._input_embeddings(emb, owner, len(items))

    def decoder_for(self, detect: bool) -> Any:
        """None (the pipeline's own decoder), or with detect=False one without its face step."""
        return None if detect or not self.detects_faces else self.plugin.decoder(self.pipeline.without("face"))

    def _input_embeddings(self, emb: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
        """Row embeddings [R, D] -> one per input [n, D]: its row, or a grouped input's rows pooled
        (`recording_embeddings`); an input without rows (it failed) gets zeros."""
        if self.plugin.grouped:
            return recording_embeddings(emb, owner, n, self.metric)
        out = np.zeros((n, emb.shape[1]), np.float32)
        out[owner] = emb
        return out

    # -------------------------------------------------------------- predict

    def predict(self, inputs: Any, k: int | None = None, *, batch_size: int = 64,
                on_error: Literal["raise", "skip"] = "raise", reduce: str | None = None,
                progress: bool | None = None, embeddings: bool = False, detect: bool = True,
                faces: Literal["largest", "all"] = "largest") -> list[Prediction]:
        """One `Prediction` per input, in order (a single input gives a list of one).

        k: neighbours (default: the bundle's). reduce: "mean" (default) or
        "median" of the neighbours' targets (regression). on_error="skip":
        an input that cannot be read gets a Prediction with `error` set
        instead of stopping the others. embeddings=True also fills each
        prediction's `embedding` (from the same encoder pass).
        A bundle whose preprocessing finds faces (`detects_faces`) predicts from
        each photo's largest face and says which (`Prediction.face`);
        detect=False skips the detection (photos that are already face crops);
        faces="all" gives one prediction per face found, photo by photo.
        """
        items, _ = _as_list(inputs)
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
            raise UserError(f"k must be a whole number >= 1, got {k!r}")
        k = self.default_k if k is None else int(k)
        if faces not in ("largest", "all"):
            raise UserError(f"faces must be 'largest' or 'all', got {faces!r}")
        if faces == "all" and detect and self.detects_faces:
            from supemb.predict.each_face import predict_each_face

            return predict_each_face(self, items, on_error, k=k, batch_size=batch_size, reduce=reduce,
                                     progress=progress, embeddings=embeddings)
        decode = self.decoder_for(detect)
        meta: dict[int, dict[str, Any]] = {}
        emb, owner, failures = self.encoder.embed_rows(items, batch_size, progress, on_error, decode=decode,
                                                       meta=meta)
        preds = self.predict_embeddings(emb, owner, items, k=k, reduce=reduce, failures=failures)
        for pos, facts in meta.items():
            preds[pos].face = facts.get("face")
        if embeddings:  # per input as `embed` gives it: an image's one row, a recording's pooled windows
            per_input = self._input_embeddings(emb, owner, len(items))
            for p, vector in zip(preds, per_input):
                if p.ok:
                    p.embedding = vector.tolist()
        return preds

    def predict_embeddings(self, emb: np.ndarray, owner: np.ndarray, items: Sequence[Any], k: int,
                           reduce: str | None = None, failures: Sequence[Failure] = ()) -> list[Prediction]:
        """Predictions from row embeddings `emb` [R, D] whose input positions are `owner` [R]."""
        from supemb.embed.batches import describe

        k = min(k, self.index.ntotal)
        out: list[Prediction | None] = [None] * len(items)
        for f in failures:
            out[f.position] = Prediction(source=f.source, error=f.message)
        if len(emb):
            sim, idx = self.index.search(emb, k)
            sim = sim.astype(np.float64)
            t = self.knn.get("temperature")
            residual = self._head_weight is not None
            per_input = neighbours.predict_inputs(
                sim, (self._residuals if residual else self.targets)[idx], owner, len(items), self.task,
                n_classes=len(self.labels), temperature=None if t is None else float(t),
                weighting=self.knn.get("weighting", "softmax"), reduce=reduce or self.knn.get("reduce", "mean"),
                offset=emb.astype(np.float64) @ self._head_weight + float(self.residual["bias"]) if residual else 0.0)
            fam, floor = None, 0.0  # (familiarity [n], unfamiliar [n]) from each input's nearest neighbour
            if self.familiarity is not None:
                fam = self.familiarity.score(query_statistic(sim[:, 0], owner, len(items)))
                floor = prior_halfwidth(self.targets) if per_input.values is not None and fam[1].any() else 0.0
            for pos, rows in rows_by_owner(owner):
                p = Prediction(source=describe(items[pos], int(pos)),
                               uncertainty=float(per_input.uncertainty[pos]) * self.uncertainty_scale)
                if per_input.values is not None:
                    p.value = float(per_input.values[pos])
                else:
                    pr = per_input.probabilities[pos]
                    p.label = self.labels[int(pr.argmax())]
                    p.probabilities = dict(zip(self.labels, pr.tolist()))
                p.neighbours = self._neighbours(idx[rows], sim[rows], k)
                if self.plugin.grouped:
                    p.windows = len(rows)
                if fam is not None:
                    p.familiarity, p.unfamiliar = float(fam[0][pos]), bool(fam[1][pos])
                    if p.unfamiliar and p.value is not None:  # the ± is calibrated for the gallery's like only
                        p.uncertainty = max(p.uncertainty, floor)
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


def load_bundle(path: str | Path, device: Device = "auto", digest: str | None = None) -> Bundle:
    """Load and verify a bundle directory (or .zip). device: "auto" (CUDA when
    ONNX Runtime / FAISS have it, else CPU), "cpu", or "cuda" (an error if absent).
    `bundle.device` says where the encoder runs. digest: the sha256 the bundle must
    have (`bundle.digest`, printed by `supemb predict`/`eval`); another is a UserError."""
    return Bundle(path, device=device, digest=digest)
