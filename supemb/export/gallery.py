"""A bundle's gallery: labelled inputs listed by their modality, embedded by the exported encoder, indexed.

    src = run_training_gallery(run_cfg)                # or data_gallery(path, plugin, task, target)
    indexed = embed_gallery(encoder, src, task, labels, thumbnail_size)
    write_gallery(bundle_dir, indexed, "flat", metric="l2")

The gallery is embedded with the ONNX model that serves it, through the same
decoding, so a gallery input queried again finds itself. With processes > 1
the inputs are embedded in shards by several processes
(`supemb.embed.shards`), with the same result. A grouped modality
(EEG) gives several rows per input; gallery.json then maps each row to its
recording ("groups", "recordings").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from supemb.embed.onnx import Encoder
from supemb.embed.shards import embed_rows_sharded
from supemb.errors import UserError
from supemb.modalities.base import Listing, Modality
from supemb.predict import manifest as mf

GALLERY_BATCH = 64  # inputs per ONNX Runtime batch when embedding a gallery


@dataclass
class Gallery:
    """Labelled inputs to index: paths (images or EEG recordings) and one target each."""

    items: list[Any]
    targets: list[Any]  # float (regression) or class name (classification)
    ids: list[str]
    source: str
    skipped: list[str] = field(default_factory=list)


def _short_id(path: str | Path, root: Path) -> str:
    p = Path(path)
    base = root if root.is_dir() else root.parent
    try:
        return str(p.relative_to(base))
    except ValueError:
        return p.name


def _gallery(listing: Listing, data: Path, source: str) -> Gallery:
    if not listing.items:
        raise UserError(f"{data}: no labelled items found")
    return Gallery(listing.items, listing.targets, [_short_id(p, data) for p in listing.items], source,
                   listing.skipped)


def run_training_gallery(plugin: Modality, cfg: Any) -> Gallery:
    """A run's training split (from its config.json) as a gallery; needs the training data where it was.
    The split is drawn as the trainer drew it, without decoding anything."""
    data = Path(cfg.data)
    if not data.exists():
        where = ("" if data.is_absolute() else  # runs before 2026-12-08 kept the path as given
                 f" (a path relative to the folder the run was trained from, not to {Path.cwd()})")
        raise UserError(f"{data}: the run's training data is not there any more{where}; "
                        "pass --gallery PATH to index another labelled set")
    # RunDir.config names the data from here when it is below here: a bundle built in a scratch folder
    # (export/build_defaults.py) holds no machine's path
    return _gallery(plugin.training_gallery(cfg), data, f"{data} (training split)")


def data_gallery(path: str | Path, plugin: Modality, task: str, target: str, fmt: str = "auto",
                 on_error: str = "raise") -> Gallery:
    """Every labelled item of a dataset (any layout `supemb train` reads), all splits."""
    data = Path(path)
    if not data.exists():
        raise UserError(f"{data}: no such file or folder (--data / --gallery)")
    return _gallery(plugin.gallery(data, target, task, fmt, on_error), data, str(data))


@dataclass
class IndexedGallery:
    emb: np.ndarray  # [R, D]
    targets: np.ndarray  # [R] float64 or int64 class ids
    gallery_json: dict[str, Any]
    thumbnails: np.ndarray | None
    labels: list[str]
    skipped: list[str] = field(default_factory=list)  # "ITEM: reason", rows and unreadable items left out


def embed_gallery(encoder: Encoder, gallery: Gallery, task: str, labels: list[str],
                  thumbnail_size: int = 0, on_error: str = "raise", processes: int = 1) -> IndexedGallery:
    """Embed the gallery's inputs with the ONNX encoder; targets per row
    (an EEG recording's target repeated over its windows). New class names
    are appended to `labels`. `processes` > 1: that many worker processes,
    each with its own copy of the encoder (same file, preprocessing and
    device), embed it in shards; the result is identical."""
    if processes == 1:
        emb, owner, failures = encoder.embed_rows(gallery.items, batch_size=GALLERY_BATCH, on_error=on_error,
                                                  progress=None)
    else:
        emb, owner, failures = embed_rows_sharded(
            encoder.onnx_path, encoder.pipeline.to_record(), gallery.items, processes=processes,
            device=encoder.device, batch_size=GALLERY_BATCH, on_error=on_error, progress=None)
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
    gallery_json: dict[str, Any] = {"ids": [gallery.ids[int(o)] for o in owner]}
    if encoder.modality.grouped:  # rows -> their input (recording), numbered in gallery order
        used = np.unique(owner)
        remap = {int(o): r for r, o in enumerate(used)}
        gallery_json["groups"] = [remap[int(o)] for o in owner]
        gallery_json["recordings"] = [gallery.ids[int(o)] for o in used]
    thumbs = None
    if thumbnail_size:
        thumbs = encoder.modality.thumbnails([gallery.items[int(o)] for o in owner], thumbnail_size)
    if failures:
        gallery_json["skipped"] = [f.message for f in failures]
    return IndexedGallery(emb, targets, gallery_json, thumbs, labels,
                          list(gallery.skipped) + [f.message for f in failures])


def append_tag(data: str | Path) -> str:
    """The prefix `index --append` gives added ids the gallery already holds: the data's folder name."""
    added = Path(data)
    return (added.parent if added.is_file() else added).resolve().name or "added"


def same_item(gallery_id: str, data_id: str, tag: str) -> bool:
    """Whether a gallery id names the data item `data_id` of the data tagged `tag` (`append_tag`):
    the same id, or the id as `append_gallery_json` renamed it ("TAG/id", "TAG-2/id", ...)."""
    if gallery_id == data_id:
        return True
    head, sep, rest = gallery_id.partition("/")
    if not sep or rest != data_id:
        return False
    n = head[len(tag) + 1:] if head.startswith(tag + "-") else ""
    return head == tag or n.isdigit()


def append_gallery_json(old: dict[str, Any], new: dict[str, Any], tag: str = "added") -> dict[str, Any]:
    """gallery.json of an index extended by `new` rows (`supemb index --append`); recordings renumbered.
    Ids are paths relative to each data set, so an added id the gallery already holds (images/0001.png
    of another folder) becomes "TAG/id" (TAG: the added data's folder name; "TAG-2/id" and so on if that
    is taken too): every id names one item."""
    def unique(names: list[str], known: list[str]) -> list[str]:
        taken, renamed = set(known), {}
        for name in dict.fromkeys(names):  # a recording's windows share its id: one name per distinct id
            n, candidate = 1, name
            while candidate in taken:
                n += 1
                candidate = f"{tag}/{name}" if n == 2 else f"{tag}-{n - 1}/{name}"
            taken.add(candidate)
            renamed[name] = candidate
        return [renamed[name] for name in names]

    out: dict[str, Any] = {"ids": list(old["ids"]) + unique(list(new["ids"]), old["ids"])}
    if "groups" in new:
        shift = len(old.get("recordings", []))
        out["groups"] = list(old["groups"]) + [g + shift for g in new["groups"]]
        out["recordings"] = list(old["recordings"]) + unique(list(new["recordings"]), old["recordings"])
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
