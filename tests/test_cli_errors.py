"""Every subcommand's error paths, through `supemb.cli.main`: the exit code and the one line.

The contract (supemb/cli.py): 2 when the command line itself is wrong (an
unknown flag or choice, a value out of range, a malformed form), found before
any file is read; 1 when a file, folder, bundle or run is missing, damaged or
not what the command needs (an --out that exists included); 130 on Ctrl-C.
Either way one line "supemb CMD: error: ..." that names the file or flag,
and no traceback unless --debug. Usage-error cases point at paths that do not
exist, so they also show that the flags are checked first.

A tiny training run and its bundle are made once for the module.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_runs import tiny_bundle, tiny_run, tiny_webcam

from supemb.cli import main as cli
from supemb.errors import UserError

NOWHERE = "/nonexistent/supemb-test"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli_errors")


@pytest.fixture(scope="module")
def webcam(work: Path) -> Path:
    """labels.csv (path,temperature,...) and its images."""
    return tiny_webcam(work, seed=4)


@pytest.fixture(scope="module")
def run(work: Path, webcam: Path) -> Path:
    return tiny_run(webcam, work / "run")


@pytest.fixture(scope="module")
def bundle(work: Path, run: Path) -> Path:
    return tiny_bundle(run, work / "bundle")


@pytest.fixture(scope="module")
def bad_data(work: Path, webcam: Path) -> tuple[Path, Path]:
    """A copy of the webcam data with one image truncated: (labels.csv, the bad image)."""
    root = work / "bad_webcam"
    shutil.copytree(webcam.parent, root)
    csv = root / webcam.name
    bad = root / csv.read_text().splitlines()[3].split(",")[0]
    bad.write_bytes(bad.read_bytes()[:40])
    return csv, bad


def _images(csv: Path, n: int) -> list[str]:
    return [str(csv.parent / line.split(",")[0]) for line in csv.read_text().splitlines()[1:n + 1]]


def _call(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `supemb ARGV`; argparse's own errors exit by SystemExit."""
    try:
        code = cli([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def _fails(argv: list, code: int, *names: str, capsys) -> str:
    """Assert `supemb ARGV` exits `code` with one error line naming each of `names`; return that line."""
    got, _, err = _call(argv, capsys)
    assert got == code, f"exit {got}, expected {code}: {err}"
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"supemb {argv[0]}: error:"), line
    for name in names:
        assert str(name) in line, f"{name!r} not in {line!r}"
    return line


# ------------------------------------------------------------------ usage errors: exit 2 everywhere


USAGE = [  # argv (paths that do not exist: the flags are checked first), what the line names
    (["export", NOWHERE, "--out", NOWHERE, "--processes", "0"], "--processes"),
    (["export", NOWHERE, "--out", NOWHERE, "--k", "0"], "--k"),
    (["export", NOWHERE, "--out", NOWHERE, "--thumbnails", "-1"], "--thumbnails"),
    (["export", NOWHERE, "--out", NOWHERE, "--index", "bogus"], "--index"),
    (["export", NOWHERE], "--out"),
    (["index", NOWHERE, "--data", NOWHERE, "--format", "bogus"], "--format"),
    (["index", NOWHERE, "--data", NOWHERE, "--processes", "0"], "--processes"),
    (["index", NOWHERE], "--data"),
    (["index", NOWHERE, "--data", NOWHERE, "--index", "bogus"], "--index"),
    (["eval", NOWHERE, "--data", NOWHERE, "--k", "0"], "--k"),
    (["eval", NOWHERE, "--data", NOWHERE, "--format", "bogus"], "--format"),
    (["eval", NOWHERE, "--data", NOWHERE, "--digest", "abc"], "--digest"),
    (["eval", NOWHERE], "--data"),
    (["eval", NOWHERE, "--data", NOWHERE, "--on-error", "ignore"], "--on-error"),
    (["predict", NOWHERE, "x.png", "--k", "0"], "--k"),
    (["predict", NOWHERE, "x.png", "--k", "-3"], "--k"),
    (["predict", NOWHERE, "x.png", "--batch-size", "0"], "--batch-size"),
    (["predict", NOWHERE, "x.png", "--digest", "xyz"], "--digest"),
    (["predict", NOWHERE, "x.png", "--k", "two"], "--k"),
    (["predict", NOWHERE], "INPUT"),
    (["train", "--data", NOWHERE, "--out", NOWHERE, "--target", "t", "--epochs", "0"], "--epochs"),
    (["train", "--data", NOWHERE, "--out", NOWHERE, "--target", "t", "--epochs", "x"], "--epochs"),
    (["train", "--data", NOWHERE, "--out", NOWHERE, "--loss", "bogus"], "--loss"),
    (["train", "--data", NOWHERE, "--out", NOWHERE, "--target", "t", "--temperature", "-1"], "--temperature"),
    (["train", "--data", NOWHERE, "--out", NOWHERE, "--target", "t", "--format", "bogus"], "--format"),
    (["train", "--data", NOWHERE, "--out", NOWHERE, "--loss", "supcon", "--target", "age",
      "--task", "regression"], "--loss supcon"),
    (["train", "--resume"], "--resume needs --out"),
    (["train", "--out", NOWHERE], "data"),
    (["viz", NOWHERE, "--split", "bogus"], "--split"),
    (["demo", "--bundle", "age"], "NAME=DIR"),
    (["demo", "--bundle", "=dir"], "NAME=DIR"),
    (["demo", "--bundle", "age="], "NAME=DIR"),
    (["demo", "--bundle", "age=a", "--bundle", "age=b"], "given twice"),
    (["demo", "--port", "http"], "--port"),
    (["demo", "--port", "99999"], "--port"),
    (["demo", "--port", "-1"], "--port"),
]


@pytest.mark.parametrize("argv, name", USAGE, ids=[f"{a[0]}: {n}" for a, n in USAGE])
def test_usage_errors_exit_2_naming_the_flag(argv: list[str], name: str, capsys) -> None:
    _fails(argv, 2, name, capsys=capsys)


def test_usage_error_is_raised_as_usage_error_not_user_error(monkeypatch) -> None:
    """The handlers' own checks raise UsageError (argparse's exit on their own): with --debug they surface."""
    from supemb.errors import UsageError

    for argv in (["predict", NOWHERE, "x.png", "--k", "0"], ["eval", NOWHERE, "--data", NOWHERE, "--k", "0"],
                 ["export", NOWHERE, "--out", NOWHERE, "--processes", "0"], ["demo", "--bundle", "x"],
                 ["index", NOWHERE, "--data", NOWHERE, "--format", "bogus"]):
        with pytest.raises(UsageError):
            cli(["--debug", *argv])


# ------------------------------------------------------------------ export


def test_export_data_and_model_errors(run: Path, bundle: Path, work: Path, tmp_path: Path, capsys) -> None:
    _fails(["export", tmp_path / "no_run", "--out", tmp_path / "b"], 1, tmp_path / "no_run", capsys=capsys)
    line = _fails(["export", run, "--out", bundle], 1, bundle, capsys=capsys)
    assert "--force" in line
    not_a_run = tmp_path / "not_a_run"
    shutil.copytree(run, not_a_run)
    (not_a_run / "model.json").unlink()
    _fails(["export", not_a_run, "--out", tmp_path / "b"], 1, not_a_run / "model.json", capsys=capsys)
    _fails(["export", run, "--out", tmp_path / "b", "--gallery", tmp_path / "nowhere"], 1, tmp_path / "nowhere",
           capsys=capsys)
    assert not (tmp_path / "b").exists()


def test_export_parity_failure(run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from supemb.export import writer

    monkeypatch.setitem(writer.PARITY_TOL, "float32", 0.0)
    _fails(["export", run, "--out", tmp_path / "b"], 1, "parity check failed", capsys=capsys)
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b*"))


def test_export_on_error_with_a_bad_gallery_item(run: Path, bad_data: tuple[Path, Path], tmp_path: Path,
                                                 capsys) -> None:
    csv, bad = bad_data
    _fails(["export", run, "--out", tmp_path / "b", "--gallery", csv], 1, bad, capsys=capsys)
    code, out, err = _call(["export", run, "--out", tmp_path / "b", "--gallery", csv, "--on-error", "skip"], capsys)
    assert code == 1 and "Traceback" not in err
    assert [line for line in err.splitlines() if "skipped:" in line] == [f"supemb export: skipped: {bad}: not an "
                                                                         "image file (cannot identify image format)"]
    code, out, err = _call(["index", tmp_path / "b", "--data", csv, "--on-error", "skip"], capsys)
    assert code == 1 and err.startswith(f"supemb index: skipped: {bad}: ")
    from supemb.predict.bundle import load_bundle

    b = load_bundle(tmp_path / "b", device="cpu")
    assert b.index.ntotal == 39 and bad.name not in b.ids  # the 40 items but the bad one


def test_train_on_error_skip_leaves_out_an_image_that_does_not_decode(bad_data: tuple[Path, Path], tmp_path: Path,
                                                                       capsys) -> None:
    """skip: the truncated image is left out before training (not met mid-epoch), counted in model.json,
    and the run's own gallery leaves it out too, so its export needs no --on-error; fail: one line naming it."""
    import json

    csv, bad = bad_data
    args = ["train", "--data", csv, "--target", "temperature", "--loss", "rnc", "--epochs", "1", "--batch-size", "16",
            "--image-size", "16", "--no-viz"]
    _fails([*args, "--out", tmp_path / "failed"], 1, bad, capsys=capsys)
    code, _, err = _call([*args, "--out", tmp_path / "run", "--on-error", "skip"], capsys)
    assert code == 0 and "Traceback" not in err, err
    data = json.loads((tmp_path / "run" / "model.json").read_text())["data"]
    assert data["n_skipped"] == 1 and data["n_records"] == 39
    code, _, err = _call(["export", tmp_path / "run", "--out", tmp_path / "b"], capsys)
    assert code == 0, err


def test_train_on_error_skip_leaves_out_eeg_recordings_without_an_age_or_a_channel(tmp_path: Path, capsys) -> None:
    """EEG ages from the headers: one header without an age, one file missing O2. fail: one line naming the
    first; skip: both left out, listed in model.json, and the run's export needs no --on-error."""
    import json

    import numpy as np

    from supemb.data.synthetic_eeg import TUH_FILE_CHANNELS, make_eeg_dataset, synth_recording, write_edf

    data = make_eeg_dataset(tmp_path / "eeg", 14, duration_s=12.0, sfreq=100.0, seed=3)
    (data / "labels.csv").unlink()  # ages from the EDF headers, as TUH's files carry them
    rng = np.random.default_rng(0)
    write_edf(data / "rec_003.edf", synth_recording(40, 12.0, 100.0, rng), 100.0,
              [f"EEG {c}-REF" for c in TUH_FILE_CHANNELS], patient="X X X X")  # no age
    kept = [c for c in TUH_FILE_CHANNELS if c != "O2"]
    write_edf(data / "rec_005.edf", synth_recording(40, 12.0, 100.0, rng, channels=kept), 100.0,
              [f"EEG {c}-REF" for c in kept], patient="X X X X Age:40")
    args = ["train", "--data", data, "--target", "age", "--loss", "rnc", "--epochs", "1", "--batch-size", "8",
            "--no-viz"]
    _fails([*args, "--out", tmp_path / "failed"], 1, data / "rec_003.edf", capsys=capsys)
    code, _, err = _call([*args, "--out", tmp_path / "run", "--on-error", "skip"], capsys)
    assert code == 0 and "Traceback" not in err, err
    summary = json.loads((tmp_path / "run" / "model.json").read_text())["data"]
    assert summary["n_skipped"] == 2 and [s.split(":")[0] for s in summary["skipped"]] == [
        str(data / "rec_003.edf"), str(data / "rec_005.edf")]
    assert sum(n["recordings"] for n in summary["splits"].values()) == 12
    assert _call(["export", tmp_path / "run", "--out", tmp_path / "b"], capsys)[0] == 0


def test_a_class_loss_on_a_value_column_is_refused_before_training(webcam: Path, tmp_path: Path, capsys) -> None:
    """--loss supcon on temperatures would make each reading its own class (and fit a 40-class head)."""
    line = _fails(["train", "--data", webcam, "--target", "temperature", "--loss", "supcon", "--epochs", "1",
                   "--image-size", "16", "--no-viz", "--out", tmp_path / "run"], 1, webcam, "--loss rnc", capsys=capsys)
    assert "distinct numbers" in line and not (tmp_path / "run" / "model.json").exists()


# ------------------------------------------------------------------ index


def test_index_errors(bundle: Path, webcam: Path, tmp_path: Path, capsys) -> None:
    assert "no such bundle" in _fails(["index", tmp_path / "none", "--data", webcam], 1, tmp_path / "none",
                                      capsys=capsys)
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    _fails(["index", b, "--data", tmp_path / "nodata"], 1, tmp_path / "nodata", capsys=capsys)
    _fails(["index", b, "--data", webcam, "--append", "--index", "hnsw"], 1, "--append", capsys=capsys)
    from supemb.predict.manifest import zip_bundle

    z = zip_bundle(bundle, tmp_path / "b.zip")
    line = _fails(["index", z, "--data", webcam], 1, z, capsys=capsys)
    assert "unzip" in line


# ------------------------------------------------------------------ eval


def test_eval_errors(bundle: Path, webcam: Path, tmp_path: Path, capsys) -> None:
    _fails(["eval", bundle, "--data", tmp_path / "nodata"], 1, tmp_path / "nodata", capsys=capsys)
    _fails(["eval", tmp_path / "nobundle", "--data", webcam], 1, tmp_path / "nobundle", capsys=capsys)
    _fails(["eval", bundle, "--data", webcam, "--target", "altitude"], 1, "altitude", capsys=capsys)


def test_eval_on_error(bundle: Path, bad_data: tuple[Path, Path], capsys) -> None:
    """fail: one line naming the bad item, exit 1; skip: the metrics of the rest, the bad one listed, exit 1."""
    csv, bad = bad_data
    _fails(["eval", bundle, "--data", csv, "--device", "cpu"], 1, bad, capsys=capsys)
    code, out, err = _call(["eval", bundle, "--data", csv, "--device", "cpu", "--on-error", "skip"], capsys)
    assert code == 1 and "Traceback" not in err
    assert "items\t39" in out.splitlines()
    skipped = [line for line in out.splitlines() if line.startswith("skipped:")]
    assert len(skipped) == 1 and str(bad) in skipped[0]


# ------------------------------------------------------------------ predict


def test_predict_errors(bundle: Path, webcam: Path, tmp_path: Path, capsys) -> None:
    good = _images(webcam, 1)[0]
    _fails(["predict", bundle, good, tmp_path / "missing.png"], 1, tmp_path / "missing.png", capsys=capsys)
    (tmp_path / "folder").mkdir()
    _fails(["predict", bundle, tmp_path / "folder"], 1, tmp_path / "folder", capsys=capsys)
    _fails(["predict", tmp_path / "folder", good], 1, tmp_path / "folder", capsys=capsys)  # a folder, not a bundle
    (tmp_path / "b.txt").write_text("hello")
    _fails(["predict", tmp_path / "b.txt", good], 1, tmp_path / "b.txt", capsys=capsys)
    _fails(["predict", tmp_path / "nothing", good], 1, tmp_path / "nothing", capsys=capsys)


def test_predict_on_error_skip_prints_the_good_and_exits_1(bundle: Path, webcam: Path, tmp_path: Path,
                                                          capsys) -> None:
    good = _images(webcam, 2)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    code, out, err = _call(["predict", bundle, good[0], bad, good[1], "--on-error", "skip", "--device", "cpu"], capsys)
    assert code == 1 and "Traceback" not in err
    lines = out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [good[0], good[1]]
    assert "°C" in lines[0]
    skipped = [line for line in err.splitlines() if "skipped:" in line]
    assert len(skipped) == 1 and str(bad) in skipped[0]


# ------------------------------------------------------------------ train, viz


def test_train_errors(run: Path, webcam: Path, tmp_path: Path, capsys) -> None:
    _fails(["train", "--data", tmp_path / "nodata", "--out", tmp_path / "r", "--target", "age"], 1,
           tmp_path / "nodata", capsys=capsys)
    busy = tmp_path / "busy"
    (busy / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "config.json", busy / "config.json")
    (busy / "checkpoints" / "last.pt").write_bytes(b"")
    line = _fails(["train", "--data", webcam, "--out", busy, "--target", "temperature"], 1, busy, capsys=capsys)
    assert "--resume" in line
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    _fails(["train", "--resume", "--out", fresh], 1, fresh, capsys=capsys)  # no run there at all
    shutil.copy(run / "config.json", fresh / "config.json")
    _fails(["train", "--resume", "--out", fresh], 1, "nothing to resume", capsys=capsys)
    _fails(["train", "--resume", "--out", run], 1, "the run is finished", capsys=capsys)  # no second stage 2
    line = _fails(["train", "--resume", "--out", fresh, "--epochs", "40", "--no-viz"], 2, "--epochs", "--no-viz",
                  capsys=capsys)
    assert "takes only --out" in line  # the flags would be ignored: said, not dropped silently
    (tmp_path / "bad.yaml").write_text("epochs: [1\n")  # what the file says is a setting: 2, as a bad flag
    _fails(["train", "--config", tmp_path / "bad.yaml"], 2, tmp_path / "bad.yaml", capsys=capsys)
    (tmp_path / "list.yaml").write_text("- epochs: 1\n")
    _fails(["train", "--config", tmp_path / "list.yaml"], 2, "a mapping of settings", capsys=capsys)
    _fails(["train", "--config", tmp_path / "none.yaml"], 1, tmp_path / "none.yaml", capsys=capsys)


@pytest.mark.parametrize("yaml_text, code, names", [
    ("1: 2\n", 2, ["setting names must be text", "1"]),
    ("encoder_kwargs: [1]\n", 2, ["encoder_kwargs must be a mapping"]),
    ("knn_k: 3.7\n", 2, ["knn_k must be a whole number, got 3.7"]),
    ("viz: 'no'\n", 2, ["viz must be true or false"]),
    ("epochs: three\n", 2, ["epochs must be a whole number, got 'three'"]),
])
def test_a_config_value_of_the_wrong_type_is_one_line_before_any_work(webcam: Path, tmp_path: Path, yaml_text: str,
                                                                      code: int, names: list, capsys) -> None:
    (tmp_path / "c.yaml").write_text(yaml_text)
    _fails(["train", "--config", tmp_path / "c.yaml", "--data", webcam, "--target", "temperature", "--out",
            tmp_path / "run"], code, *names, capsys=capsys)
    assert not (tmp_path / "run").exists()


def test_yaml_numbers_in_e_notation_are_numbers() -> None:
    """PyYAML (YAML 1.1) reads `lr: 3e-3` as text; the README writes the default that way."""
    import yaml

    from supemb.train.config import load_config

    raw = yaml.safe_load("lr: 3e-3\ntemperature: 1e-1\nseed: '3'\n")
    assert raw["lr"] == "3e-3"
    cfg = load_config(None, {"data": "d", "target": "t", "out": "o", **raw})
    assert (cfg.lr, cfg.temperature, cfg.seed) == (0.003, 0.1, 3)


def test_out_must_be_a_new_empty_or_unclaimed_run_folder(webcam: Path, tmp_path: Path, capsys) -> None:
    args = ["train", "--data", webcam, "--target", "temperature", "--epochs", "1", "--image-size", "16", "--no-viz"]
    (tmp_path / "afile").write_text("x")
    _fails([*args, "--out", tmp_path / "afile"], 1, "is a file, not a run directory", capsys=capsys)
    _fails([*args, "--out", webcam.parent], 1, webcam.parent, "holds other files and no training run", capsys=capsys)
    (tmp_path / "c.yaml").mkdir()
    _fails(["train", "--config", tmp_path / "c.yaml"], 1, tmp_path / "c.yaml", "cannot read", capsys=capsys)
    from supemb.train.rundir import RunDir

    held = RunDir(tmp_path / "busy").lock()  # another training writing there
    try:
        _fails([*args, "--out", tmp_path / "busy"], 1, "another supemb train is writing this run", capsys=capsys)
    finally:
        held.close()
    assert _call([*args, "--out", tmp_path / "busy"], capsys)[0] == 0  # free again once it ends


def test_viz_of_a_folder_that_is_not_a_run(run: Path, tmp_path: Path, capsys) -> None:
    _fails(["viz", tmp_path], 1, tmp_path, capsys=capsys)
    _fails(["viz", tmp_path / "nowhere"], 1, tmp_path / "nowhere", capsys=capsys)
    unfinished = tmp_path / "unfinished"  # config.json written, model.json not yet
    unfinished.mkdir()
    shutil.copy(run / "config.json", unfinished / "config.json")
    code, out, err = _call(["viz", unfinished], capsys)
    # one line naming what is missing, before any data is read (no training notes on the way)
    assert code == 1 and len(err.splitlines()) == 1 and str(unfinished / "model.json") in err, err


# ------------------------------------------------------------------ --debug, Ctrl-C


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such bundle"):
        cli(["--debug", "predict", str(tmp_path / "nothing"), "x.png"])
    r = subprocess.run([sys.executable, "-m", "supemb", "--debug", "predict", str(tmp_path / "nothing"), "x.png"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr
    assert "supemb.errors.UserError" in r.stderr and str(tmp_path / "nothing") in r.stderr
    r = subprocess.run([sys.executable, "-m", "supemb", "predict", str(tmp_path / "nothing"), "x.png"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, target", [
    (["predict", "B", "x.png"], "supemb.predict.bundle.load_bundle"),
    (["eval", "B", "--data", "D"], "supemb.predict.bundle.load_bundle"),
    (["export", "R", "--out", "O"], "supemb.export.writer.export_run"),
    (["index", "B", "--data", "D"], "supemb.export.writer.reindex"),
    (["train", "--data", "D", "--out", "O", "--target", "t"], "supemb.train.trainer.train"),
])
def test_ctrl_c_exits_130(argv: list[str], target: str, monkeypatch, capsys) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupted)
    code, out, err = _call(argv, capsys)
    assert code == 130 and err.strip() == "supemb: interrupted" and "Traceback" not in err
