"""supemb.predict.manifest on small fake bundles (bytes, not models), fast enough for
mutation testing (`make mutation`, docs/mutation.md): checksums, atomic writes and
their permissions, sealing, every refusal of `read_manifest` and `verify_files` with
its one-line message naming the file, and bundles in zips (flat, no path escapes)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from manifest_fakes import private_tmp  # noqa: F401 (an autouse fixture)

from supemb.errors import UserError
from supemb.predict import manifest as mf

CONTENT = {"encoder.onnx": b"onnx" * 300, "index.faiss": b"faiss", "targets.npy": b"npy\x00\x01", "gallery.json": b"[]"}
MANIFEST = {"format": mf.FORMAT, "format_version": mf.FORMAT_VERSION, "task": "regression", "modality": "image",
            "metric": "cosine", "embedding_dim": 4, "preprocessing": {"steps": []}, "knn": {"k": 5}}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    """A sealed directory with the required files (arbitrary bytes) and a manifest listing them."""
    root = tmp_path / "b"
    root.mkdir()
    for name, data in CONTENT.items():
        (root / name).write_bytes(data)
    mf.seal(root, MANIFEST)
    return root


def _manifest(root: Path) -> dict:
    return json.loads((root / mf.MANIFEST).read_text())


# ------------------------------------------------------- files and writes


def test_sha256_file_in_chunks(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9
    (tmp_path / "f").write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert mf.sha256_file(tmp_path / "f") == want
    assert mf.sha256_file(str(tmp_path / "f"), chunk=7) == want  # a last partial chunk
    (tmp_path / "e").write_bytes(b"")
    assert mf.sha256_file(tmp_path / "e") == hashlib.sha256(b"").hexdigest()


def test_umask_is_read_without_changing_it(umask_022) -> None:
    assert mf._umask() == 0o022
    assert mf._umask() == 0o022  # still
    os.umask(0o077)
    assert mf._umask() == 0o077


def test_public_mode(tmp_path: Path, umask_022) -> None:
    f, d = tmp_path / "f", tmp_path / "d"
    f.write_bytes(b"")
    d.mkdir()
    os.chmod(f, 0o600)
    os.chmod(d, 0o700)
    mf.public_mode(f)
    mf.public_mode(d, directory=True)
    assert _mode(f) == 0o644 and _mode(d) == 0o755
    os.umask(0o027)
    mf.public_mode(str(f))
    assert _mode(f) == 0o640


def test_write_json_atomic(tmp_path: Path, umask_022) -> None:
    path = tmp_path / "m.json"
    obj = {"b": 1, "a": [1.5, "x"], "é": None}
    mf.write_json_atomic(path, obj)
    text = path.read_text()
    assert text == json.dumps(obj, indent=2) + "\n"  # the keys in their order, indented, one final newline
    assert _mode(path) == 0o644
    mf.write_json_atomic(path, {"new": True})  # replaces
    assert json.loads(path.read_text()) == {"new": True}
    with pytest.raises(TypeError):
        mf.write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"new": True}  # the old file survives a failed write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "tmp"]  # no temporary left behind


def test_save_npy_atomic(tmp_path: Path, umask_022) -> None:
    path = tmp_path / "t.npy"
    mf.save_npy_atomic(path, np.arange(5.0))
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), np.arange(5.0))
    assert _mode(path) == 0o644
    with pytest.raises(ValueError):
        mf.save_npy_atomic(path, np.array([{"a": 1}], dtype=object))  # never pickled
    np.testing.assert_array_equal(np.load(path), np.arange(5.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.npy", "tmp"]


def test_file_records(tmp_path: Path) -> None:
    (tmp_path / "b").write_bytes(b"12345")
    (tmp_path / "a").write_bytes(b"")
    rec = mf.file_records(tmp_path, ["b", "a"])
    assert list(rec) == ["a", "b"]
    assert rec["b"] == {"sha256": hashlib.sha256(b"12345").hexdigest(), "bytes": 5}
    assert rec["a"] == {"sha256": hashlib.sha256(b"").hexdigest(), "bytes": 0}


def test_seal_lists_the_required_files_and_present_thumbnails(bundle: Path) -> None:
    m = _manifest(bundle)
    assert m == {**MANIFEST, "files": mf.file_records(bundle, sorted(CONTENT))}
    assert "files" not in MANIFEST  # the caller's dict is left alone
    (bundle / "thumbnails.npy").write_bytes(b"thumbs")
    (bundle / "notes.txt").write_bytes(b"not listed")
    returned = mf.seal(bundle, MANIFEST)
    assert returned == _manifest(bundle)
    assert list(returned["files"]) == sorted([*CONTENT, "thumbnails.npy"])
    mf.verify_files(bundle, returned)


@pytest.mark.parametrize("write", ["json", "npy", "zip"])
def test_atomic_writes_go_through_a_hidden_temporary_beside_the_target(bundle: Path, tmp_path: Path, write: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Beside it, so the final rename stays on one file system (atomic); hidden and .tmp, so nothing reads it."""
    renames = []
    real_replace = os.replace

    def replace(src, dst):
        renames.append((Path(src), Path(dst)))
        assert Path(src).is_file()
        real_replace(src, dst)

    monkeypatch.setattr(mf.os, "replace", replace)
    out = tmp_path / {"json": "m.json", "npy": "t.npy", "zip": "b.zip"}[write]
    if write == "json":
        mf.write_json_atomic(out, {"a": 1})
    elif write == "npy":
        mf.save_npy_atomic(out, np.zeros(2))
    else:
        mf.zip_bundle(bundle, out)
    [(src, dst)] = renames
    assert dst == out and out.is_file() and not src.exists()
    assert src.parent == out.parent
    assert src.name.startswith(f".{out.name}.") and src.name.endswith(".tmp")


# ---------------------------------------------------------- read_manifest


def _write(root: Path, m) -> None:
    (root / mf.MANIFEST).write_text(json.dumps(m))


def test_read_manifest_accepts_a_good_one(bundle: Path) -> None:
    assert mf.read_manifest(bundle) == _manifest(bundle)
    m = {k: v for k, v in _manifest(bundle).items() if k != "metric"}  # no metric: cosine
    _write(bundle, {**m, "format_version": 1})  # an older version still reads
    assert mf.read_manifest(bundle)["format_version"] == 1
    _write(bundle, {**m, "metric": "l2", "task": "classification", "labels": ["a", "b"], "modality": "eeg"})
    assert mf.read_manifest(bundle)["metric"] == "l2"


@pytest.mark.parametrize(("change", "message"), [
    ({"format": "other"}, r"manifest.json: not a supemb bundle manifest \(no \"format\": \"supemb-bundle\"\)$"),
    ({"format_version": mf.FORMAT_VERSION + 1},
     rf"manifest.json: bundle format version {mf.FORMAT_VERSION + 1} is newer than this supemb reads "
     rf"\({mf.FORMAT_VERSION}\); upgrade supemb$"),
    ({"format_version": "2"}, r"manifest.json: \"format_version\" must be a positive integer, got '2'; the bundle is dam"),
    ({"format_version": None}, r"manifest.json: \"format_version\" must be a positive integer, got None; the bundle is"),
    ({"task": "ranking"}, r"manifest.json: task must be one of classification, regression, got 'ranking'$"),
    ({"task": None}, r"manifest.json: task must be one of classification, regression, got None$"),
    ({"modality": "audio"}, r"manifest.json: modality must be one of eeg, image, got 'audio'$"),
    ({"metric": "dot"}, r"manifest.json: metric must be one of cosine, l2, got 'dot'$"),
    ({"embedding_dim": None}, r"manifest.json: the manifest has no 'embedding_dim' field; the bundle is damaged$"),
    ({"preprocessing": None}, r"manifest.json: the manifest has no 'preprocessing' field"),
    ({"files": None}, r"manifest.json: the manifest has no 'files' field"),
    ({"knn": None}, r"manifest.json: the manifest has no 'knn' field"),
    ({"task": "classification"},
     r"manifest.json: a classification bundle needs its label names \(\"labels\", a list of strings\), got None$"),
    ({"task": "classification", "labels": []}, r"a classification bundle needs its label names .*, got \[\]$"),
    ({"task": "classification", "labels": "ab"}, r"a classification bundle needs its label names .*, got 'ab'$"),
    ({"task": "classification", "labels": ["a", 1]}, r"needs its label names .*, got \['a', 1\]$"),
    ({"embedding_dim": 0}, r"manifest.json: \"embedding_dim\" must be a positive integer, got 0; the bundle is dam"),
    ({"embedding_dim": "4"}, r"manifest.json: \"embedding_dim\" must be a positive integer, got '4'"),
    ({"embedding_dim": True}, r"manifest.json: \"embedding_dim\" must be a positive integer, got True"),
])
def test_read_manifest_refuses(bundle: Path, change: dict, message: str) -> None:
    m = _manifest(bundle)
    m.update(change)
    _write(bundle, {k: v for k, v in m.items() if v is not None or k in ("format_version", "task")})
    with pytest.raises(UserError, match=message) as err:
        mf.read_manifest(bundle)
    assert str(err.value).startswith(str(bundle / mf.MANIFEST) + ":")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("text", "message"), [
    ("{ not json", r"manifest.json: not valid JSON \(.*\); the bundle is damaged$"),
    (b"\xff\xfe\x00bad", r"manifest.json: not valid JSON"),
    ("[1, 2]", r"manifest.json: not a supemb bundle manifest"),
])
def test_read_manifest_refuses_what_is_not_a_manifest(bundle: Path, text, message: str) -> None:
    path = bundle / mf.MANIFEST
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(UserError, match=message) as err:
        mf.read_manifest(bundle)
    assert str(err.value).startswith(str(path))


def test_read_manifest_of_a_folder_that_is_no_bundle(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"manifest.json: missing: .* is not a supemb bundle \(run `supemb export RUN "
                                        r"--out DIR`\)$") as err:
        mf.read_manifest(tmp_path)
    assert str(err.value) == (f"{tmp_path / mf.MANIFEST}: missing: {tmp_path} is not a supemb bundle "
                              "(run `supemb export RUN --out DIR`)")


# ----------------------------------------------------------- verify_files


def test_verify_files_accepts_the_sealed_bundle(bundle: Path) -> None:
    mf.verify_files(bundle, _manifest(bundle))


@pytest.mark.parametrize("name", ["encoder.onnx", "index.faiss", "targets.npy", "gallery.json"])
def test_verify_files_needs_every_required_file_listed(bundle: Path, name: str) -> None:
    m = _manifest(bundle)
    del m["files"][name]
    with pytest.raises(UserError, match=rf"manifest.json: lists no {name}; the bundle is incomplete$") as err:
        mf.verify_files(bundle, m)
    assert str(err.value).startswith(str(bundle / mf.MANIFEST))


@pytest.mark.parametrize("name", ["../escape.bin", "sub/x.bin", "/etc/passwd"])
def test_verify_files_refuses_a_name_with_a_path(bundle: Path, name: str) -> None:
    m = _manifest(bundle)
    m["files"][name] = {"sha256": "0" * 64, "bytes": 0}
    with pytest.raises(UserError, match=r"manifest.json: file name .* is not a plain name$") as err:
        mf.verify_files(bundle, m)
    assert repr(name) in str(err.value)


def test_verify_files_refuses_missing_resized_and_altered_files(bundle: Path) -> None:
    m = _manifest(bundle)
    (bundle / "index.faiss").unlink()
    with pytest.raises(UserError, match=r"index.faiss: missing from the bundle$") as err:
        mf.verify_files(bundle, m)
    assert str(err.value) == f"{bundle / 'index.faiss'}: missing from the bundle"
    (bundle / "index.faiss").mkdir()  # a folder of that name is no file
    with pytest.raises(UserError, match="missing from the bundle"):
        mf.verify_files(bundle, m)
    (bundle / "index.faiss").rmdir()
    (bundle / "index.faiss").write_bytes(CONTENT["index.faiss"] + b"!")
    with pytest.raises(UserError) as err:
        mf.verify_files(bundle, m)
    assert str(err.value) == (f"{bundle / 'index.faiss'}: altered or truncated (6 bytes, the manifest says 5); "
                              "re-export the bundle")
    (bundle / "index.faiss").write_bytes(b"FAISS")  # same size, other bytes
    with pytest.raises(UserError) as err:
        mf.verify_files(bundle, m)
    assert str(err.value) == (f"{bundle / 'index.faiss'}: checksum mismatch: the file was altered after export; "
                              "re-export the bundle")


def test_verify_files_checks_every_listed_file_not_only_the_required_ones(bundle: Path) -> None:
    (bundle / "thumbnails.npy").write_bytes(b"thumbs")
    m = mf.seal(bundle, MANIFEST)
    (bundle / "thumbnails.npy").write_bytes(b"THUMBS")
    with pytest.raises(UserError, match="thumbnails.npy: checksum mismatch"):
        mf.verify_files(bundle, m)
    m["files"]["thumbnails.npy"].pop("bytes")  # a record without a size is no match either
    with pytest.raises(UserError, match=r"thumbnails.npy: altered or truncated \(6 bytes, the manifest says None\)"):
        mf.verify_files(bundle, m)


# ----------------------------------------------------------------- arrays


def test_load_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "ok.npy", np.arange(3))
    np.testing.assert_array_equal(mf.load_npy(tmp_path / "ok.npy"), np.arange(3))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "junk.npy").write_bytes(b"junk")
    (tmp_path / "empty.npy").write_bytes(b"")
    for name in ("obj.npy", "junk.npy", "empty.npy", "missing.npy"):
        with pytest.raises(UserError) as err:
            mf.load_npy(tmp_path / name)
        msg = str(err.value)
        assert msg.startswith(f"{tmp_path / name}: not a readable .npy array (") and msg.endswith(")"), msg
        assert "\n" not in msg and "  " not in msg
    assert str(_load_error(tmp_path / "obj.npy")) == (
        f"{tmp_path / 'obj.npy'}: not a readable .npy array (Object arrays cannot be loaded when allow_pickle=False)")
    # a damaged header: numpy's message, its runs of white space closed up to keep it on one line
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY\x01\x00\x10\x00{garbage:     }\n")
    assert str(_load_error(tmp_path / "bad.npy")) == (
        f"{tmp_path / 'bad.npy'}: not a readable .npy array (Cannot parse header: '{{garbage: }}\\n')")


def _load_error(path: Path) -> UserError:
    with pytest.raises(UserError) as err:
        mf.load_npy(path)
    return err.value


# ------------------------------------------------------------------- zips


def test_zip_bundle_and_open_it_again(bundle: Path, tmp_path: Path, umask_022) -> None:
    (bundle / ".hidden").write_bytes(b"not shipped")
    (bundle / "sub").mkdir()
    (bundle / "sub" / "x").write_bytes(b"not shipped")
    out = tmp_path / "b.zip"
    assert mf.zip_bundle(bundle, out) == out
    assert _mode(out) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "b.zip", "tmp"]  # no temporary left behind
    with zipfile.ZipFile(out) as z:
        infos = z.infolist()
    assert [i.filename for i in infos] == sorted([*CONTENT, mf.MANIFEST])  # flat, sorted, no dot-files or folders
    assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in infos)
    opened = mf.open_bundle_dir(out)
    assert opened != bundle and opened.is_dir()
    assert sorted(p.name for p in opened.iterdir()) == sorted([*CONTENT, mf.MANIFEST])
    for name, data in CONTENT.items():
        assert (opened / name).read_bytes() == data
    mf.verify_files(opened, mf.read_manifest(opened))
    assert mf.open_bundle_dir(str(bundle)) == bundle  # a folder is used where it is


def test_zip_bundle_failure_leaves_nothing(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        mf.zip_bundle(tmp_path / "nope", tmp_path / "b.zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "tmp"]


def test_open_bundle_dir_refuses_escapes_and_writes_nothing_outside(tmp_path: Path) -> None:
    z_path = tmp_path / "evil.zip"
    with zipfile.ZipFile(z_path, "w") as z:
        z.writestr(".hidden", b"h")  # skipped, and the members after it still extracted
        z.writestr("../../escape.txt", b"slip")
        z.writestr("deep/dir/manifest.json", b"{}")
        z.writestr("/abs.txt", b"abs")
        z.writestr("sub/.dot", b"d")
        z.writestr("folder/", b"")
    with pytest.raises(UserError, match=r"evil.zip: member '../../escape.txt' points outside the bundle"):
        mf.open_bundle_dir(z_path)  # refused whole (tests/test_bundle_integrity.py has every case)
    assert not (tmp_path / "escape.txt").exists() and not any(tmp_path.rglob("escape.txt"))


def test_open_bundle_dir_refuses_what_is_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        mf.open_bundle_dir(tmp_path / "nothing")
    assert str(err.value) == (f"{tmp_path / 'nothing'}: no such bundle (a directory written by `supemb export`, "
                              "or a .zip of one)")
    (tmp_path / "text.zip").write_text("not a zip")
    with pytest.raises(UserError) as err:
        mf.open_bundle_dir(str(tmp_path / "text.zip"))
    assert str(err.value).startswith(f"{tmp_path / 'text.zip'}: damaged zip")
