"""Bundle zips (supemb.predict.manifest.open_bundle_dir), fast: zips of tiny fake bundles
built in the test. A zip holds the bundle flat or in one top-level folder; anything that
could write outside the extraction folder, any member the manifest does not list or whose
size it does not match, is refused whole with one line naming the zip, and the
extraction folder is removed again."""

from __future__ import annotations

import io
import stat
import types
import zipfile
from pathlib import Path

import pytest
from manifest_fakes import CONTENT, bundle_members, make_bundle, private_tmp, write_zip  # noqa: F401 (fixture)

from supemb.errors import UserError
from supemb.predict import manifest as mf


@pytest.fixture()
def members(tmp_path: Path) -> dict[str, bytes]:
    """{name: bytes} of a sealed fake bundle, manifest first."""
    make_bundle(tmp_path / "b")
    return bundle_members(tmp_path / "b")


def _refusal(z_path: Path, private_tmp: Path) -> str:
    """open_bundle_dir's message for the zip, less the zip's name; nothing may be left in the temporary folder."""
    with pytest.raises(UserError) as err:
        mf.open_bundle_dir(z_path)
    msg = str(err.value)
    assert msg.startswith(f"{z_path}: ") and "\n" not in msg, msg
    assert list(private_tmp.iterdir()) == []
    return msg[len(str(z_path)) + 2:]


def _opened(z_path: Path, private_tmp: Path) -> Path:
    out = mf.open_bundle_dir(z_path)
    assert out.parent == private_tmp and out.name.startswith("supemb-bundle-")
    assert sorted(p.name for p in out.iterdir()) == sorted([*CONTENT, mf.MANIFEST])
    for name, data in CONTENT.items():
        assert (out / name).read_bytes() == data
    mf.verify_files(out, mf.read_manifest(out))
    return out


def test_a_flat_zip_opens(tmp_path: Path, members: dict, private_tmp: Path) -> None:
    _opened(write_zip(tmp_path / "b.zip", members, zipfile.ZIP_DEFLATED), private_tmp)


@pytest.mark.parametrize("sep", ["/", "\\"])
def test_a_zip_of_one_folder_opens_and_its_litter_is_skipped(tmp_path: Path, members: dict, private_tmp: Path,
                                                             sep: str) -> None:
    """Finder's __MACOSX/ and .DS_Store (first, so skipping them must go on), folder entries, Windows separators."""
    litter = {"__MACOSX/b/._encoder.onnx": b"mac", ".DS_Store": b"ds", f"b{sep}.DS_Store": b"ds", "b/": b""}
    z_path = write_zip(tmp_path / "b.zip", {**litter, **{f"b{sep}{n}": d for n, d in members.items()}})
    _opened(z_path, private_tmp)


@pytest.mark.parametrize(("extra", "message"), [
    ({"/abs.bin": b"x"}, "member '/abs.bin' has an absolute path; refusing the zip"),
    ({"\\abs.bin": b"x"}, "member '\\\\abs.bin' has an absolute path; refusing the zip"),
    ({"C:x.bin": b"x"}, "member 'C:x.bin' has an absolute path; refusing the zip"),
    ({"C:": b"x"}, "member 'C:' has an absolute path; refusing the zip"),
    ({"../x.bin": b"x"}, "member '../x.bin' points outside the bundle (\"..\"); refusing the zip"),
    ({"sub/../../x.bin": b"x"}, "member 'sub/../../x.bin' points outside the bundle (\"..\"); refusing the zip"),
    ({"sub/x.bin": b"x"},
     "members in sub-folders; a bundle zip holds the bundle's files, flat or in one top-level folder"),
    ({"a": b"x"}, "member 'a' is not one of the files its manifest lists"),
    ({"notes.txt": b"x"}, "member 'notes.txt' is not one of the files its manifest lists"),
])
def test_flat_zip_with_a_bad_member_is_refused(tmp_path: Path, members: dict, private_tmp: Path, extra: dict,
                                               message: str) -> None:
    assert _refusal(write_zip(tmp_path / "b.zip", {**members, **extra}), private_tmp) == message


@pytest.mark.parametrize("names", [
    ["a/manifest.json", "b/encoder.onnx"],  # two top-level folders
    ["b/manifest.json", "encoder.onnx"],  # a folder and a flat file
    ["b/c/manifest.json"],  # two levels deep
])
def test_members_in_sub_folders_are_refused(tmp_path: Path, members: dict, private_tmp: Path, names: list) -> None:
    z_path = write_zip(tmp_path / "b.zip", {n: members[n.rsplit("/", 1)[-1]] for n in names})
    assert _refusal(z_path, private_tmp) == ("members in sub-folders; a bundle zip holds the bundle's files, "
                                             "flat or in one top-level folder")


def test_a_symbolic_link_is_refused(tmp_path: Path, members: dict, private_tmp: Path) -> None:
    z_path = write_zip(tmp_path / "b.zip", members)
    link = zipfile.ZipInfo("link.bin")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(z_path, "a") as z:
        z.writestr(link, "/etc/passwd")
    assert _refusal(z_path, private_tmp) == "member 'link.bin' is a symbolic link; refusing the zip"


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("folder", ["", "b/"])
def test_a_member_twice_is_refused(tmp_path: Path, members: dict, private_tmp: Path, folder: str) -> None:
    z_path = write_zip(tmp_path / "b.zip", {folder + n: d for n, d in members.items()})
    with zipfile.ZipFile(z_path, "a") as z:
        z.writestr(folder + "index.faiss", CONTENT["index.faiss"])
    assert _refusal(z_path, private_tmp) == "holds 'index.faiss' twice; refusing the zip"


def test_a_zip_without_a_manifest_is_refused(tmp_path: Path, members: dict, private_tmp: Path) -> None:
    z_path = write_zip(tmp_path / "b.zip", {"b/": b"", "__MACOSX/._manifest.json": b"",
                                            "b/encoder.onnx": members["encoder.onnx"]})
    assert _refusal(z_path, private_tmp) == "has no manifest.json: not a zip of a supemb bundle"


def test_a_member_of_another_size_than_listed_is_refused(tmp_path: Path, members: dict, private_tmp: Path) -> None:
    z_path = write_zip(tmp_path / "b.zip", {f"b/{n}": d for n, d in members.items()} | {"b/index.faiss": b"faiss!"})
    assert _refusal(z_path, private_tmp) == ("member 'b/index.faiss' declares 6 bytes but the manifest says 5; "
                                             "refusing the zip")


def test_a_bad_manifest_in_a_zip_is_named_by_the_zip(tmp_path: Path, members: dict, private_tmp: Path) -> None:
    z_path = write_zip(tmp_path / "b.zip", {**members, "manifest.json": b'{"format": "other"}'})
    with pytest.raises(UserError) as err:
        mf.open_bundle_dir(z_path)
    assert str(err.value) == f"{z_path}/manifest.json: not a supemb bundle manifest (no \"format\": \"{mf.FORMAT}\")"
    assert list(private_tmp.iterdir()) == []


def test_a_manifest_over_its_cap_is_refused(tmp_path: Path, members: dict, private_tmp: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    size = len(members[mf.MANIFEST])
    monkeypatch.setattr(mf, "MAX_MANIFEST_BYTES", size - 1)
    z_path = write_zip(tmp_path / "b.zip", members)
    assert _refusal(z_path, private_tmp) == (f"member 'manifest.json' declares {size} bytes, over the {size - 1} "
                                             "allowed; refusing the zip")
    monkeypatch.setattr(mf, "MAX_MANIFEST_BYTES", size)
    _opened(z_path, private_tmp)


@pytest.mark.parametrize("limit", ["cap", "free"])
def test_a_zip_is_refused_past_the_cap_or_the_free_space(tmp_path: Path, members: dict, private_tmp: Path,
                                                         monkeypatch: pytest.MonkeyPatch, limit: str) -> None:
    """What the members besides the manifest declare is compared with both; equal to the limit still opens."""
    total = sum(len(d) for n, d in members.items() if n != mf.MANIFEST)
    asked = []

    def disk_usage(path):
        asked.append(path)
        return types.SimpleNamespace(free=total if limit == "free" else 10 * total)

    monkeypatch.setattr(mf.shutil, "disk_usage", disk_usage)
    monkeypatch.setattr(mf, "MAX_BUNDLE_BYTES", total if limit == "cap" else 10 * total)
    z_path = write_zip(tmp_path / "b.zip", members)
    mf.shutil.rmtree(_opened(z_path, private_tmp))
    assert asked == [str(private_tmp)]
    cap, free = (total - 1, 10 * total) if limit == "cap" else (10 * total, total - 1)
    monkeypatch.setattr(mf, "MAX_BUNDLE_BYTES", cap)
    monkeypatch.setattr(mf.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=free))
    assert _refusal(z_path, private_tmp) == (f"unzips to {total} bytes, over the cap ({cap} bytes, {free} free in "
                                             f"{private_tmp}); refusing the zip")


def test_a_damaged_member_is_refused(tmp_path: Path, members: dict, private_tmp: Path) -> None:
    z_path = write_zip(tmp_path / "b.zip", members)  # stored: the bytes are in the file as they are
    raw = bytearray(z_path.read_bytes())
    at = raw.index(CONTENT["encoder.onnx"]) + 100
    raw[at] ^= 0xFF
    z_path.write_bytes(bytes(raw))
    assert _refusal(z_path, private_tmp) == ("damaged zip (Bad CRC-32 for file 'encoder.onnx'); "
                                             "copy or export the bundle again")


def test_a_member_that_inflates_past_its_size_is_refused(tmp_path: Path, members: dict, private_tmp: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """zipfile stops at the declared size itself; should a reader not, the copy stops there too."""
    real_open = zipfile.ZipFile.open

    def lying_open(self, info, *args, **kwargs):
        src = real_open(self, info, *args, **kwargs)
        return src if info.filename == mf.MANIFEST else io.BytesIO(src.read() + b"!")

    z_path = write_zip(tmp_path / "b.zip", members)
    monkeypatch.setattr(zipfile.ZipFile, "open", lying_open)
    assert _refusal(z_path, private_tmp) == "member 'encoder.onnx' unzips past its declared size; refusing the zip"


def test_what_is_no_zip(tmp_path: Path, private_tmp: Path) -> None:
    (tmp_path / "b.zip").write_text("not a zip")
    assert _refusal(tmp_path / "b.zip", private_tmp) == (
        "damaged zip (no zip directory at its end: truncated or not a zip file); copy or export the bundle again")
    (tmp_path / "b.tar").write_text("not a zip")
    assert _refusal(tmp_path / "b.tar", private_tmp) == "not a bundle directory or a .zip of one"


# ----------------------------------------------------------------- _extract


class _Reader(io.BytesIO):
    """A member's bytes, recording how much each read asks for."""

    def __init__(self, data: bytes, asked: list) -> None:
        super().__init__(data)
        self.asked = asked

    def read(self, n=-1):
        self.asked.append(n)
        return super().read(n)


class _FakeZip:
    def __init__(self, data: bytes) -> None:
        self.data, self.asked = data, []

    def open(self, info):
        return _Reader(self.data, self.asked)


def _info(size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("x.bin")
    info.file_size = size
    return info


MiB = 1 << 20


def test_extract_copies_in_blocks_of_at_most_1_mib(tmp_path: Path) -> None:
    data = bytes(range(256)) * (10 * MiB // 256 // 4)  # 2.5 MiB
    z = _FakeZip(data)
    mf._extract(z, _info(len(data)), tmp_path / "x.bin", len(data), Path("b.zip"))
    assert (tmp_path / "x.bin").read_bytes() == data
    assert all(0 < n <= MiB for n in z.asked) and len(z.asked) == 4  # 1 + 1 + 0.5 MiB, then the end


def test_extract_stops_past_the_declared_size(tmp_path: Path) -> None:
    """More bytes than declared: refused at the block that goes past it (counting every block, not only the last)."""
    z = _FakeZip(b"\0" * (5 * MiB // 2))
    with pytest.raises(UserError) as err:
        mf._extract(z, _info(3 * MiB // 2), tmp_path / "x.bin", 2 * MiB, Path("b.zip"))
    assert str(err.value) == "b.zip: member 'x.bin' unzips past its declared size; refusing the zip"
    assert (tmp_path / "x.bin").stat().st_size == MiB  # the first block only


def test_extract_refuses_a_declared_size_over_the_cap(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        mf._extract(_FakeZip(b"12345"), _info(5), tmp_path / "x.bin", 4, Path("b.zip"))
    assert str(err.value) == "b.zip: member 'x.bin' declares 5 bytes, over the 4 allowed; refusing the zip"
    assert not (tmp_path / "x.bin").exists()
