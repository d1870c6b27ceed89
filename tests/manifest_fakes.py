"""Small fake bundles (bytes, not models) for the fast tests of supemb.predict.manifest."""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import pytest

from supemb.predict import manifest as mf

CONTENT = {"encoder.onnx": b"onnx" * 300, "index.faiss": b"faiss", "targets.npy": b"npy\x00\x01", "gallery.json": b"[]"}
MANIFEST = {"format": mf.FORMAT, "format_version": mf.FORMAT_VERSION, "task": "regression", "modality": "image",
            "metric": "cosine", "embedding_dim": 4, "preprocessing": {"steps": []}, "knn": {"k": 5}}


def make_bundle(root: Path, **fields) -> dict:
    """A sealed bundle directory `root`: the required files (arbitrary bytes) and a manifest
    listing them, with `fields` added to MANIFEST. Returns the manifest written."""
    root.mkdir(parents=True, exist_ok=True)
    for name, data in CONTENT.items():
        (root / name).write_bytes(data)
    return mf.seal(root, {**MANIFEST, **fields})


def write_zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    """A zip holding `members` ({name in the zip: bytes}), in that order."""
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def bundle_members(root: Path, folder: str = "") -> dict[str, bytes]:
    """{folder + name: bytes} of every file of the bundle directory `root`, manifest first."""
    names = [mf.MANIFEST, *sorted(n.name for n in root.iterdir() if n.name != mf.MANIFEST)]
    return {folder + n: (root / n).read_bytes() for n in names}


@pytest.fixture(autouse=True)
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Zips extract under tmp_path/tmp (tempfile's folder), not the system's temporary folder: a test
    can see what is left behind, and mutation runs (hundreds of extractions) leave nothing there.
    Autouse in every test module that imports it."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return tmp_path / "tmp"
