"""The serving subcommands' argument checks and output (supemb/commands.py), in process and
fast (mutmut's selection: docs/mutation.md). The export, reindex and bundle loading they hand
over to are replaced by fakes that record their arguments; tests/test_cli_errors.py runs the
same commands on a real run and bundle."""

from __future__ import annotations

import json
import sys
import types
import zipfile
from pathlib import Path

import pytest
from cli_calls import call as _call

from supemb import commands
from supemb.errors import UsageError
from supemb.predict.manifest import manifest_digest

MANIFEST = {"format": 1, "files": {"encoder.onnx": "ab"}, "task": "regression"}
DIGEST = manifest_digest(MANIFEST)
HEX = "0123456789abcdef" * 4


def _fake_module(monkeypatch, name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    monkeypatch.setitem(sys.modules, name, mod)
    return mod


def _usage(argv: list[str], message: str, capsys) -> None:
    """`supemb ARGV` exits 2 with exactly the line "supemb CMD: error: MESSAGE"."""
    assert _call(argv, capsys) == (2, "", f"supemb {argv[0]}: error: {message}\n")


# ------------------------------------------------------------------ the checks shared by the handlers


def test_processes_must_be_positive() -> None:
    ns = types.SimpleNamespace
    assert commands._processes(ns(processes=1)) == 1 and commands._processes(ns(processes=6)) == 6
    with pytest.raises(UsageError) as err:
        commands._processes(ns(processes=0))
    assert str(err.value) == "--processes must be >= 1, got 0"


def test_at_least_checks_only_given_values() -> None:
    commands._at_least("--k", None, 1)
    commands._at_least("--k", 1, 1)
    commands._at_least("--thumbnails", 0, 0)
    with pytest.raises(UsageError) as err:
        commands._at_least("--thumbnails", -1, 0)
    assert str(err.value) == "--thumbnails must be >= 0, got -1"


def test_data_format_accepts_the_plugins_formats_only() -> None:
    from supemb import modalities

    assert all(commands._data_format(f) == f for f in modalities.formats())
    with pytest.raises(UsageError) as err:
        commands._data_format("tiff")
    assert str(err.value) == f"--format must be one of {', '.join(modalities.formats())}, got 'tiff'"


def test_pin_parses_digest_or_is_a_usage_error() -> None:
    ns = types.SimpleNamespace
    assert commands._pin(ns(digest=None)) is None
    assert commands._pin(ns(digest="sha256:" + HEX.upper())) == HEX
    with pytest.raises(UsageError) as err:
        commands._pin(ns(digest="abc"))
    assert str(err.value).startswith("--digest: digest 'abc' is not a sha256")
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_digest_of_a_bundle_directory_and_zip(tmp_path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(MANIFEST, indent=3))
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as z:
        z.writestr("manifest.json", json.dumps(MANIFEST))
    assert commands._digest_of(tmp_path / "b") == DIGEST
    assert commands._digest_of(str(tmp_path / "b.zip")) == DIGEST


# ------------------------------------------------------------------ supemb export


@pytest.fixture
def exported(monkeypatch) -> list:
    """A stand-in export_run: records its call and writes only the manifest."""
    calls = []

    def export_run(run, out, **kw):
        calls.append((run, out, kw))
        Path(out).mkdir()
        (Path(out) / "manifest.json").write_text(json.dumps(MANIFEST))
        return {"onnx": {"parity_max_abs_diff": {"a": 2e-6, "b": 3.1e-5}}, "modality": "image",
                "task": "regression", "embedding_dim": 8, "gallery": {"items": 40}, "index": {"kind": "flat"}}

    _fake_module(monkeypatch, "supemb.export.writer", export_run=export_run)
    return calls


def _says_what_it_skipped(calls: list, command: str, capsys) -> None:
    """The latest call's `on_skip` (taken out of its recorded kwargs) prints the item and why, on stderr."""
    calls[-1][2].pop("on_skip")("g/x.png: truncated image")
    assert capsys.readouterr().err == f"supemb {command}: skipped: g/x.png: truncated image\n"


def test_export_passes_every_flag_and_prints_the_bundle(exported, tmp_path, capsys) -> None:
    out = tmp_path / "b"
    code, stdout, err = _call(["export", "runs/a", "--out", str(out)], capsys)
    assert (code, err) == (0, "")
    assert stdout == (f"wrote {out}: image regression, 8-d, gallery 40 (flat index), "
                      f"parity max |ONNX - PyTorch| 3.1e-05\ndigest {DIGEST}\n")
    _says_what_it_skipped(exported, "export", capsys)
    assert exported[0] == ("runs/a", str(out), dict(
        gallery=None, opset=None, fp16=False, index="flat", k=None, unit="", name=None, thumbnails=0,
        force=False, on_error="raise", processes=1, device="cpu", detect_faces=False))
    argv = ["export", "runs/a", "--out", str(tmp_path / "c"), "--gallery", "g.csv", "--opset", "17", "--fp16",
            "--index", "hnsw", "--k", "9", "--unit", "years", "--name", "ages", "--thumbnails", "32",
            "--on-error", "skip", "--force", "--processes", "3", "--device", "cuda", "--detect-faces"]
    assert _call(argv, capsys)[0] == 0
    _says_what_it_skipped(exported, "export", capsys)
    assert exported[1][2] == dict(
        gallery="g.csv", opset=17, fp16=True, index="hnsw", k=9, unit="years", name="ages", thumbnails=32,
        force=True, on_error="skip", processes=3, device="cuda", detect_faces=True)


@pytest.mark.parametrize("unit, suffix", [("years", " years"), ("", "")])
def test_export_prints_the_residual_heads_parity_in_the_targets_unit(monkeypatch, unit, suffix, tmp_path,
                                                                     capsys) -> None:
    def export_run(run, out, **kw):
        Path(out).mkdir()
        (Path(out) / "manifest.json").write_text(json.dumps(MANIFEST))
        return {"onnx": {"parity_max_abs_diff": {"a": 2e-6}, "parity_head_max_abs_diff": 0.0143},
                "modality": "image", "task": "regression", "embedding_dim": 8, "gallery": {"items": 40},
                "index": {"kind": "flat"}, "target": {"name": "age", "unit": unit}}

    _fake_module(monkeypatch, "supemb.export.writer", export_run=export_run)
    out = tmp_path / "b"
    code, stdout, err = _call(["export", "runs/a", "--out", str(out)], capsys)
    assert (code, err) == (0, "")
    assert stdout.splitlines()[0] == (f"wrote {out}: image regression, 8-d, gallery 40 (flat index), "
                                      f"parity max |ONNX - PyTorch| 2e-06, residual head 0.014{suffix}")


@pytest.mark.parametrize("flags, message", [
    (["--k", "0"], "--k must be >= 1, got 0"),
    (["--thumbnails", "-1"], "--thumbnails must be >= 0, got -1"),
    (["--opset", "0"], "--opset must be >= 1, got 0"),
    (["--processes", "0"], "--processes must be >= 1, got 0"),
])
def test_export_rejects_values_out_of_range_before_exporting(exported, flags, message, tmp_path, capsys) -> None:
    _usage(["export", "runs/a", "--out", str(tmp_path / "b"), *flags], message, capsys)
    assert exported == [] and not (tmp_path / "b").exists()


def test_export_accepts_the_smallest_values(exported, tmp_path, capsys) -> None:
    argv = ["export", "r", "--out", str(tmp_path / "b"), "--k", "1", "--thumbnails", "0", "--opset", "1"]
    assert _call(argv, capsys)[0] == 0
    assert (exported[0][2]["k"], exported[0][2]["opset"]) == (1, 1)


# ------------------------------------------------------------------ supemb index


@pytest.fixture
def reindexed(monkeypatch, tmp_path) -> list:
    calls = []
    (tmp_path / "manifest.json").write_text(json.dumps(MANIFEST))

    def reindex(bundle, data, **kw):
        calls.append((bundle, data, kw))
        return {"gallery": {"items": 12}, "index": {"kind": "ivf"}}

    _fake_module(monkeypatch, "supemb.export.writer", reindex=reindex)
    return calls


def test_index_passes_its_flags_and_prints_the_new_gallery(reindexed, tmp_path, capsys) -> None:
    assert _call(["index", str(tmp_path), "--data", "d.csv"], capsys) == (
        0, f"{tmp_path}: gallery now 12 items (ivf index), digest {DIGEST}\n", "")
    _says_what_it_skipped(reindexed, "index", capsys)
    assert reindexed[0] == (str(tmp_path), "d.csv", dict(append=False, index=None, target=None, fmt="auto",
                                                         on_error="raise", processes=1, device="cpu"))
    argv = ["index", str(tmp_path), "--data", "d", "--append", "--index", "flat", "--target", "age",
            "--format", "csv", "--on-error", "skip", "--processes", "2", "--device", "auto"]
    assert _call(argv, capsys)[0] == 0
    _says_what_it_skipped(reindexed, "index", capsys)
    assert reindexed[1][2] == dict(append=True, index="flat", target="age", fmt="csv", on_error="skip",
                                   processes=2, device="auto")


@pytest.mark.parametrize("command", ["export", "index"])
@pytest.mark.parametrize("flags, skips, code", [
    (["--on-error", "skip"], 2, 1),  # left out inputs it was given: exit code 1, as predict
    (["--on-error", "skip"], 0, 0),
    ([], 2, 0),  # export of a run trained with --on-error skip leaves out what training left out: not a failure
])
def test_export_and_index_exit_1_when_they_skipped_what_they_were_asked_to(monkeypatch, tmp_path, capsys,
                                                                          command, flags, skips, code) -> None:
    def work(*args, **kw):
        for i in range(skips):
            kw["on_skip"](f"g/{i}.png: truncated image")
        (tmp_path / "manifest.json").write_text(json.dumps(MANIFEST))
        return {"onnx": {"parity_max_abs_diff": {"a": 2e-6}}, "modality": "image", "task": "regression",
                "embedding_dim": 8, "gallery": {"items": 40}, "index": {"kind": "flat"}}

    _fake_module(monkeypatch, "supemb.export.writer", export_run=work, reindex=work)
    argv = ["export", "runs/a", "--out", str(tmp_path)] if command == "export" else [
        "index", str(tmp_path), "--data", "d.csv"]
    got, _, err = _call(argv + flags, capsys)
    assert got == code
    assert err == "".join(f"supemb {command}: skipped: g/{i}.png: truncated image\n" for i in range(skips))


def test_index_checks_format_and_processes_first(reindexed, capsys) -> None:
    from supemb import modalities

    _usage(["index", "b", "--data", "d", "--format", "tiff"],
           f"--format must be one of {', '.join(modalities.formats())}, got 'tiff'", capsys)
    _usage(["index", "b", "--data", "d", "--processes", "0"], "--processes must be >= 1, got 0", capsys)
    assert reindexed == []


# ------------------------------------------------------------------ supemb predict


def _pred(source="a.png", ok=True, error=None, value=None, label=None, uncertainty=0.25, neighbours=(),
          familiarity=None, unfamiliar=False, face=None) -> types.SimpleNamespace:
    """What `_format_prediction` reads of a Prediction."""
    d = dict(source=source, ok=ok, error=error, value=value, label=label, uncertainty=uncertainty,
             familiarity=familiarity, unfamiliar=unfamiliar, face=face)
    return types.SimpleNamespace(**d, neighbours=list(neighbours), to_dict=lambda: dict(d))


def _near(label, similarity):
    return types.SimpleNamespace(label=label, similarity=similarity)


def test_format_prediction_lines() -> None:
    """value ± spread [unit], or label (p=...); the first 5 neighbours; familiarity and face when known."""
    near = [_near(30.456, 0.9876), _near(41, 0.5), _near(20.0, -0.25), _near(1.004, 0.1), _near(2, 0.2),
            _near(99, 0.0)]
    fmt = commands._format_prediction
    assert fmt(_pred(ok=False, error="unreadable"), "years") == "a.png\terror: unreadable"
    assert fmt(_pred(value=31.456, uncertainty=2.3449, neighbours=near), "years") == (
        "a.png\t31.46 ± 2.34 years\tneighbours: 30.46@0.99, 41@0.50, 20.0@-0.25, 1.0@0.10, 2@0.20")
    one = _pred(value=3.0, uncertainty=1.0, neighbours=near[:1])
    assert fmt(one, "") == "a.png\t3.00 ± 1.00\tneighbours: 30.46@0.99"
    cls = _pred(label="cat", uncertainty=0.25, neighbours=[_near("cat", 0.75), _near("dog", 0.5)])
    assert fmt(cls, "years") == "a.png\tcat (p=0.75)\tneighbours: cat@0.75, dog@0.50"
    familiar = _pred(label="cat", neighbours=[_near("cat", 0.75)], familiarity=0.12345)
    assert fmt(familiar, "") == "a.png\tcat (p=0.75)\tfamiliarity: 0.123\tneighbours: cat@0.75"
    odd = _pred(label="cat", neighbours=[], familiarity=0.01, unfamiliar=True,
                face={"box": [1.4, 2.6, 10.2, 20.7], "score": 0.987})
    assert fmt(odd, "") == ("a.png\tcat (p=0.75)\tfamiliarity: 0.010 UNFAMILIAR: unlike the gallery"
                            "\tneighbours: \tface [1, 3, 10, 21] score 0.99")


@pytest.fixture
def loaded(monkeypatch) -> types.SimpleNamespace:
    """A stand-in load_bundle: records (path, device, digest); its bundle records predict's call
    and returns `rec.preds`."""
    rec = types.SimpleNamespace(loads=[], predicts=[], preds=[])
    bundle = types.SimpleNamespace(digest=HEX, unit="years",
                                   predict=lambda inputs, **kw: rec.predicts.append((inputs, kw)) or rec.preds)
    _fake_module(monkeypatch, "supemb.predict.bundle",
                 load_bundle=lambda path, **kw: rec.loads.append((path, kw)) or bundle)
    return rec


def test_predict_defaults_and_text_output(loaded, capsys) -> None:
    loaded.preds = [_pred("x.png", value=3.0, uncertainty=1.0), _pred("y.png", value=4.0, uncertainty=0.5)]
    assert _call(["predict", "b", "x.png", "y.png"], capsys) == (
        0, "x.png\t3.00 ± 1.00 years\tneighbours: \ny.png\t4.00 ± 0.50 years\tneighbours: \n",
        f"supemb predict: bundle b digest {HEX}\n")
    assert loaded.loads == [("b", dict(device="auto", digest=None))]
    assert loaded.predicts == [(["x.png", "y.png"], dict(k=None, batch_size=64, on_error="raise", reduce=None,
                                                         detect=True, faces="largest"))]


def test_predict_flags_reach_the_bundle(loaded, capsys) -> None:
    argv = ["predict", "b", "x.png", "--k", "3", "--median", "--batch-size", "8", "--on-error", "skip",
            "--device", "cpu", "--no-detect", "--all-faces", "--digest", HEX.upper()]
    assert _call(argv, capsys)[0] == 0
    assert loaded.loads == [("b", dict(device="cpu", digest=HEX))]
    assert loaded.predicts == [(["x.png"], dict(k=3, batch_size=8, on_error="skip", reduce="median",
                                                detect=False, faces="all"))]


def test_predict_takes_files_on_both_sides_of_an_option_in_their_order(loaded, capsys) -> None:
    assert _call(["predict", "b", "x.png", "--k", "2", "y.png", "--json", "z.png"], capsys)[0] == 0
    assert [(inputs, kw["k"]) for inputs, kw in loaded.predicts] == [(["x.png", "y.png", "z.png"], 2)]
    assert _call(["predict", "b", "x.png", "--k", "2", "y.png", "--", "-z.png", "--k"], capsys)[0] == 0
    assert loaded.predicts[-1][0] == ["x.png", "y.png", "-z.png", "--k"]  # after "--", every word is a file


@pytest.mark.parametrize("argv, rest", [
    (["predict", "b", "x.png", "--k", "2", "y.png", "--kay", "3"], "y.png --kay 3"),
    (["eval", "b", "--data", "d", "more.csv"], "more.csv"),  # only predict takes a list of files
])
def test_an_unknown_option_or_a_stray_word_is_still_a_usage_error(loaded, argv, rest, capsys) -> None:
    code, out, err = _call(argv, capsys)
    assert (code, out) == (2, "") and err.endswith(f"supemb {argv[0]}: error: unrecognized arguments: {rest}\n")
    assert err.startswith(f"usage: supemb {argv[0]} ")  # the command's own usage
    assert loaded.loads == []


def test_predict_skipped_inputs_go_to_stderr_and_exit_1(loaded, capsys) -> None:
    loaded.preds = [_pred("x.png", ok=False, error="x.png: not an image"), _pred("y.png", value=4.0),
                    _pred("z.png", ok=False, error="z.png: empty")]
    code, out, err = _call(["predict", "b", "x.png", "y.png", "z.png", "--on-error", "skip"], capsys)
    assert code == 1 and out == "y.png\t4.00 ± 0.25 years\tneighbours: \n"
    assert err.splitlines()[1:] == ["supemb predict: skipped: x.png: not an image",
                                    "supemb predict: skipped: z.png: empty"]


def test_predict_json_lists_every_prediction_with_the_digest(loaded, capsys) -> None:
    loaded.preds = [_pred("x.png", value=3.0), _pred("z.png", ok=False, error="bad")]
    code, out, _ = _call(["predict", "b", "x.png", "z.png", "--json"], capsys)
    want = [{**p.to_dict(), "bundle_digest": HEX} for p in loaded.preds]
    assert code == 1 and out == json.dumps(want, indent=1) + "\n"


@pytest.mark.parametrize("flags, message", [
    (["--k", "0"], "--k must be >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--on-error", "fail", "--digest", "abc"],
     "--digest: digest 'abc' is not a sha256 (64 hex characters, as `supemb predict` prints)"),
])
def test_predict_rejects_bad_flags_before_loading(loaded, flags, message, capsys) -> None:
    _usage(["predict", "b", "x.png", *flags], message, capsys)
    assert loaded.loads == []


# ------------------------------------------------------------------ supemb eval


@pytest.fixture
def evaluated(loaded, monkeypatch) -> list:
    class Calls(list):
        metrics: dict

    calls = Calls()
    metrics = {"items": 3, "skipped": ["x: bad", "y: bad"], "k": 5, "in_gallery": 0, "served_mae": 1.23456}
    monkeypatch.setattr(commands, "evaluate_bundle",
                        lambda bundle, data, **kw: calls.append((bundle.digest, data, kw)) or dict(metrics))
    calls.metrics = metrics  # a test may change what the next evaluation returns
    return calls


def test_eval_defaults_and_text_output(evaluated, loaded, capsys) -> None:
    assert _call(["eval", "b", "--data", "d.csv"], capsys) == (
        1, "items\t3\nskipped: x: bad\nskipped: y: bad\nk\t5\nin_gallery\t0\nserved_mae\t1.2346\n",
        f"supemb eval: bundle b digest {HEX}\n")
    assert loaded.loads == [("b", dict(device="auto", digest=None))]
    assert evaluated == [(HEX, "d.csv", dict(target=None, fmt="auto", k=None, on_error="raise", detect=True))]


def test_eval_flags_and_json(evaluated, loaded, capsys) -> None:
    argv = ["eval", "b", "--data", "d", "--target", "age", "--format", "csv", "--k", "4", "--on-error", "skip",
            "--device", "cpu", "--no-detect", "--digest", HEX, "--json"]
    code, out, _ = _call(argv, capsys)
    want = {"items": 3, "skipped": ["x: bad", "y: bad"], "k": 5, "in_gallery": 0, "served_mae": 1.23456,
            "bundle_digest": HEX}
    assert code == 1 and out == json.dumps(want, indent=2) + "\n"
    assert loaded.loads == [("b", dict(device="cpu", digest=HEX))]
    assert evaluated == [(HEX, "d", dict(target="age", fmt="csv", k=4, on_error="skip", detect=False))]


def test_eval_says_when_its_data_holds_the_gallery(evaluated, loaded, capsys) -> None:
    evaluated.metrics.update(in_gallery=2, skipped=[])  # nothing left out: exit code 0
    code, out, err = _call(["eval", "b", "--data", "d.csv"], capsys)
    assert code == 0 and "in_gallery\t2\n" in out
    assert err.splitlines()[1] == ("supemb eval: note: 2 of 3 items are in the bundle's gallery (each is its own "
                                   "nearest neighbour), so these figures are optimistic; evaluate on data the "
                                   "gallery does not hold")


def test_eval_rejects_bad_flags_before_loading(evaluated, loaded, capsys) -> None:
    from supemb import modalities

    _usage(["eval", "b", "--data", "d", "--k", "0"], "--k must be >= 1, got 0", capsys)
    _usage(["eval", "b", "--data", "d", "--format", "tiff"],
           f"--format must be one of {', '.join(modalities.formats())}, got 'tiff'", capsys)
    _usage(["eval", "b", "--data", "d", "--digest", "abc"],
           "--digest: digest 'abc' is not a sha256 (64 hex characters, as `supemb predict` prints)", capsys)
    assert loaded.loads == [] and evaluated == []
