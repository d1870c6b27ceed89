"""The bundle on disk: what `supemb export` writes and everything serves from.

A bundle is a directory (or a .zip of one) holding

    manifest.json    format version, task, modality, preprocessing, embedding
                     size, metric, labels or target name/unit, kNN settings,
                     index settings, training summary, and the sha256 and size
                     of every other file
    encoder.onnx     one file, dynamic batch axis, outputs the embedding in the
                     geometry its loss shaped (L2-normalised for a cosine loss,
                     the raw encoder output for an L2-distance loss); the
                     manifest's "metric" ("cosine" or "l2"; absent = cosine)
                     says which, and the FAISS index, kNN weights and
                     uncertainty use that same metric
    index.faiss      the labelled gallery's embeddings (a FAISS index)
    targets.npy      gallery labels: float64 [G] (regression) or int64 [G] (class ids)
    gallery.json     per gallery item: an id (file name) and, for EEG windows,
                     the recording it came from
    thumbnails.npy   optional: uint8 [G, t, t, 3] small pictures of image galleries

Nothing is pickled: JSON, .npy read with allow_pickle=False, ONNX, FAISS.
This module writes and checks manifests; `supemb.predict.bundle` loads them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from supemb.errors import UserError

FORMAT = "supemb-bundle"
FORMAT_VERSION = 2  # 2: "preprocessing" is a list of steps (supemb.preprocess.steps); 1 (flat spec) still reads
MANIFEST = "manifest.json"
REQUIRED_FILES = ("encoder.onnx", "index.faiss", "targets.npy", "gallery.json")
TASKS = ("classification", "regression")
METRICS = ("cosine", "l2")  # the manifest's "metric"; a manifest without one is cosine


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def public_mode(path: str | Path, directory: bool = False) -> None:
    """Give a file made by mkstemp/mkdtemp (0600/0700) the usual permissions (0644/0755 under umask 022)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def write_json_atomic(path: Path, obj: Any) -> None:
    """JSON written to a temporary file beside `path`, then renamed over it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
        public_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        public_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_records(root: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """{name: {"sha256", "bytes"}} for the files of a bundle."""
    return {n: {"sha256": sha256_file(root / n), "bytes": (root / n).stat().st_size} for n in sorted(names)}


def seal(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Record the checksums of every file the manifest lists (plus the required
    ones and those present among the optional ones) and write manifest.json."""
    names = set(REQUIRED_FILES) | {n for n in ("thumbnails.npy",) if (root / n).is_file()}
    manifest = {**manifest, "files": file_records(root, sorted(names))}
    write_json_atomic(root / MANIFEST, manifest)
    return manifest


def read_manifest(root: Path) -> dict[str, Any]:
    """manifest.json of the bundle directory `root`, checked for the fields serving needs."""
    path = root / MANIFEST
    if not path.is_file():
        raise UserError(f"{path}: missing: {root} is not a supemb bundle (run `supemb export RUN --out DIR`)")
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err}); the bundle is damaged") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise UserError(f"{path}: not a supemb bundle manifest (no \"format\": \"{FORMAT}\")")
    version = m.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"{path}: bundle format version {version!r} is newer than this supemb reads "
                        f"({FORMAT_VERSION}); upgrade supemb")
    from supemb import modalities

    for key, allowed in (("task", TASKS), ("modality", modalities.names())):
        if m.get(key) not in allowed:
            raise UserError(f"{path}: {key} must be one of {', '.join(allowed)}, got {m.get(key)!r}")
    if m.get("metric", "cosine") not in METRICS:
        raise UserError(f"{path}: metric must be one of {', '.join(METRICS)}, got {m.get('metric')!r}")
    for key in ("embedding_dim", "preprocessing", "files", "knn"):
        if key not in m:
            raise UserError(f"{path}: the manifest has no {key!r} field; the bundle is damaged")
    if m["task"] == "classification" and not m.get("labels"):
        raise UserError(f"{path}: a classification bundle needs its label names (\"labels\")")
    return m


def verify_files(root: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists exists with the recorded size and sha256."""
    files = manifest["files"]
    for name in REQUIRED_FILES:
        if name not in files:
            raise UserError(f"{root / MANIFEST}: lists no {name}; the bundle is incomplete")
    for name, rec in files.items():
        if Path(name).name != name:
            raise UserError(f"{root / MANIFEST}: file name {name!r} is not a plain name")
        path = root / name
        if not path.is_file():
            raise UserError(f"{path}: missing from the bundle")
        if path.stat().st_size != rec.get("bytes"):
            raise UserError(f"{path}: altered or truncated ({path.stat().st_size} bytes, the manifest says "
                            f"{rec.get('bytes')}); re-export the bundle")
        if sha256_file(path) != rec.get("sha256"):
            raise UserError(f"{path}: checksum mismatch: the file was altered after export; re-export the bundle")


def load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UserError(f"{path}: not a readable .npy array ({' '.join(str(err).split())})") from None


def open_bundle_dir(path: str | Path) -> Path:
    """A bundle directory, or a .zip of one extracted into a private temporary directory."""
    p = Path(path)
    if p.is_dir():
        return p
    if not p.exists():
        raise UserError(f"{p}: no such bundle (a directory written by `supemb export`, or a .zip of one)")
    if not zipfile.is_zipfile(p):
        raise UserError(f"{p}: not a bundle directory or a .zip of one")
    out = Path(tempfile.mkdtemp(prefix="supemb-bundle-"))
    with zipfile.ZipFile(p) as z:
        members = [m for m in z.infolist() if not m.is_dir()]
        for m in members:
            name = Path(m.filename).name  # flat: a bundle has no sub-folders; no path escapes `out`
            if not name or name.startswith("."):
                continue
            with z.open(m) as src, open(out / name, "wb") as dst:
                dst.write(src.read())
    return out


def zip_bundle(root: Path, out: Path) -> Path:
    """Write the bundle directory `root` as the flat zip `out` (atomically)."""
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(root.iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    z.write(f, f.name)
        public_mode(tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
