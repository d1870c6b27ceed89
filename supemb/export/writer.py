"""`supemb export` and `supemb index`: a training run -> a bundle; a bundle's gallery rebuilt.

export_run(run, out):
1. rebuild the run's encoder from model.json + model.safetensors and wrap it
   so it outputs the embedding in the geometry its loss shaped (the trainer's
   `Model.embed`): L2-normalised for model.json's metric "cosine" (and for
   runs older than the metric), the raw encoder output for "l2";
2. write it as one ONNX file with a dynamic batch axis (weights inside);
   `fp16=True` casts the weights to float16 inside the graph (inputs and
   outputs stay float32), for GPU serving;
3. embed the labelled gallery (by default the run's training set) with the
   exported ONNX model itself, through the same decoding and preprocessing
   serving uses, and index it with FAISS;
4. check parity, ONNX Runtime against PyTorch on the same real inputs at
   batch 1 and a larger batch: max |difference| <= 1e-4 (float32 graph) or
   <= 1e-2 (float16 graph: about 3 significant digits on unit vectors), and
   fail loudly otherwise; raw "l2" embeddings are not unit length, so there
   the tolerance is scaled by the largest embedding norm (when above 1);
5. write manifest.json with the checksums of every file, the metric
   ("cosine" or "l2") that the FAISS index, the kNN weights and the
   uncertainty all use, and the kNN temperature (model.json's
   knn_temperature, in that metric's similarity units; else 0.1 for
   regression, 0.07 for classification).

The bundle is assembled in a temporary directory beside `out` and moved into
place at the end, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from supemb import __version__
from supemb.errors import UserError
from supemb.predict import manifest as mf
from supemb.predict.bundle import Encoder, load_bundle, spec_from_preprocessing

PARITY_TOL = {"float32": 1e-4, "float16": 1e-2}
KNN_TEMPERATURE = {"regression": 0.1, "classification": 0.07}  # as the trainer's evaluation, when the run has none
METRICS = ("cosine", "l2")
# What the trainer's `Model.EMBEDDINGS` records in model.json per metric (kept here too, so a
# trainer from before the metric still reads runs that have one).
EMBEDDINGS = {"cosine": "l2-normalised encoder output", "l2": "encoder output"}


@dataclass
class Gallery:
    """Labelled inputs to index: paths (images or EEG recordings) and one target each."""

    items: list[Any]
    targets: list[Any]  # float (regression) or class name (classification)
    ids: list[str]
    source: str
    skipped: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ run -> torch


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: not found; is {path.parent} a finished supemb training run ({what})?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None


def run_metric(meta: dict[str, Any], where: Path | str = "model.json") -> str:
    """The served geometry of a run from its model.json: "cosine" or "l2".

    No "metric" (runs written before it was recorded) means cosine. The
    "embedding" string, when present, must be the one the trainer records
    for that metric; anything else is refused (an embedding this supemb
    cannot rebuild)."""
    metric = meta.get("metric", "cosine")
    if metric not in METRICS:
        raise UserError(f"{where}: metric {metric!r} is not one this supemb serves ({', '.join(METRICS)})")
    embedding = meta.get("embedding", EMBEDDINGS[metric])
    if embedding != EMBEDDINGS[metric]:
        raise UserError(f"{where}: the embedding is {embedding!r}, which this supemb cannot export "
                        f"for metric {metric!r} (it exports the {EMBEDDINGS[metric]})")
    return metric


def run_knn_temperature(meta: dict[str, Any], task: str, where: Path | str = "model.json") -> float:
    """model.json's knn_temperature (in its metric's similarity units), else the cosine defaults."""
    t = meta.get("knn_temperature")
    if t is None:
        return KNN_TEMPERATURE[task]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (float(t) > 0 and np.isfinite(float(t))):
        raise UserError(f"{where}: knn_temperature must be a positive number, got {t!r}")
    return float(t)


def load_run_model(run: Path):
    """(embedding module: inputs -> embeddings, model.json, preprocessing.json).

    The embedding is the trainer's `Model.embed` in model.json's metric: the
    L2-normalised encoder output for "cosine" (also runs without a metric),
    the raw encoder output for "l2". Only the encoder's weights are needed;
    heads stay behind."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from torch import nn

    from supemb.encoders.registry import build_encoder
    from supemb.train.trainer import Model

    meta = _read_json(run / "model.json", "model.json")
    prep = _read_json(run / "preprocessing.json", "preprocessing.json")
    metric = run_metric(meta, run / "model.json")
    weights_path = run / "model.safetensors"
    if not weights_path.is_file():
        raise UserError(f"{weights_path}: not found; has the run in {run} finished?")
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise UserError(f"{weights_path}: cannot read the weights ({err})") from None
    model = Model(build_encoder(meta["encoder"], **meta.get("encoder_kwargs", {})), nn.Identity())
    try:
        model.encoder.load_state_dict({k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")})
    except RuntimeError as err:
        raise UserError(f"{weights_path}: the weights do not fit encoder {meta['encoder']!r} "
                        f"({str(err).splitlines()[0]})") from None

    class Embed(nn.Module):
        """inputs -> the embedding: `Model.embedding_of` in the run's metric."""

        def __init__(self, m: Model, metric: str) -> None:
            super().__init__()
            self.m, self.metric = m, metric

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = self.m.encoder(x)
            if self.metric == "l2":
                return features  # the raw encoder output, what an L2-distance loss shaped
            return self.m.embedding_of(features)  # L2-normalised (the default metric of embedding_of)

    return Embed(model, metric).eval(), meta, prep


def _half_wrapper(module):
    """float32 in -> float16 compute -> float32 out."""
    import torch
    from torch import nn

    class Half(nn.Module):
        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.m = m.half()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m(x.half()).float()

    import copy

    return Half(copy.deepcopy(module)).eval()


# ------------------------------------------------------------------- galleries


def run_training_gallery(run: Path, meta: dict[str, Any]) -> Gallery:
    """The run's training split as a gallery (needs the training data where it was)."""
    from supemb.train.data import prepare_data
    from supemb.train.trainer import load_run_config

    cfg = load_run_config(run)
    data = Path(cfg.data)
    if not data.exists():
        raise UserError(f"{run}: its training data {data} is not there any more; "
                        "pass --gallery PATH to index another labelled set")
    prepared = prepare_data(cfg)
    split = prepared.splits["train"]
    if meta["modality"] == "image":
        items = list(split.names)
        targets = _decode_targets(split.targets, meta)
        ids = [_short_id(p, data) for p in items]
    else:  # EEG: one gallery input per recording; its windows come back from decoding
        groups = np.asarray(split.groups)
        first = {int(g): i for i, g in reversed(list(enumerate(groups)))}
        order = sorted(first)
        items = [split.names[g] for g in order]
        targets = [float(split.targets[first[g]]) for g in order]
        ids = [_short_id(p, data) for p in items]
    return Gallery(items, targets, ids, source=f"{data} (training split)")


def _decode_targets(targets: np.ndarray, meta: dict[str, Any]) -> list[Any]:
    if meta["task"] == "classification":
        classes = meta["classes"]
        return [classes[int(t)] for t in targets]
    return [float(t) for t in targets]


def _short_id(path: str | Path, root: Path) -> str:
    p = Path(path)
    base = root if root.is_dir() else root.parent
    try:
        return str(p.relative_to(base))
    except ValueError:
        return p.name


def data_gallery(path: str | Path, modality: str, task: str, target: str, fmt: str = "auto",
                 on_error: str = "raise") -> Gallery:
    """Every labelled item of a dataset (any layout `supemb train` reads), all splits."""
    data = Path(path)
    if not data.exists():
        raise UserError(f"{data}: no such file or folder (--data / --gallery)")
    if modality == "image":
        from supemb.data.image_layouts import load_image_table

        table = load_image_table(data, target, format=fmt, task=task, on_error=on_error)
        if table.task != task:
            raise UserError(f"{data}: target {target!r} is {table.task} data, but the bundle does {task}")
        records = list(table.records)
        targets = [r.target for r in records]
        if task == "regression":
            targets = [float(t) for t in targets]
        items = [str(r.path) for r in records]
        skipped = [str(s) for s in table.skipped]
    else:
        from supemb.data.eeg_files import list_recordings

        records = list_recordings(data, target)
        items = [str(r.path) for r in records]
        targets = [float(r.target) for r in records]
        skipped = []
    if not items:
        raise UserError(f"{data}: no labelled items found")
    return Gallery(items, targets, [_short_id(p, data) for p in items], source=str(data), skipped=skipped)


@dataclass
class IndexedGallery:
    emb: np.ndarray  # [R, D]
    targets: np.ndarray  # [R] float64 or int64 class ids
    gallery_json: dict[str, Any]
    thumbnails: np.ndarray | None
    labels: list[str]


def embed_gallery(encoder: Encoder, gallery: Gallery, task: str, labels: list[str],
                  thumbnail_size: int = 0, on_error: str = "raise") -> IndexedGallery:
    """Embed the gallery's inputs with the ONNX encoder; targets per row
    (an EEG recording's target repeated over its windows). New class names
    are appended to `labels`."""
    emb, owner, failures = encoder.embed_rows(gallery.items, on_error=on_error, progress=None)
    if len(emb) == 0:
        raise UserError(f"{gallery.source}: none of the gallery items could be read")
    labels = list(labels)
    if task == "classification":
        for t in gallery.targets:
            if str(t) not in labels:
                labels.append(str(t))
        per_item = np.array([labels.index(str(t)) for t in gallery.targets], dtype=np.int64)
    else:
        per_item = np.array(gallery.targets, dtype=np.float64)
    targets = per_item[owner]
    if encoder.modality == "eeg":
        used = np.unique(owner)
        remap = {int(o): r for r, o in enumerate(used)}
        gallery_json = {"ids": [gallery.ids[int(o)] for o in owner],
                        "groups": [remap[int(o)] for o in owner],
                        "recordings": [gallery.ids[int(o)] for o in used]}
    else:
        gallery_json = {"ids": [gallery.ids[int(o)] for o in owner]}
    thumbs = None
    if thumbnail_size and encoder.modality == "image":
        thumbs = make_thumbnails([gallery.items[int(o)] for o in owner], thumbnail_size)
    if failures:
        gallery_json["skipped"] = [f.message for f in failures]
    return IndexedGallery(emb, targets, gallery_json, thumbs, labels)


def make_thumbnails(items: list[Any], size: int) -> np.ndarray:
    """uint8 [N, size, size, 3] centre-cropped thumbnails."""
    from supemb.preprocess.image import PreprocessSpec, as_rgb_image, resize_crop

    spec = PreprocessSpec.square(size)
    out = np.empty((len(items), size, size, 3), np.uint8)
    for i, item in enumerate(items):
        out[i] = resize_crop(as_rgb_image(item), spec)
    return out


def write_gallery(root: Path, g: IndexedGallery, index_kind: str, index_opts: dict[str, Any] | None = None,
                  metric: str = "cosine"):
    """index.faiss (in `metric`), targets.npy, gallery.json (and thumbnails.npy) into `root`; returns the index."""
    from supemb.index.gallery import GalleryIndex

    index = GalleryIndex.build(g.emb, kind=index_kind, metric=metric, **(index_opts or {}))
    index.save(root / "index.faiss")
    mf.save_npy_atomic(root / "targets.npy", g.targets)
    mf.write_json_atomic(root / "gallery.json", g.gallery_json)
    thumbs = root / "thumbnails.npy"
    if g.thumbnails is not None:
        mf.save_npy_atomic(thumbs, g.thumbnails)
    elif thumbs.exists():
        thumbs.unlink()
    return index


# ---------------------------------------------------------------------- parity


def parity(module, encoder: Encoder, x: np.ndarray, tol: float) -> dict[str, float]:
    """Max |ONNX Runtime - PyTorch| at batch 1 and at batch len(x); raises UserError above `tol`."""
    import torch

    out: dict[str, float] = {}
    for n in sorted({1, len(x)}):
        batch = np.ascontiguousarray(x[:n], dtype=np.float32)
        with torch.no_grad():
            want = module(torch.from_numpy(batch)).float().numpy()
        got = encoder.embed_arrays(batch)
        diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
        out[f"batch_{n}"] = diff
        if not diff <= tol:
            raise UserError(f"export parity check failed: max |ONNX Runtime - PyTorch| = {diff:.3g} at batch {n} "
                            f"(allowed {tol:g}); the ONNX graph does not reproduce the model")
    return out


def _parity_scale(module, x: np.ndarray, metric: str) -> float:
    """1 for unit-length ("cosine") embeddings; for raw "l2" ones the largest
    row norm of the PyTorch embeddings of `x` (at least 1), so the parity
    tolerance is relative to the size of what is compared."""
    if metric == "cosine":
        return 1.0
    import torch

    with torch.no_grad():
        emb = module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).float().numpy()
    return max(1.0, float(np.linalg.norm(emb, axis=1).max()))


def _final_metrics(run: Path) -> dict[str, float]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return {}
    last: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("stage") == "final":
            last = rec
    return {k: v for k, v in last.items() if k.startswith("test_") and isinstance(v, (int, float))}


# ---------------------------------------------------------------------- export


def export_run(
    run: str | Path,
    out: str | Path,
    *,
    gallery: str | Path | None = None,
    opset: int | None = None,
    fp16: bool = False,
    index: str = "flat",
    k: int | None = None,
    unit: str = "",
    name: str | None = None,
    thumbnails: int = 0,
    synthetic: bool | None = None,
    force: bool = False,
    on_error: str = "raise",
) -> dict[str, Any]:
    """Write the bundle for training run `run` into `out` (a directory, or a
    path ending in .zip). Returns the manifest."""
    import torch

    from supemb.encoders.onnx_util import DEFAULT_OPSET, export_onnx, resolve_exporter

    run, out = Path(run), Path(out)
    if not run.is_dir():
        raise UserError(f"{run}: no such training run directory")
    zipped = out.suffix.lower() == ".zip"
    if out.exists() and (zipped or any(out.iterdir())) and not force:
        raise UserError(f"{out}: already exists; choose another --out or pass --force to replace it")
    module, meta, prep = load_run_model(run)
    modality, task = meta["modality"], meta["task"]
    metric = run_metric(meta, run / "model.json")
    knn_temperature = run_knn_temperature(meta, task, run / "model.json")
    spec = spec_from_preprocessing(prep, modality)
    src = data_gallery(gallery, modality, task, meta["target"], on_error=on_error) if gallery else \
        run_training_gallery(run, meta)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    mf.public_mode(tmp, directory=True)
    try:
        # example inputs: the first gallery items, decoded as serving decodes them
        from supemb.embed.batches import eeg_decoder, image_decoder

        decode_one = image_decoder(spec) if modality == "image" else eeg_decoder(spec)
        rows = []
        for item in src.items[:16]:
            rows.append(decode_one(item))
            if sum(len(r) for r in rows) >= 16:
                break
        examples = np.concatenate(rows)[:16]
        dtype = "float16" if fp16 else "float32"
        graph_module = _half_wrapper(module) if fp16 else module
        opset = opset or DEFAULT_OPSET
        export_onnx(graph_module, torch.from_numpy(examples[:2] if len(examples) > 1 else examples),
                    tmp / "encoder.onnx", input_name="input", output_name="embedding", opset=opset)
        encoder = Encoder(tmp / "encoder.onnx", modality, spec, device="cpu")
        tolerance = PARITY_TOL[dtype] * _parity_scale(module, examples, metric)
        diffs = parity(module, encoder, examples, tolerance)
        labels = list(meta.get("classes") or []) if task == "classification" else []
        indexed = embed_gallery(encoder, src, task, labels, thumbnails if modality == "image" else 0, on_error)
        idx = write_gallery(tmp, indexed, index, metric=metric)
        manifest = {
            "format": mf.FORMAT, "format_version": mf.FORMAT_VERSION,
            "name": name or out.stem, "created_with": f"supemb {__version__}",
            "task": task, "modality": modality, "synthetic": bool(synthetic) if synthetic is not None else False,
            "preprocessing": prep, "embedding_dim": int(encoder.output_dim or indexed.emb.shape[1]),
            "metric": metric,
            "target": {"name": meta.get("target", "target"), "unit": unit},
            "labels": indexed.labels if task == "classification" else None,
            "knn": {"k": int(k or meta.get("knn_k", 10)), "weighting": "softmax",
                    "temperature": knn_temperature, "reduce": "mean"},
            "index": idx.params(),
            "onnx": {"file": "encoder.onnx", "input": "input", "output": "embedding", "opset": opset,
                     "dtype": dtype, "exporter": resolve_exporter("auto"),
                     "input_shape": ["batch", *examples.shape[1:]],
                     "parity_max_abs_diff": diffs, "parity_tolerance": tolerance},
            "gallery": {"source": src.source, "items": int(len(indexed.targets)),
                        "inputs": len(src.items) - len(indexed.gallery_json.get("skipped", [])),
                        "thumbnails": int(thumbnails) if indexed.thumbnails is not None else 0},
            "training": {"run": run.name, "loss": meta.get("loss"), "encoder": meta.get("encoder"),
                         "embed_dim": meta.get("embed_dim"), "test_metrics": _final_metrics(run),
                         "data": meta.get("data")},
        }
        manifest = {k: v for k, v in manifest.items() if v is not None}
        manifest = mf.seal(tmp, manifest)
        load_bundle(tmp, device="cpu")  # what we wrote loads and verifies
        if zipped:
            mf.zip_bundle(tmp, out)
            shutil.rmtree(tmp)
        else:
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


# ----------------------------------------------------------------------- index


def reindex(bundle_dir: str | Path, data: str | Path, *, append: bool = False, index: str | None = None,
            target: str | None = None, fmt: str = "auto", on_error: str = "raise",
            thumbnails: int | None = None) -> dict[str, Any]:
    """Rebuild (or, with append, extend) a bundle's gallery from `data`, in place."""
    root = Path(bundle_dir)
    if not root.is_dir():
        raise UserError(f"{root}: `supemb index` works on a bundle directory (unzip a zipped bundle first)")
    bundle = load_bundle(root, device="cpu")
    m = bundle.manifest
    src = data_gallery(data, bundle.modality, bundle.task, target or bundle.target_name, fmt=fmt, on_error=on_error)
    thumb_size = m.get("gallery", {}).get("thumbnails", 0) if thumbnails is None else thumbnails
    new = embed_gallery(bundle.encoder, src, bundle.task, bundle.labels, thumb_size, on_error)
    if append:
        if index is not None and index != m["index"]["kind"]:
            raise UserError("--append keeps the bundle's index type; rebuild without --append to change it")
        old_json = json.loads((root / "gallery.json").read_text())
        g_json: dict[str, Any] = {"ids": old_json["ids"] + new.gallery_json["ids"]}
        if bundle.modality == "eeg":
            shift = len(old_json.get("recordings", []))
            g_json["groups"] = list(old_json["groups"]) + [g + shift for g in new.gallery_json["groups"]]
            g_json["recordings"] = list(old_json["recordings"]) + new.gallery_json["recordings"]
        thumbs = None
        if bundle.thumbnails is not None and new.thumbnails is not None:
            thumbs = np.concatenate([bundle.thumbnails, new.thumbnails])
        targets = np.concatenate([bundle.targets, new.targets.astype(bundle.targets.dtype)])
        bundle.index.add(new.emb)  # extends the existing index (IVF keeps its trained centroids)
        bundle.index.save(root / "index.faiss")
        mf.save_npy_atomic(root / "targets.npy", targets)
        mf.write_json_atomic(root / "gallery.json", g_json)
        if thumbs is not None:
            mf.save_npy_atomic(root / "thumbnails.npy", thumbs)
        elif (root / "thumbnails.npy").exists():
            (root / "thumbnails.npy").unlink()
        idx, n_items, labels, has_thumbs = bundle.index, len(targets), new.labels, thumbs is not None
    else:
        idx = write_gallery(root, new, index or m["index"]["kind"], metric=bundle.metric)
        n_items, labels, has_thumbs = len(new.targets), new.labels, new.thumbnails is not None
    m = {**m, "index": idx.params(), "labels": labels if bundle.task == "classification" else None}
    m["gallery"] = {"source": (f"{m['gallery']['source']} + {src.source}" if append else src.source),
                    "items": int(n_items), "thumbnails": int(thumb_size) if has_thumbs else 0}
    m = {k: v for k, v in m.items() if v is not None and k != "files"}
    return mf.seal(root, m)

