"""The `supemb` entry point: help, version, exit codes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from supemb import __version__
from supemb.cli import _SUBCOMMANDS, main

# The README's contract (its usage lines and Status): written out here, not read from the implementation.
README_SUBCOMMANDS = ("train", "viz", "export", "predict", "eval", "index", "demo")


def test_help_exits_zero_and_lists_every_subcommand(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: supemb" in out
    listed = re.findall(r"^    (\w+) ", out, flags=re.M)  # argparse's list under COMMAND
    assert listed == list(README_SUBCOMMANDS)
    assert sorted(_SUBCOMMANDS) == sorted(README_SUBCOMMANDS)  # nothing undocumented, nothing missing
    for name in README_SUBCOMMANDS:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0 and f"usage: supemb {name}" in capsys.readouterr().out


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"supemb {__version__}"


def test_no_command_prints_help_and_is_a_usage_error(capsys) -> None:
    assert main([]) == 2
    assert "usage: supemb" in capsys.readouterr().out


def test_unknown_option_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--no-such-flag"])
    assert exc.value.code == 2


def test_module_entry_point_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "supemb", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout


def test_closed_stdout_pipe_ends_quietly(tmp_path) -> None:
    """`supemb predict ... --json | head -c 10`: once the reader has gone, no traceback."""
    import numpy as np
    from PIL import Image

    from supemb.predict.api import default_bundle_path

    face = tmp_path / "face.png"
    Image.fromarray(np.full((48, 48, 3), 128, np.uint8)).save(face)
    proc = subprocess.Popen(
        [sys.executable, "-W", "ignore", "-m", "supemb", "predict", str(default_bundle_path("age")), str(face),
         "--json", "--no-detect"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader leaves before anything is written
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
    assert proc.returncode == 141


def test_demo_is_loaded_from_the_package_and_help_stays_light() -> None:
    """`supemb --help` (and `import supemb.demo`) import no gradio; `supemb demo` loads
    supemb.demo.app, the packaged app, as a normal subpackage."""
    code = ("import contextlib, io, sys\n"
            "import supemb.demo\n"
            "from supemb.cli import _load_demo, main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n"
            "        main(['--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "assert 'gradio' not in sys.modules, 'gradio imported before the demo runs'\n"
            "app = _load_demo()\n"
            "assert 'gradio' in sys.modules and callable(app.launch) and callable(app.build_app)\n"
            "print(app.__name__, app.__file__)\n")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    name, file = out.stdout.split()
    import supemb

    assert name == "supemb.demo.app" and Path(file) == Path(supemb.__file__).parent / "demo" / "app.py"


# ------------------------------------------------------------------ supemb train's flags


def test_every_train_flag_is_a_config_field_and_reaches_the_config(monkeypatch, tmp_path: Path) -> None:
    import dataclasses

    from supemb.train import trainer
    from supemb.train.config import TRAIN_FLAGS, TrainConfig

    assert {f.name for f in TRAIN_FLAGS} <= {f.name for f in dataclasses.fields(TrainConfig)}
    seen: list[TrainConfig] = []
    monkeypatch.setattr(trainer, "train", lambda cfg: seen.append(cfg) or {})
    given = {"--data": "d", "--target": "t", "--out": "o", "--loss": "rnc", "--task": "regression",
             "--format": "csv", "--encoder": "resnet18", "--epochs": "3", "--linear-epochs": "0",
             "--head-fit": "sgd", "--similarity": "cosine", "--metric": "l2", "--knn-k": "7", "--batch-size": "4",
             "--lr": "0.01", "--temperature": "0.2", "--image-size": "32", "--ema-decay": "0.9",
             "--grad-clip": "1.5", "--augment": "light", "--seed": "5", "--device": "cpu", "--num-workers": "1",
             "--on-error": "skip", "--dist-timeout": "60", "--pretrained": "w.safetensors"}
    switches = ["--no-viz", "--no-sync-bn", "--faces"]
    back = ["--viz", "--sync-bn", "--no-faces"]  # each switch's other direction, tried below
    assert {f.option for f in TRAIN_FLAGS} == set(given) | set(switches) | set(back)  # every flag is tried
    assert main(["train", *[x for kv in given.items() for x in kv], *switches]) == 0
    got = seen[0]
    assert (got.data, got.target, got.out, got.loss, got.task, got.format, got.encoder) == (
        "d", "t", "o", "rnc", "regression", "csv", "resnet18")
    assert (got.epochs, got.linear_epochs, got.head_fit, got.similarity, got.metric, got.knn_k) == (
        3, 0, "sgd", "cosine", "l2", 7)
    assert (got.batch_size, got.lr, got.temperature, got.image_size, got.ema_decay, got.grad_clip) == (
        4, 0.01, 0.2, 32, 0.9, 1.5)
    assert (got.augment, got.seed, got.device, got.num_workers, got.on_error, got.viz) == (
        "light", 5, "cpu", 1, "skip", False)
    assert (got.sync_bn, got.dist_timeout, got.faces, got.pretrained) == (False, 60.0, True, "w.safetensors")
    # flags not given leave the config's defaults
    assert main(["train", "--data", "d", "--target", "t", "--out", "o"]) == 0
    assert seen[1] == TrainConfig(data="d", target="t", out="o")
    # a YAML's booleans can be turned back either way from the command line
    (tmp_path / "c.yaml").write_text("viz: false\nfaces: true\nsync_bn: false\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--data", "d", "--target", "t", "--out", "o",
                 *back]) == 0
    assert (seen[2].viz, seen[2].sync_bn, seen[2].faces) == (True, True, False)


def test_train_flag_choices_come_from_the_loss_registry(capsys) -> None:
    from supemb.losses import LOSSES

    with pytest.raises(SystemExit) as exc:
        main(["train", "--loss", "nope"])
    assert exc.value.code == 2
    assert f"choose from {', '.join(repr(n) for n in LOSSES)}" in capsys.readouterr().err


def test_help_does_not_import_torch() -> None:
    code = ("import sys\nfrom supemb.cli import build_parser\nbuild_parser()\n"
            "assert 'torch' not in sys.modules, 'building the parser imported torch'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_on_error_flag_means_the_same_everywhere() -> None:
    from supemb.errors import ON_ERROR_FLAGS, UsageError, raise_or_skip

    assert [raise_or_skip(f) for f in ON_ERROR_FLAGS] == ["raise", "skip"]
    with pytest.raises(UsageError, match="--on-error"):
        raise_or_skip("ignore")
