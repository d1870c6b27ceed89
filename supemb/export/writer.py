"""`supemb export` and `supemb index`: a training run -> a bundle; a bundle's gallery rebuilt.

export_run(run, out):
1. rebuild the run's encoder from model.json + model.safetensors (`RunDir`)
   and wrap it so it outputs the embedding in the geometry its loss shaped
   (`supemb.encoders.heads.EmbeddingModel`, as the trainer does): L2-normalised
   for model.json's metric "cosine" (and runs older than the metric), the raw
   encoder output for "l2";
2. write it as one ONNX file with a dynamic batch axis (weights inside);
   `fp16=True` casts the weights to float16 inside the graph (inputs and
   outputs stay float32), for GPU serving;
3. embed the labelled gallery (by default the run's training set, listed by
   its modality plug-in without decoding) with the exported ONNX model
   itself, through the recorded preprocessing steps serving runs, and index
   it with FAISS (`supemb.export.gallery`);
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

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from supemb import __version__, modalities
from supemb.embed.onnx import Encoder
from supemb.errors import UserError
from supemb.export.gallery import (
    append_gallery_json,
    append_tag,
    data_gallery,
    embed_gallery,
    run_training_gallery,
    write_gallery,
)
from supemb.predict import familiarity
from supemb.predict import manifest as mf
from supemb.predict.bundle import load_bundle
from supemb.train.rundir import RunDir

PARITY_TOL = {"float32": 1e-4, "float16": 1e-2}
# manifest["gallery"]["face_detection"] of a bundle whose gallery was embedded without its face step
PRECROPPED = "skipped: the gallery photos are face crops already"




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
    processes: int = 1,
    device: str = "cpu",
    detect_faces: bool = False,
    on_skip: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write the bundle for training run `run` into `out` (a directory, or a
    path ending in .zip). Returns the manifest. `on_skip` hears each gallery item
    left out ("ITEM: reason"; with on_error "skip"). `processes` > 1 embeds the
    gallery with that many processes (same bundle, sooner on many cores);
    `device` "cuda" (or "auto") embeds it on GPUs, one per process (the parity
    check always runs on the CPU). `detect_faces`: serve with a face step added
    before the resize (photos are cropped to their face); the gallery, already
    face crops, is embedded without it, and the manifest says so."""
    import torch

    from supemb.encoders.onnx_util import (
        DEFAULT_OPSET,
        HalfPrecision,
        export_onnx,
        parity,
        parity_scale,
        resolve_exporter,
    )

    run, out = Path(run), Path(out)
    if not run.is_dir():
        raise UserError(f"{run}: no such training run directory")
    zipped = out.suffix.lower() == ".zip"
    if out.exists() and (zipped or any(out.iterdir())) and not force:
        raise UserError(f"{out}: already exists; choose another --out or pass --force to replace it")
    run_dir = RunDir(run)
    module, meta, prep = run_dir.embedding_model()
    task = meta["task"]
    metric = module.metric
    knn_temperature = run_dir.knn_temperature(meta)
    residual = run_dir.knn_residual(meta) if task == "regression" else None  # kNN of a linear head's residuals
    plugin, pipeline = modalities.from_record(prep, str(run / "preprocessing.json"))
    gallery_pipeline = pipeline
    if detect_faces and not pipeline.has("face"):
        pipeline = plugin.detecting(pipeline)  # queries are cropped to the face; the gallery already is
    if gallery:
        src = data_gallery(gallery, plugin, task, meta["target"], on_error=on_error)
    else:
        cfg = run_dir.config()
        src = run_training_gallery(plugin, cfg)
        if cfg.on_error == "skip":  # the run's own gallery leaves out what its training left out
            on_error = "skip"

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    mf.public_mode(tmp, directory=True)
    try:
        # example inputs: the first gallery items, decoded as serving decodes them
        decode_one = plugin.decoder(gallery_pipeline)
        rows = []
        for item in src.items:
            try:
                got = decode_one(item)
            except UserError:
                if on_error == "raise":
                    raise
                continue  # skipped here as in the gallery below
            rows.append(getattr(got, "rows", got))  # a face step's Decoded(rows, meta)
            if sum(len(r) for r in rows) >= 16:
                break
        examples = np.concatenate(rows)[:16]
        dtype = "float16" if fp16 else "float32"
        graph_module = HalfPrecision(module) if fp16 else module
        opset = opset or DEFAULT_OPSET
        export_onnx(graph_module, torch.from_numpy(examples[:2] if len(examples) > 1 else examples),
                    tmp / "encoder.onnx", input_name="input", output_name="embedding", opset=opset)
        encoder = Encoder(tmp / "encoder.onnx", plugin, pipeline, device="cpu")
        tolerance = PARITY_TOL[dtype] * parity_scale(module, examples, metric)
        # a residual head multiplies the graph's embedding error: check the values it serves too
        head_tol = PARITY_TOL[dtype] * float(meta.get("target_std") or 1.0)
        diffs = parity(module, encoder.embed_arrays, examples, tolerance,
                       head=(residual["weight"], head_tol) if residual else None)
        head = {"parity_head_max_abs_diff": diffs.pop("head"), "parity_head_tolerance": head_tol} if residual else {}
        labels = list(meta.get("classes") or []) if task == "classification" else []
        gallery_encoder = encoder if device == "cpu" and gallery_pipeline is pipeline else Encoder(
            tmp / "encoder.onnx", plugin, gallery_pipeline, device=device)
        indexed = embed_gallery(gallery_encoder, src, task, labels, thumbnails, on_error, processes)
        for item in indexed.skipped if on_skip else ():
            on_skip(item)
        idx = write_gallery(tmp, indexed, index, metric=metric)
        reference = familiarity.reference_table(idx, indexed.emb, indexed.gallery_json.get("groups"))
        manifest = {
            "format": mf.FORMAT, "format_version": mf.FORMAT_VERSION if residual else mf.PLAIN_KNN_FORMAT_VERSION,
            "name": name or out.stem, "created_with": f"supemb {__version__}",
            "task": task, "modality": plugin.name, "synthetic": bool(synthetic) if synthetic is not None else False,
            "preprocessing": pipeline.to_record(), "embedding_dim": int(encoder.output_dim or indexed.emb.shape[1]),
            "metric": metric,
            "target": {"name": meta.get("target", "target"), "unit": unit},
            "labels": indexed.labels if task == "classification" else None,
            "knn": {"k": int(k or (residual["k"] if residual else meta.get("knn_k", 10))),
                    "weighting": "softmax", "temperature": residual["temperature"] if residual else knn_temperature,
                    "reduce": "mean",
                    **({"uncertainty_scale": run_dir.uncertainty_scale(meta)} if task == "regression" else {}),
                    **({"residual": {"weight": residual["weight"], "bias": residual["bias"]}} if residual else {})},
            "index": idx.params(),
            "onnx": {"file": "encoder.onnx", "input": "input", "output": "embedding", "opset": opset,
                     "dtype": dtype, "exporter": resolve_exporter("auto"),
                     "input_shape": ["batch", *examples.shape[1:]],
                     "parity_max_abs_diff": diffs, "parity_tolerance": tolerance, **head},
            "gallery": {"source": src.source, "items": int(len(indexed.targets)),
                        "inputs": len(src.items) - len(indexed.gallery_json.get("skipped", [])),
                        "thumbnails": int(thumbnails) if indexed.thumbnails is not None else 0,
                        **({"face_detection": PRECROPPED} if gallery_pipeline is not pipeline else {})},
            "familiarity": reference,
            "training": {"run": run.name, "loss": meta.get("loss"), "encoder": meta.get("encoder"),
                         "embed_dim": meta.get("embed_dim"), "test_metrics": run_dir.final_metrics(),
                         "data": meta.get("data"),
                         **({"pretrained": meta["pretrained"]} if meta.get("pretrained") else {})},
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
            thumbnails: int | None = None, processes: int = 1, device: str = "cpu",
            on_skip: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Rebuild (or, with append, extend) a bundle's gallery from `data`, in place;
    `processes` > 1 embeds it with that many processes (same result), on GPUs with `device` "cuda";
    `on_skip` hears each item left out ("ITEM: reason"; with on_error "skip")."""
    root = Path(bundle_dir)
    if not root.exists():
        raise UserError(f"{root}: no such bundle")
    if not root.is_dir():
        raise UserError(f"{root}: `supemb index` works on a bundle directory (unzip a zipped bundle first)")
    bundle = load_bundle(root, device=device)
    m = bundle.manifest
    if append and index is not None and index != m["index"]["kind"]:  # before any embedding
        raise UserError("--append keeps the bundle's index type; rebuild without --append to change it")
    src = data_gallery(data, bundle.plugin, bundle.task, target or bundle.target_name, fmt=fmt, on_error=on_error)
    thumb_size = m.get("gallery", {}).get("thumbnails", 0) if thumbnails is None else thumbnails
    encoder = bundle.encoder
    if m.get("gallery", {}).get("face_detection") == PRECROPPED:  # as the gallery was embedded: no face step
        encoder = Encoder(root / "encoder.onnx", bundle.plugin, bundle.pipeline.without("face"), device=device)
    new = embed_gallery(encoder, src, bundle.task, bundle.labels, thumb_size, on_error, processes)
    for item in new.skipped if on_skip else ():
        on_skip(item)
    if append:
        # the data's folder name tells added ids from the gallery's own where they coincide
        g_json = append_gallery_json(json.loads((root / "gallery.json").read_text()), new.gallery_json,
                                     tag=append_tag(data))
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
        reference = familiarity.reference_table(idx, familiarity.index_vectors(root / "index.faiss"),
                                                g_json.get("groups"))
    else:
        idx = write_gallery(root, new, index or m["index"]["kind"], metric=bundle.metric)
        n_items, labels, has_thumbs = len(new.targets), new.labels, new.thumbnails is not None
        reference = familiarity.reference_table(idx, new.emb, new.gallery_json.get("groups"))
    m = {**m, "index": idx.params(), "labels": labels if bundle.task == "classification" else None,
         "familiarity": reference}
    face = {"face_detection": PRECROPPED} if encoder is not bundle.encoder else {}
    m["gallery"] = {"source": (f"{m['gallery']['source']} + {src.source}" if append else src.source),
                    "items": int(n_items), "thumbnails": int(thumb_size) if has_thumbs else 0, **face}
    m = {k: v for k, v in m.items() if v is not None and k != "files"}
    return mf.seal(root, m)



def add_familiarity(bundle_dir: str | Path) -> dict[str, Any]:
    """Give an existing bundle directory (exported before the familiarity table
    existed) its "familiarity" table, computed from its own index.faiss and
    gallery.json, as `export_run` records it; re-sealed in place (no other file
    changes). Returns the manifest."""
    root = Path(bundle_dir)
    m = mf.read_manifest(root)
    mf.verify_files(root, m)
    reference = familiarity.bundle_reference(root, m)
    out: dict[str, Any] = {}
    for key, value in m.items():  # the table goes where export_run puts it: after "gallery"
        if key not in ("familiarity", "files"):
            out[key] = value
        if key == "gallery" and reference is not None:
            out["familiarity"] = reference
    if reference is not None and "familiarity" not in out:
        out["familiarity"] = reference
    return mf.seal(root, out)
