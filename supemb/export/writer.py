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
from supemb.train.rundir import RunDir

PARITY_TOL = {"float32": 1e-4, "float16": 1e-2}


@dataclass
class Gallery:
    """Labelled inputs to index: paths (images or EEG recordings) and one target each."""

    items: list[Any]
    targets: list[Any]  # float (regression) or class name (classification)
    ids: list[str]
    source: str
    skipped: list[str] = field(default_factory=list)


# ------------------------------------------------------------------- galleries


def run_training_gallery(run: Path, meta: dict[str, Any]) -> Gallery:
    """The run's training split as a gallery (needs the training data where it was)."""
    from supemb.train.data import prepare_data
    from supemb.train.rundir import load_run_config

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
        from supemb.data.images import load_image_table

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
        from supemb.data.eeg import list_recordings

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

    from supemb.encoders.onnx_util import (DEFAULT_OPSET, HalfPrecision, export_onnx, parity, parity_scale,
                                           resolve_exporter)

    run, out = Path(run), Path(out)
    if not run.is_dir():
        raise UserError(f"{run}: no such training run directory")
    zipped = out.suffix.lower() == ".zip"
    if out.exists() and (zipped or any(out.iterdir())) and not force:
        raise UserError(f"{out}: already exists; choose another --out or pass --force to replace it")
    run_dir = RunDir(run)
    module, meta, prep = run_dir.embedding_model()
    modality, task = meta["modality"], meta["task"]
    metric = module.metric
    knn_temperature = run_dir.knn_temperature(meta)
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
        graph_module = HalfPrecision(module) if fp16 else module
        opset = opset or DEFAULT_OPSET
        export_onnx(graph_module, torch.from_numpy(examples[:2] if len(examples) > 1 else examples),
                    tmp / "encoder.onnx", input_name="input", output_name="embedding", opset=opset)
        encoder = Encoder(tmp / "encoder.onnx", modality, spec, device="cpu")
        tolerance = PARITY_TOL[dtype] * parity_scale(module, examples, metric)
        diffs = parity(module, encoder.embed_arrays, examples, tolerance)
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
                         "embed_dim": meta.get("embed_dim"), "test_metrics": run_dir.final_metrics(),
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

