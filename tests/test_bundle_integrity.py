"""Bundle integrity: the digest that pins a bundle, and hostile manifests and zips.

One tiny image-regression bundle is trained and exported once per module; each
test copies it and edits the copy. Hostile inputs must be refused with one
line naming the bundle and the problem, before anything is written outside a
private extraction folder (and that folder is removed again).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from tiny_runs import tiny_bundle, tiny_run, tiny_webcam

from supemb.cli import main as cli
from supemb.errors import UserError
from supemb.predict import manifest as mf
from supemb.predict.bundle import load_bundle


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("integrity")


@pytest.fixture(scope="module")
def webcam(work: Path) -> Path:
    return tiny_webcam(work, seed=3)


@pytest.fixture(scope="module")
def bundle(work: Path, webcam: Path) -> Path:
    return tiny_bundle(tiny_run(webcam, work / "run"), work / "bundle")


@pytest.fixture()
def private_tmp(tmp_path: Path, monkeypatch) -> Path:
    """The folder zips are extracted under (tempfile's), empty, to see what is left behind."""
    d = tmp_path / "tmpdir"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def _copy(bundle: Path, tmp_path: Path, name: str = "b") -> Path:
    dst = tmp_path / name
    shutil.copytree(bundle, dst)
    return dst


def _manifest(b: Path) -> dict:
    return json.loads((b / "manifest.json").read_text())


def _write_manifest(b: Path, m: dict) -> None:
    (b / "manifest.json").write_text(json.dumps(m, indent=2))


def _canonical_sha256(path: Path) -> str:
    """Written out here, not with the code under test: sha256 of sorted, compact JSON."""
    m = json.loads(path.read_text())
    return hashlib.sha256(json.dumps(m, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    text = str(err.value)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, f"{part!r} not in {text!r}"


# ------------------------------------------------------------------- digest


def test_digest_is_the_sha256_of_the_canonical_manifest(bundle: Path, tmp_path: Path) -> None:
    b = load_bundle(bundle, device="cpu")
    assert b.digest == _canonical_sha256(bundle / "manifest.json")
    assert len(b.digest) == 64 and b.digest == load_bundle(bundle, device="cpu").digest
    # the same bundle zipped has the same digest; the layout of manifest.json (indent, key order) does not count
    z = mf.zip_bundle(bundle, tmp_path / "b.zip")
    assert load_bundle(z, device="cpu").digest == b.digest
    c = _copy(bundle, tmp_path)
    m = _manifest(c)
    (c / "manifest.json").write_text(json.dumps(dict(reversed(list(m.items())))))
    assert load_bundle(c, device="cpu").digest == b.digest


def test_load_bundle_checks_a_given_digest(bundle: Path) -> None:
    d = load_bundle(bundle, device="cpu").digest
    for given in (d, d.upper(), f"sha256:{d}"):
        assert load_bundle(bundle, device="cpu", digest=given).digest == d
    other = ("0" if d[0] != "0" else "1") + d[1:]
    with pytest.raises(UserError) as err:
        load_bundle(bundle, device="cpu", digest=other)
    _one_line(err, str(bundle), d[:16], other[:16], "changed")
    with pytest.raises(UserError, match="not a sha256"):
        load_bundle(bundle, device="cpu", digest=d[:12])


@pytest.mark.parametrize("edit", ["knn temperature", "knn k", "target name", "unit", "name", "resealed file"])
def test_an_edited_bundle_is_caught_by_its_digest(bundle: Path, tmp_path: Path, edit: str) -> None:
    """Each edit leaves a bundle that loads (the files match the manifest); only the digest sees it."""
    import numpy as np

    pinned = load_bundle(bundle, device="cpu").digest
    b = _copy(bundle, tmp_path)
    m = _manifest(b)
    if edit == "knn temperature":
        m["knn"]["temperature"] = m["knn"]["temperature"] * 2
    elif edit == "knn k":
        m["knn"]["k"] += 1
    elif edit == "target name":
        m["target"]["name"] = "age"
    elif edit == "unit":
        m["target"]["unit"] = "°F"
    elif edit == "name":
        m["name"] = "another"
    else:  # a gallery target changed and the manifest re-sealed around it
        t = np.load(b / "targets.npy")
        t[0] += 10.0
        np.save(b / "targets.npy", t)
        m = mf.seal(b, {k: v for k, v in m.items() if k != "files"})
    _write_manifest(b, m)
    assert load_bundle(b, device="cpu").digest != pinned
    with pytest.raises(UserError) as err:
        load_bundle(b, device="cpu", digest=pinned)
    _one_line(err, str(b), pinned[:16])


def test_cli_prints_and_checks_the_digest(bundle: Path, webcam: Path, capsys) -> None:
    d = load_bundle(bundle, device="cpu").digest
    image = str(sorted(webcam.parent.rglob("*.png"))[0])
    assert cli(["predict", str(bundle), image, "--device", "cpu"]) == 0
    assert f"bundle {bundle} digest {d}" in capsys.readouterr().err
    assert cli(["predict", str(bundle), image, image, "--json", "--device", "cpu", "--digest", d]) == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out, list) and [p["bundle_digest"] for p in out] == [d, d] and "value" in out[0]
    assert cli(["eval", str(bundle), "--data", str(webcam), "--json", "--device", "cpu", "--digest", d]) == 0
    got = capsys.readouterr()
    assert json.loads(got.out)["bundle_digest"] == d and f"digest {d}" in got.err
    other = d[::-1]
    for argv in (["predict", str(bundle), image], ["eval", str(bundle), "--data", str(webcam)]):
        assert cli([*argv, "--device", "cpu", "--digest", other]) == 1
        got = capsys.readouterr()
        assert got.out == "" and str(bundle) in got.err and other[:16] in got.err
        assert len(got.err.strip().splitlines()) == 1 and "Traceback" not in got.err
        assert cli([*argv, "--device", "cpu", "--digest", "abc"]) == 2  # a malformed pin: the command line
        assert "--digest" in capsys.readouterr().err


def test_export_and_index_print_the_digest_they_wrote(work: Path, bundle: Path, webcam: Path, tmp_path: Path,
                                                     capsys) -> None:
    assert cli(["export", str(work / "run"), "--out", str(tmp_path / "e.zip")]) == 0
    assert f"digest {load_bundle(tmp_path / 'e.zip', device='cpu').digest}" in capsys.readouterr().out
    b = _copy(bundle, tmp_path)
    before = load_bundle(b, device="cpu").digest
    assert cli(["index", str(b), "--data", str(webcam)]) == 0
    after = load_bundle(b, device="cpu").digest
    assert after != before and f"digest {after}" in capsys.readouterr().out


# ---------------------------------------------------------- hostile manifests


@pytest.mark.parametrize("name, problem", [
    ("sub/targets.npy", "directory part"),
    ("../targets.npy", "directory part"),
    ("/etc/passwd", "directory part"),
    ("..\\targets.npy", "directory part"),
    ("..", "not a plain file name"),
    (".hidden", "not a plain file name"),
    ("manifest.json", "the manifest itself"),
])
def test_manifest_listing_a_path_is_refused(bundle: Path, tmp_path: Path, name: str, problem: str, capsys) -> None:
    b = _copy(bundle, tmp_path)
    m = _manifest(b)
    m["files"][name] = dict(m["files"]["targets.npy"])
    _write_manifest(b, m)
    with pytest.raises(UserError) as err:
        load_bundle(b, device="cpu")
    _one_line(err, str(b / "manifest.json"), repr(name), problem)
    assert cli(["predict", str(b), "x.png"]) == 1
    got = capsys.readouterr().err
    assert problem in got and "Traceback" not in got


def test_manifest_listing_a_missing_file_is_refused(bundle: Path, tmp_path: Path) -> None:
    b = _copy(bundle, tmp_path)
    m = _manifest(b)
    m["files"]["extra.npy"] = dict(m["files"]["targets.npy"])
    _write_manifest(b, m)
    with pytest.raises(UserError) as err:
        load_bundle(b, device="cpu")
    _one_line(err, str(b / "extra.npy"), "missing from the bundle")


def test_manifest_that_leaves_out_a_required_file_is_refused(bundle: Path, tmp_path: Path) -> None:
    """Otherwise encoder.onnx would be served unchecked: here it is swapped, and its record dropped."""
    b = _copy(bundle, tmp_path)
    m = _manifest(b)
    del m["files"]["encoder.onnx"]
    _write_manifest(b, m)
    (b / "encoder.onnx").write_bytes((b / "encoder.onnx").read_bytes() + b"\0")
    with pytest.raises(UserError) as err:
        load_bundle(b, device="cpu")
    _one_line(err, str(b / "manifest.json"), "lists no encoder.onnx")


@pytest.mark.parametrize("field, value, message", [
    ("format_version", None, "positive integer"),
    ("format_version", "2", "positive integer"),
    ("format_version", 0, "positive integer"),
    ("format_version", True, "positive integer"),
    ("format_version", mf.FORMAT_VERSION + 1, "newer than this supemb reads"),
    ("format", "other-bundle", "not a supemb bundle manifest"),
    ("files", ["encoder.onnx"], "\"files\" must map"),
    ("files", {"targets.npy": {"sha256": "x"}}, "needs \"sha256\" and \"bytes\""),
    ("knn", {"k": 0}, "k must be a positive integer"),
    ("knn", {"k": 5, "temperature": "hot"}, "temperature must be a positive number"),
    ("knn", {"k": 5, "temperature": -0.1}, "temperature must be a positive number"),
    ("knn", {"k": 5, "reduce": "mode"}, "reduce must be one of"),
    ("knn", [5], "\"knn\" must be a mapping"),
])
def test_bad_manifest_fields_are_refused(bundle: Path, tmp_path: Path, field: str, value, message: str) -> None:
    b = _copy(bundle, tmp_path)
    m = _manifest(b)
    if value is None:
        del m[field]
    else:
        m[field] = value
    _write_manifest(b, m)
    with pytest.raises(UserError) as err:
        load_bundle(b, device="cpu")
    _one_line(err, str(b / "manifest.json"), message)


# ------------------------------------------------------------------ hostile zips


def _zip(bundle: Path, out: Path, extra: list[tuple[zipfile.ZipInfo | str, bytes]] = (),
         skip: tuple[str, ...] = (), prefix: str = "") -> Path:
    """A zip of `bundle`'s files (named prefix + name) plus `extra` members, written by hand."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(bundle.iterdir()):
            if f.name not in skip:
                z.write(f, prefix + f.name)
        for info, data in extra:
            z.writestr(info, data)
    return out


def _refused(z: Path, *parts: str) -> None:
    with pytest.raises(UserError) as err:
        load_bundle(z, device="cpu")
    _one_line(err, str(z), *parts)


def test_well_formed_zips_load(bundle: Path, tmp_path: Path, private_tmp: Path) -> None:
    """The controls: flat, in one top-level folder (as `zip -r b.zip b/` makes), with Finder's litter."""
    d = load_bundle(bundle, device="cpu").digest
    flat = _zip(bundle, tmp_path / "flat.zip")
    folder = _zip(bundle, tmp_path / "folder.zip", prefix="b/",
                  extra=[("__MACOSX/b/._manifest.json", b"\0"), ("b/.DS_Store", b"\0")])
    for z in (flat, folder):
        b = load_bundle(z, device="cpu")
        assert b.digest == d and sorted(p.name for p in b.root.iterdir()) == sorted(p.name for p in bundle.iterdir())


def test_a_zips_extracted_copy_goes_with_its_bundle(bundle: Path, tmp_path: Path, private_tmp: Path) -> None:
    """Each load extracts the zip into a private folder: removed when the bundle is dropped (or at exit),
    and at once when the bundle is refused. Five loads used to leave five copies behind."""
    import gc

    z = _zip(bundle, tmp_path / "b.zip")
    b = load_bundle(z, device="cpu")
    assert b.root.parent == private_tmp and b.root.is_dir()
    assert b.predict(np.zeros((16, 16, 3), np.uint8))[0].ok  # served from the extracted copy
    del b
    gc.collect()
    assert not list(private_tmp.iterdir())
    with pytest.raises(UserError, match="digest"):
        load_bundle(z, device="cpu", digest="0" * 64)
    assert not list(private_tmp.iterdir())
    assert cli(["predict", str(z), "--digest", "0" * 64, "x.png"]) == 1
    assert not list(private_tmp.iterdir())
    # a forked worker (gunicorn --preload) that exits normally runs the finalizer too: only the owner removes
    b = load_bundle(z, device="cpu")
    assert b._cleanup.peek()[1:3] == (mf.remove_extracted, (b.root, os.getpid()))
    mf.remove_extracted(b.root, os.getpid() + 1)  # as a forked child would call it
    assert b.root.is_dir()


@pytest.mark.parametrize("path", [123, None, 1.5])
def test_a_bundle_that_is_not_a_path_is_one_line(path) -> None:
    with pytest.raises(UserError, match=f"a bundle is a path .* not {type(path).__name__}$"):
        load_bundle(path, device="cpu")


def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("member, skip, problem", [
    ("../escape.txt", (), "points outside the bundle"),
    ("../../escape.txt", (), "points outside the bundle"),
    ("/tmp/escape.txt", (), "absolute path"),
    ("C:/escape.txt", (), "absolute path"),
    ("notes.txt", (), "not one of the files its manifest lists"),
    ("sub/dir/targets.npy", (), "sub-folders"),
    ("symlink", ("targets.npy",), "symbolic link"),
])
def test_hostile_zip_members_are_refused(bundle: Path, tmp_path: Path, private_tmp: Path, member: str,
                                         skip: tuple, problem: str, capsys) -> None:
    info = _symlink("targets.npy") if member == "symlink" else member
    data = b"/etc/passwd" if member == "symlink" else b"gotcha"
    z = _zip(bundle, tmp_path / "hostile.zip", extra=[(info, data)], skip=skip)
    _refused(z, problem)
    assert not list(private_tmp.iterdir()), "the extraction folder was left behind"
    assert not list(tmp_path.rglob("escape.txt")) and not Path("/tmp/escape.txt").exists()
    assert cli(["predict", str(z), "x.png"]) == 1
    got = capsys.readouterr().err
    assert problem in got and len(got.strip().splitlines()) == 1


def test_zip_holding_a_file_twice_is_refused(bundle: Path, tmp_path: Path, private_tmp: Path) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        z = _zip(bundle, tmp_path / "twice.zip", extra=[("targets.npy", b"other")])
    _refused(z, "'targets.npy' twice")
    assert not list(private_tmp.iterdir())


def test_zip_without_a_manifest_is_refused(bundle: Path, tmp_path: Path, private_tmp: Path) -> None:
    _refused(_zip(bundle, tmp_path / "nomanifest.zip", skip=("manifest.json",)), "has no manifest.json")


def test_damaged_zips_are_refused(bundle: Path, tmp_path: Path, private_tmp: Path) -> None:
    good = _zip(bundle, tmp_path / "good.zip")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(data[: len(data) // 2])
    _refused(truncated, "damaged zip")
    # a byte flipped inside encoder.onnx's compressed data: the zip's own CRC (or inflate) catches it
    with zipfile.ZipFile(good) as zf:
        info = zf.getinfo("encoder.onnx")
        header = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        middle = header + info.compress_size // 2
    flipped = bytearray(data)
    flipped[middle] ^= 0xFF
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(bytes(flipped))
    _refused(corrupt, "damaged zip")
    assert not list(private_tmp.iterdir())


def test_zip_member_sizes_must_be_the_manifests(bundle: Path, tmp_path: Path, private_tmp: Path) -> None:
    """A member declaring another size than the manifest records is refused before it is unzipped."""
    b = _copy(bundle, tmp_path)
    m = _manifest(b)
    m["files"]["targets.npy"]["bytes"] += 1000
    _write_manifest(b, m)
    _refused(_zip(b, tmp_path / "sizes.zip"), "'targets.npy' declares", "manifest says")
    assert not list(private_tmp.iterdir())


def test_zip_bomb_guard(bundle: Path, tmp_path: Path, private_tmp: Path, monkeypatch) -> None:
    """Members whose declared sizes add up past the cap are refused before anything is unzipped:
    here 30 MB of zeros, 30 kB compressed, listed (size and hash) by its manifest, against a 10 MB cap."""
    b = _copy(bundle, tmp_path)
    (b / "thumbnails.npy").write_bytes(bytes(30 << 20))
    m = mf.seal(b, {k: v for k, v in _manifest(b).items() if k != "files"})
    assert m["files"]["thumbnails.npy"]["bytes"] == 30 << 20
    z = _zip(b, tmp_path / "bomb.zip")
    assert z.stat().st_size < 3 << 20
    monkeypatch.setattr(mf, "MAX_BUNDLE_BYTES", 10 << 20)
    _refused(z, "over the cap")
    assert not list(private_tmp.iterdir())
    monkeypatch.setattr(mf, "MAX_MANIFEST_BYTES", 100)  # the manifest itself is capped too
    _refused(_zip(bundle, tmp_path / "big_manifest.zip"), "'manifest.json' declares", "over the 100 allowed")


def test_hostile_manifest_inside_a_zip_names_the_zip(bundle: Path, tmp_path: Path, private_tmp: Path) -> None:
    b = _copy(bundle, tmp_path)
    m = _manifest(b)
    m["files"]["../escape.txt"] = dict(m["files"]["targets.npy"])
    _write_manifest(b, m)
    z = _zip(b, tmp_path / "evil_manifest.zip")
    _refused(z, f"{z}/manifest.json", "directory part")
    assert str(private_tmp) not in str(pytest.raises(UserError, load_bundle, z).value)
    assert not list(private_tmp.iterdir())


def test_a_file_that_is_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "b.zip").write_text("not a zip")
    _refused(tmp_path / "b.zip", "damaged zip")
    (tmp_path / "b.txt").write_text("not a zip")
    _refused(tmp_path / "b.txt", "not a bundle directory")
