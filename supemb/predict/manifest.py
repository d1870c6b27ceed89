"""The bundle on disk: what `supemb export` writes and everything serves from.

A bundle is a directory (or a .zip of one) holding

    manifest.json    format version, task, modality, preprocessing, embedding
                     size, metric, labels or target name/unit, kNN settings,
                     index settings, training summary, and the sha256 and size
                     of every other file
    encoder.onnx     dynamic batch axis; the embedding in the geometry its loss shaped (unit length
                     for a cosine loss, raw for an L2 one): the manifest's "metric" ("cosine" or
                     "l2"; absent = cosine), which the index, kNN weights and uncertainty use too
    index.faiss      the labelled gallery's embeddings (a FAISS index)
    targets.npy      gallery labels: float64 [G] (regression) or int64 [G] (class ids)
    gallery.json     per gallery item: an id (file name); for EEG windows, their recording
    thumbnails.npy   optional: uint8 [G, t, t, 3] small pictures of image galleries

Nothing is pickled: JSON, .npy read with allow_pickle=False, ONNX, FAISS.
This module writes and checks manifests; `supemb.predict.bundle` loads them.

A bundle's digest is the sha256 of its canonical manifest (`manifest_digest`: sorted keys, no
spaces); the manifest records every other file's sha256, so the digest pins all of it. Everything
read is treated as hostile: "files" holds plain names; a zip holds only the manifest and the files it
lists (flat, or in one top-level folder), no links, no absolute or ".." paths, the recorded sizes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from supemb.errors import UserError

FORMAT = "supemb-bundle"
# 3: knn.residual may be there (an older reader must refuse it); 2: "preprocessing" is a list of steps
FORMAT_VERSION = 3  # (supemb.preprocess.steps); 1 (flat spec) still reads
PLAIN_KNN_FORMAT_VERSION = 2  # what export writes for a bundle without knn.residual: older readers serve it right
MANIFEST = "manifest.json"
REQUIRED_FILES = ("encoder.onnx", "index.faiss", "targets.npy", "gallery.json")
TASKS = ("classification", "regression")
METRICS = ("cosine", "l2")  # the manifest's "metric"; a manifest without one is cosine
MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few kB; its familiarity table ~2 kB
MAX_BUNDLE_BYTES = 256 << 30  # refuse a zip whose members declare more than this, uncompressed
ZIP_LITTER = ("__MACOSX/", ".DS_Store")  # what Finder adds to a zip: skipped, never extracted


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """The bundle's digest: sha256 (64 hex) of the manifest as canonical JSON (sorted keys,
    no spaces, ASCII). The manifest lists every other file's sha256, so this pins them all."""
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def parse_digest(text: str) -> str:
    """A digest as given by a user ("sha256:" optional, any case) -> 64 lower-case hex."""
    d = str(text).strip().lower().removeprefix("sha256:")
    if len(d) != 64 or any(c not in "0123456789abcdef" for c in d):
        raise UserError(f"digest {text!r} is not a sha256 (64 hex characters, as `supemb predict` prints)")
    return d


def check_digest(where: str | Path, manifest: dict[str, Any], expected: str) -> str:
    """The manifest's digest, or a one-line UserError if it is not `expected`."""
    want, got = parse_digest(expected), manifest_digest(manifest)
    if got != want:
        raise UserError(f"{where}: bundle digest {got[:16]}... is not the expected {want[:16]}...: "
                        "the bundle (its manifest or a file it lists) has changed since it was pinned")
    return got


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
    if type(version) is not int or version < 1:
        raise UserError(f"{path}: \"format_version\" must be a positive integer, got {version!r}; "
                        "the bundle is damaged")
    if version > FORMAT_VERSION:
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
    dim = m["embedding_dim"]
    if type(dim) is not int or dim < 1:
        raise UserError(f"{path}: \"embedding_dim\" must be a positive integer, got {dim!r}; the bundle is damaged")
    labels = m.get("labels")
    if m["task"] == "classification" and (not isinstance(labels, list) or not labels
                                          or not all(isinstance(x, str) for x in labels)):
        raise UserError(f"{path}: a classification bundle needs its label names (\"labels\", a list of strings), "
                        f"got {labels!r}")
    _check_files(path, m["files"])
    _check_knn(path, m["knn"])
    if m["knn"].get("residual") is not None:
        if m["task"] != "regression":
            raise UserError(f"{path}: \"knn\" residual serves values; a {m['task']} bundle cannot have one")
        check_residual(f"{path}: \"knn\" residual", m["knn"]["residual"], dim, keys=("weight", "bias"))
    return m


def check_residual(where: str, r: Any, dim: int, keys: tuple[str, ...]) -> None:
    """A residual kNN's record (`supemb.train.selection.choose_residual`): "weight", `dim` finite
    numbers, "bias" finite, and, where `keys` names them, "k" >= 1 and "temperature" > 0.
    UserError naming `where` otherwise."""
    finite = lambda v: type(v) in (int, float) and math.isfinite(v)  # noqa: E731
    if not isinstance(r, dict) or any(key not in r for key in keys):
        raise UserError(f"{where} must be a mapping with {', '.join(keys)}, got {str(r)[:80]!r}")
    w = r["weight"]
    if not isinstance(w, list) or len(w) != dim or not all(finite(v) for v in w):
        raise UserError(f"{where} weight must be {dim} finite numbers (one per embedding dimension)")
    if not finite(r["bias"]):
        raise UserError(f"{where} bias must be a finite number, got {r['bias']!r}")
    if "k" in keys and (type(r["k"]) is not int or r["k"] < 1):
        raise UserError(f"{where} k must be a positive integer, got {r['k']!r}")
    if "temperature" in keys and not (finite(r["temperature"]) and r["temperature"] > 0):
        raise UserError(f"{where} temperature must be a positive number, got {r['temperature']!r}")


def _plain_name_problem(name: Any) -> str | None:
    """Why `name` cannot be a file of a bundle (None: it can): a bundle is flat."""
    if not isinstance(name, str) or not name:
        return "is not a file name"
    if "/" in name or "\\" in name or "\0" in name or (len(name) > 1 and name[1] == ":"):
        return "has a directory part (a bundle is one flat folder)"
    if name.startswith("."):  # also "." and ".."
        return "is not a plain file name"
    if name == MANIFEST:
        return "is the manifest itself"
    return None


def _check_files(path: Path, files: Any) -> None:
    """"files" is {plain name: {"sha256": 64 hex, "bytes": int >= 0}}."""
    if not isinstance(files, dict):
        raise UserError(f"{path}: \"files\" must map file names to their sha256 and size; the bundle is damaged")
    for name, rec in files.items():
        problem = _plain_name_problem(name)
        if problem:
            raise UserError(f"{path}: \"files\" lists {name!r}, which {problem}; refusing the bundle")
        if not isinstance(rec, dict) or type(rec.get("bytes")) is not int or rec["bytes"] < 0 \
                or not isinstance(rec.get("sha256"), str):
            raise UserError(f"{path}: \"files\" entry {name!r} needs \"sha256\" and \"bytes\"; the bundle is damaged")


def _check_knn(path: Path, knn: Any) -> None:
    """"knn": k >= 1, temperature and uncertainty_scale > 0 (or absent/null), weighting and reduce
    among those served."""
    if not isinstance(knn, dict):
        raise UserError(f"{path}: \"knn\" must be a mapping of kNN settings, got {knn!r}")
    k, t = knn.get("k", 10), knn.get("temperature")
    if type(k) is not int or k < 1:
        raise UserError(f"{path}: \"knn\" k must be a positive integer, got {k!r}")
    for key, value in (("temperature", t), ("uncertainty_scale", knn.get("uncertainty_scale"))):
        if value is not None and (type(value) not in (int, float) or not math.isfinite(value) or value <= 0):
            raise UserError(f"{path}: \"knn\" {key} must be a positive number, got {value!r}")
    for key, allowed in (("weighting", ("softmax", "uniform")), ("reduce", ("mean", "median"))):
        if knn.get(key, allowed[0]) not in allowed:
            raise UserError(f"{path}: \"knn\" {key} must be one of {', '.join(allowed)}, got {knn.get(key)!r}")


def verify_files(root: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists exists with the recorded size and sha256."""
    files = manifest["files"]
    for name in REQUIRED_FILES:
        if name not in files:
            raise UserError(f"{root / MANIFEST}: lists no {name}; the bundle is incomplete")
    for name, rec in files.items():
        if _plain_name_problem(name):  # read_manifest refuses these; a manifest built in code may not
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
    """A bundle directory, or a .zip of one extracted into a private temporary directory (`Bundle` removes
    it). A zip is checked before anything is written (`_zip_plan`) and extracted file by file, each capped
    at the size the manifest records; on any problem the folder goes and a one-line UserError names the zip."""
    if not isinstance(path, (str, os.PathLike)):
        raise UserError(f"a bundle is a path to a folder from `supemb export` or a .zip, not {type(path).__name__}")
    p = Path(path)
    if p.is_dir():
        return p
    if not p.exists():
        raise UserError(f"{p}: no such bundle (a directory written by `supemb export`, or a .zip of one)")
    if not zipfile.is_zipfile(p):
        if p.suffix.lower() == ".zip":
            raise UserError(f"{p}: damaged zip (no zip directory at its end: truncated or not a zip file); "
                            "copy or export the bundle again")
        raise UserError(f"{p}: not a bundle directory or a .zip of one")
    out = Path(tempfile.mkdtemp(prefix="supemb-bundle-"))
    try:
        with zipfile.ZipFile(p) as z:
            members = _zip_members(p, z)
            _extract(z, members[MANIFEST], out / MANIFEST, MAX_MANIFEST_BYTES, p)
            files = as_named(read_manifest, out, p)["files"]
            plan = _zip_plan(p, members, files)
            for name, info in plan.items():
                _extract(z, info, out / name, files[name]["bytes"], p)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError, OSError) as err:
        shutil.rmtree(out, ignore_errors=True)
        raise UserError(f"{p}: damaged zip ({' '.join(str(err).split())}); copy or export the bundle again") from None
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def remove_extracted(root: Path, owner: int) -> None:
    """Remove a zip's extracted copy, in the process that made it only (a forked worker's exit must not)."""
    if os.getpid() == owner:
        shutil.rmtree(root, ignore_errors=True)


def as_named(check: Callable[..., Any], root: Path, source: Path, *args: Any) -> Any:
    """check(root, *args), its UserError naming `source` (the zip) where it named `root` (the
    temporary folder the zip was extracted into): "b.zip/manifest.json: ...", not "/tmp/..."."""
    try:
        return check(root, *args)
    except UserError as err:
        if root == source:
            raise
        raise UserError(str(err).replace(str(root), str(source))) from None


def _zip_members(p: Path, z: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """{plain name: member} of a bundle zip, flat or all in one top-level folder; anything
    that could write outside the extraction folder (absolute or ".." paths, links) is refused."""
    kept: list[tuple[list[str], zipfile.ZipInfo]] = []
    for info in z.infolist():
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or "\0" in name:
            raise UserError(f"{p}: member {name!r} has an absolute path; refusing the zip")
        if ".." in parts:
            raise UserError(f"{p}: member {name!r} points outside the bundle (\"..\"); refusing the zip")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UserError(f"{p}: member {name!r} is a symbolic link; refusing the zip")
        if info.is_dir() or name.startswith(ZIP_LITTER[0]) or parts[-1] == ZIP_LITTER[1]:
            continue
        kept.append((parts, info))
    tops = {parts[0] for parts, _ in kept if len(parts) == 2}
    if not all(len(parts) == 1 for parts, _ in kept) and not (
            len(tops) == 1 and all(len(parts) == 2 for parts, _ in kept)):
        raise UserError(f"{p}: members in sub-folders; a bundle zip holds the bundle's files, flat or in "
                        "one top-level folder")
    members: dict[str, zipfile.ZipInfo] = {}
    for parts, info in kept:
        if parts[-1] in members:
            raise UserError(f"{p}: holds {parts[-1]!r} twice; refusing the zip")
        members[parts[-1]] = info
    if MANIFEST not in members:
        raise UserError(f"{p}: has no {MANIFEST}: not a zip of a supemb bundle")
    return members


def _zip_plan(p: Path, members: dict[str, zipfile.ZipInfo], files: dict[str, Any]) -> dict[str, zipfile.ZipInfo]:
    """The members to extract besides the manifest: each one a file the manifest lists, declaring
    the size it records, all of them within MAX_BUNDLE_BYTES and the free space of the temp folder."""
    plan = {name: info for name, info in members.items() if name != MANIFEST}
    for name, info in plan.items():
        if name not in files:
            raise UserError(f"{p}: member {info.filename!r} is not one of the files its manifest lists")
        if info.file_size != files[name]["bytes"]:
            raise UserError(f"{p}: member {info.filename!r} declares {info.file_size} bytes but the manifest "
                            f"says {files[name]['bytes']}; refusing the zip")
    total = sum(info.file_size for info in plan.values())
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if total > min(MAX_BUNDLE_BYTES, free):
        raise UserError(f"{p}: unzips to {total} bytes, over the cap ({MAX_BUNDLE_BYTES} bytes, {free} free in "
                        f"{tempfile.gettempdir()}); refusing the zip")
    return plan


def _extract(z: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, cap: int, p: Path) -> None:
    """One member into `dest` (a new file), refused past `cap` bytes or its declared size."""
    if info.file_size > cap:
        raise UserError(f"{p}: member {info.filename!r} declares {info.file_size} bytes, over the "
                        f"{cap} allowed; refusing the zip")
    written = 0
    with z.open(info) as src, open(dest, "xb") as dst:
        while block := src.read(1 << 20):
            written += len(block)
            if written > min(cap, info.file_size):
                raise UserError(f"{p}: member {info.filename!r} unzips past its declared size; refusing the zip")
            dst.write(block)


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
