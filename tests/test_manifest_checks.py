"""supemb.predict.manifest's newer checks, fast (tiny manifests written in the test, no
model): the bundle digest and its parsing, the strict "files" and "knn" checks of
`read_manifest` and `as_named`. Every refusal is one line naming the file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from manifest_fakes import make_bundle

from supemb.errors import UserError
from supemb.predict import manifest as mf

HEX = "0123456789abcdef" * 4


# ----------------------------------------------------------------- digest


def test_manifest_digest_is_the_sha256_of_canonical_json() -> None:
    """Sorted keys, no spaces, non-ASCII escaped: the same digest whatever the key order."""
    m = {"b": 1, "a": {"d": [1, 2.5], "c": "é"}}
    canonical = b'{"a":{"c":"\\u00e9","d":[1,2.5]},"b":1}'
    assert mf.manifest_digest(m) == hashlib.sha256(canonical).hexdigest()
    assert mf.manifest_digest({"a": {"c": "é", "d": [1, 2.5]}, "b": 1}) == mf.manifest_digest(m)
    assert mf.manifest_digest({**m, "b": 2}) != mf.manifest_digest(m)


@pytest.mark.parametrize(("text", "want"), [
    (HEX, HEX),
    ("sha256:" + HEX.upper(), HEX),
    ("  SHA256:" + HEX + "\n", HEX),
])
def test_parse_digest_accepts_any_case_and_the_prefix(text: str, want: str) -> None:
    assert mf.parse_digest(text) == want


@pytest.mark.parametrize("text", [HEX[:-1], HEX + "0", HEX[:-1] + "g", "sha256:", "md5:" + HEX, HEX + "sha256:",
                                  "sha256:sha256:" + HEX, ""])
def test_parse_digest_refuses(text: str) -> None:
    with pytest.raises(UserError) as err:
        mf.parse_digest(text)
    assert str(err.value) == f"digest {text!r} is not a sha256 (64 hex characters, as `supemb predict` prints)"


def test_check_digest() -> None:
    m = {"format": mf.FORMAT, "x": [1, 2]}
    digest = mf.manifest_digest(m)
    assert mf.check_digest("b.zip", m, "sha256:" + digest.upper()) == digest
    with pytest.raises(UserError) as err:
        mf.check_digest(Path("b.zip"), m, HEX)
    assert str(err.value) == (f"b.zip: bundle digest {digest[:16]}... is not the expected {HEX[:16]}...: "
                              "the bundle (its manifest or a file it lists) has changed since it was pinned")
    with pytest.raises(UserError, match=r"^digest 'abc' is not a sha256"):
        mf.check_digest("b.zip", m, "abc")


# ------------------------------------------- read_manifest: other fields


def test_smallest_embedding_and_label_list_pass(tmp_path: Path) -> None:
    """A 1-d embedding, one class name (refusals: test_manifest_mutants.py's test_read_manifest_refuses)."""
    make_bundle(tmp_path, embedding_dim=1, task="classification", labels=["only"])
    m = mf.read_manifest(tmp_path)
    assert m["embedding_dim"] == 1 and m["labels"] == ["only"]


# ------------------------------------------------- read_manifest: "files"


def _refusal(root: Path, manifest: dict) -> str:
    """read_manifest's message for `manifest` written into `root`; checks it is one line naming the file."""
    (root / mf.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UserError) as err:
        mf.read_manifest(root)
    msg = str(err.value)
    assert msg.startswith(f"{root / mf.MANIFEST}: ") and "\n" not in msg, msg
    return msg[len(str(root / mf.MANIFEST)) + 2:]


@pytest.mark.parametrize(("name", "problem"), [
    ("", "is not a file name"),
    ("a/b", "has a directory part (a bundle is one flat folder)"),
    ("a\\b", "has a directory part (a bundle is one flat folder)"),
    ("a\0b", "has a directory part (a bundle is one flat folder)"),
    ("C:x", "has a directory part (a bundle is one flat folder)"),
    ("C:", "has a directory part (a bundle is one flat folder)"),
    (".", "is not a plain file name"),
    ("..", "is not a plain file name"),
    (".hidden", "is not a plain file name"),
    ("manifest.json", "is the manifest itself"),
])
def test_files_must_be_plain_names(tmp_path: Path, name: str, problem: str) -> None:
    m = make_bundle(tmp_path)
    m["files"][name] = {"sha256": HEX, "bytes": 1}
    assert _refusal(tmp_path, m) == f"\"files\" lists {name!r}, which {problem}; refusing the bundle"


def test_plain_names_pass(tmp_path: Path) -> None:
    """One-character names, a colon past the second character, an empty file (0 bytes)."""
    m = make_bundle(tmp_path)
    for name in ("a", "ab:c", "x.bin"):
        m["files"][name] = {"sha256": HEX, "bytes": 0}
    (tmp_path / mf.MANIFEST).write_text(json.dumps(m))
    assert mf.read_manifest(tmp_path)["files"] == m["files"]


@pytest.mark.parametrize("record", [
    "abc", [1], {"sha256": HEX}, {"bytes": 3}, {"sha256": HEX, "bytes": -1}, {"sha256": HEX, "bytes": "3"},
    {"sha256": HEX, "bytes": 1.5}, {"sha256": HEX, "bytes": True}, {"sha256": 5, "bytes": 3},
    {"sha256": None, "bytes": 3},
])
def test_files_records_need_a_sha256_and_a_size(tmp_path: Path, record) -> None:
    m = make_bundle(tmp_path)
    m["files"]["index.faiss"] = record
    assert _refusal(tmp_path, m) == ("\"files\" entry 'index.faiss' needs \"sha256\" and \"bytes\"; "
                                     "the bundle is damaged")


@pytest.mark.parametrize("files", [[], "encoder.onnx", 5])
def test_files_must_be_a_mapping(tmp_path: Path, files) -> None:
    m = make_bundle(tmp_path)
    assert _refusal(tmp_path, {**m, "files": files}) == (
        "\"files\" must map file names to their sha256 and size; the bundle is damaged")


# --------------------------------------------------- read_manifest: "knn"


@pytest.mark.parametrize("knn", [{}, {"k": 1}, {"k": 1, "temperature": 0.5}, {"temperature": 2}, {"temperature": None},
                                 {"temperature": 1e-3, "weighting": "softmax", "reduce": "mean"},
                                 {"weighting": "uniform", "reduce": "median"}])
def test_knn_settings_served(tmp_path: Path, knn: dict) -> None:
    make_bundle(tmp_path, knn=knn)
    assert mf.read_manifest(tmp_path)["knn"] == knn


@pytest.mark.parametrize(("knn", "message"), [
    ([5], "\"knn\" must be a mapping of kNN settings, got [5]"),
    ("k", "\"knn\" must be a mapping of kNN settings, got 'k'"),
    ({"k": 0}, "\"knn\" k must be a positive integer, got 0"),
    ({"k": -3}, "\"knn\" k must be a positive integer, got -3"),
    ({"k": "5"}, "\"knn\" k must be a positive integer, got '5'"),
    ({"k": 2.0}, "\"knn\" k must be a positive integer, got 2.0"),
    ({"k": True}, "\"knn\" k must be a positive integer, got True"),
    ({"k": None}, "\"knn\" k must be a positive integer, got None"),
    ({"temperature": 0}, "\"knn\" temperature must be a positive number, got 0"),
    ({"temperature": -0.5}, "\"knn\" temperature must be a positive number, got -0.5"),
    ({"temperature": float("inf")}, "\"knn\" temperature must be a positive number, got inf"),
    ({"temperature": float("nan")}, "\"knn\" temperature must be a positive number, got nan"),
    ({"temperature": "1"}, "\"knn\" temperature must be a positive number, got '1'"),
    ({"temperature": True}, "\"knn\" temperature must be a positive number, got True"),
    ({"uncertainty_scale": 0}, "\"knn\" uncertainty_scale must be a positive number, got 0"),
    ({"uncertainty_scale": -2.0}, "\"knn\" uncertainty_scale must be a positive number, got -2.0"),
    ({"uncertainty_scale": float("nan")}, "\"knn\" uncertainty_scale must be a positive number, got nan"),
    ({"uncertainty_scale": "1.5"}, "\"knn\" uncertainty_scale must be a positive number, got '1.5'"),
    ({"uncertainty_scale": False}, "\"knn\" uncertainty_scale must be a positive number, got False"),
    ({"weighting": "inverse"}, "\"knn\" weighting must be one of softmax, uniform, got 'inverse'"),
    ({"weighting": None}, "\"knn\" weighting must be one of softmax, uniform, got None"),
    ({"reduce": "max"}, "\"knn\" reduce must be one of mean, median, got 'max'"),
    ({"weighting": "uniform", "reduce": "MEAN"}, "\"knn\" reduce must be one of mean, median, got 'MEAN'"),
])
def test_knn_settings_refused(tmp_path: Path, knn, message: str) -> None:
    m = make_bundle(tmp_path)
    assert _refusal(tmp_path, {**m, "knn": knn}) == message


def test_residual_head_served(tmp_path: Path) -> None:
    knn = {"k": 5, "residual": {"weight": [0.5, -1, 0.0, 2e-3], "bias": -3}}
    make_bundle(tmp_path, knn=knn)
    assert mf.read_manifest(tmp_path)["knn"] == knn


@pytest.mark.parametrize(("residual", "message"), [
    ([1, 2], "\"knn\" residual must be a mapping with weight, bias, got '[1, 2]'"),
    ({"weight": [1, 2, 3, 4]}, "\"knn\" residual must be a mapping with weight, bias, got \"{'weight': [1, 2, 3, 4]}\""),
    ({"weight": [1, 2, 3], "bias": 0}, "\"knn\" residual weight must be 4 finite numbers (one per embedding dimension)"),
    ({"weight": [1, 2, 3, float("nan")], "bias": 0},
     "\"knn\" residual weight must be 4 finite numbers (one per embedding dimension)"),
    ({"weight": [1, 2, 3, "4"], "bias": 0},
     "\"knn\" residual weight must be 4 finite numbers (one per embedding dimension)"),
    ({"weight": [1, 2, 3, 4], "bias": float("inf")}, "\"knn\" residual bias must be a finite number, got inf"),
    ({"weight": [1, 2, 3, 4], "bias": None}, "\"knn\" residual bias must be a finite number, got None"),
])
def test_residual_head_refused(tmp_path: Path, residual, message: str) -> None:
    m = make_bundle(tmp_path)
    assert _refusal(tmp_path, {**m, "knn": {"k": 5, "residual": residual}}) == message


def test_residual_head_needs_a_value_bundle(tmp_path: Path) -> None:
    m = make_bundle(tmp_path)
    bad = {**m, "task": "classification", "labels": ["a", "b"], "knn": {"residual": {"weight": [0] * 4, "bias": 0}}}
    assert _refusal(tmp_path, bad) == "\"knn\" residual serves values; a classification bundle cannot have one"


# ---------------------------------------------------------------- as_named


def test_as_named_puts_the_zip_where_the_extraction_folder_was() -> None:
    """Arguments pass through; a UserError naming `root` is raised again naming `source`, one line, no chain."""
    def check(root, a, b):
        if a == "fail":
            raise UserError(f"{root}/manifest.json: bad {b} (in {root})")
        return root, a, b

    root, source = Path("/tmp/supemb-bundle-x"), Path("b.zip")
    assert mf.as_named(check, root, source, 1, 2) == (root, 1, 2)
    with pytest.raises(UserError) as err:
        mf.as_named(check, root, source, "fail", "y")
    assert str(err.value) == "b.zip/manifest.json: bad y (in b.zip)"
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_as_named_leaves_an_error_alone_when_root_is_the_source() -> None:
    original = UserError("b/manifest.json: bad")

    def check(root):
        raise original

    with pytest.raises(UserError) as err:
        mf.as_named(check, Path("b"), Path("b"))
    assert err.value is original
    with pytest.raises(ValueError):  # other errors are not touched
        mf.as_named(lambda root: int("x"), Path("r"), Path("s"))
