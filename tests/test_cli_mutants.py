"""`supemb.cli`'s own argument and error handling, in process and fast (mutmut's selection:
docs/mutation.md): exit codes 0/1/2/130/141, the one error line "supemb CMD: error: ...",
--debug, and the train, viz and demo handlers up to the work they hand over, which is
replaced here by fakes (no torch, no training, no gradio). tests/test_cli_errors.py checks
the same contract end to end, on a real run and bundle."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

from cli_calls import call as _call

from supemb import cli
from supemb.cli import build_parser, main
from supemb.errors import ON_ERROR_FLAGS, UsageError, UserError, raise_or_skip


def _with_handler(monkeypatch, handler) -> None:
    """`supemb viz RUN` runs `handler(args)` instead of drawing anything."""
    real = cli._SUBCOMMANDS["viz"]

    def add(p):
        real[1](p)
        return handler

    monkeypatch.setitem(cli._SUBCOMMANDS, "viz", (real[0], add))


def _raises(exc: BaseException):
    def handler(args):
        raise exc

    return handler


def _fake_module(monkeypatch, name: str, **attrs) -> types.ModuleType:
    """Put a stand-in for module `name` into sys.modules (its handler imports it when it runs)."""
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    monkeypatch.setitem(sys.modules, name, mod)
    return mod


# ------------------------------------------------------------------ main: exit codes and the error line


def test_handler_exit_code_is_returned_as_an_int(monkeypatch, capsys) -> None:
    """main returns the handler's code, converted to a plain int."""
    import numpy as np

    seen = []
    _with_handler(monkeypatch, lambda args: seen.append(args) or np.int64(3))
    code, out, err = _call(["viz", "RUN"], capsys)
    assert code == 3 and type(code) is int and (out, err) == ("", "")
    assert seen[0].command == "viz" and seen[0].run == "RUN" and seen[0].debug is False


def test_user_error_is_one_line_and_exit_1(monkeypatch, capsys) -> None:
    """A UserError: exit 1, stderr exactly "supemb CMD: error: MESSAGE", nothing on stdout."""
    _with_handler(monkeypatch, _raises(UserError("runs/x: no such run")))
    assert _call(["viz", "RUN"], capsys) == (1, "", "supemb viz: error: runs/x: no such run\n")


def test_usage_error_is_one_line_and_exit_2(monkeypatch, capsys) -> None:
    _with_handler(monkeypatch, _raises(UsageError("--k must be >= 1, got 0")))
    assert _call(["viz", "RUN"], capsys) == (2, "", "supemb viz: error: --k must be >= 1, got 0\n")


def test_error_line_names_the_rank_under_torchrun(monkeypatch, capsys) -> None:
    """In a multi-process run the line says which rank failed; so does an interruption."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    _with_handler(monkeypatch, _raises(UserError("bad shard")))
    assert _call(["viz", "RUN"], capsys) == (1, "", "supemb viz: error: rank 1: bad shard\n")
    _with_handler(monkeypatch, _raises(KeyboardInterrupt()))
    assert _call(["viz", "RUN"], capsys) == (130, "", "supemb: rank 1: interrupted\n")


GLOO = ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:28823: "
        "Connection reset by peer")


def test_a_collective_that_lost_its_peer_is_one_line_under_torchrun(monkeypatch, capsys) -> None:
    """Another rank killed or stopped: gloo's RuntimeError becomes one line naming this rank (no traceback);
    outside torchrun, or with --debug, or for any other RuntimeError (a bug), the traceback stays."""
    _with_handler(monkeypatch, _raises(RuntimeError(GLOO)))
    with pytest.raises(RuntimeError):
        main(["viz", "RUN"])  # one process: not a lost peer
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code, out, err = _call(["viz", "RUN"], capsys)
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert err.startswith("supemb viz: error: rank 0: lost contact with the other processes (Read error "
                          "[127.0.0.1]:28823: Connection reset by peer); another process")
    with pytest.raises(RuntimeError):
        main(["--debug", "viz", "RUN"])
    _with_handler(monkeypatch, _raises(RuntimeError("mat1 and mat2 shapes cannot be multiplied")))
    with pytest.raises(RuntimeError, match="shapes"):
        main(["viz", "RUN"])


def test_debug_raises_the_error_instead_of_the_line(monkeypatch, capsys) -> None:
    """--debug: the UserError (or UsageError) propagates, so Python prints its traceback; no line."""
    for err in (UserError("broken bundle"), UsageError("--k must be >= 1")):
        _with_handler(monkeypatch, _raises(err))
        with pytest.raises(UserError) as got:
            main(["--debug", "viz", "RUN"])
        assert got.value is err
        assert capsys.readouterr() == ("", "")
    _with_handler(monkeypatch, _raises(UserError("broken bundle")))
    assert _call(["viz", "RUN"], capsys)[0] == 1  # the same error without --debug: the line


def test_ctrl_c_is_exit_130(monkeypatch, capsys) -> None:
    _with_handler(monkeypatch, _raises(KeyboardInterrupt()))
    assert _call(["viz", "RUN"], capsys) == (130, "", "supemb: interrupted\n")


def test_other_exceptions_are_bugs_and_propagate(monkeypatch, capsys) -> None:
    """Anything but UserError, Ctrl-C and a closed pipe is a bug: its traceback is shown."""
    _with_handler(monkeypatch, _raises(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        main(["viz", "RUN"])


def test_closed_pipe_is_exit_141_and_stdout_goes_to_devnull(monkeypatch, tmp_path, capsys) -> None:
    """The reader of stdout left: exit 141, nothing printed, and stdout's descriptor now /dev/null
    (so the interpreter's final flush cannot fail a second time)."""
    fd = os.open(tmp_path / "stdout", os.O_WRONLY | os.O_CREAT)
    try:
        monkeypatch.setattr(sys, "stdout", types.SimpleNamespace(fileno=lambda: fd, write=sys.stdout.write,
                                                                 flush=lambda: None))
        _with_handler(monkeypatch, _raises(BrokenPipeError()))
        assert main(["viz", "RUN"]) == 141
        now, null = os.fstat(fd), os.stat(os.devnull)
        assert (now.st_dev, now.st_ino) == (null.st_dev, null.st_ino)
        os.write(fd, b"lost")
        assert (tmp_path / "stdout").read_bytes() == b""
    finally:
        os.close(fd)
    assert capsys.readouterr().err == ""


def test_no_command_prints_help_and_exits_2(capsys) -> None:
    code, out, err = _call([], capsys)
    assert code == 2 and out.startswith("usage: supemb") and err == ""


@pytest.mark.parametrize("argv, names", [
    (["--bogus"], "--bogus"),
    (["nosuch"], "nosuch"),
    (["viz"], "run"),
    (["viz", "R", "--split", "dev"], "--split"),
    (["viz", "R", "--method", "umap"], "--method"),
    (["demo", "--port", "http"], "--port"),
    (["train", "--epochs", "two"], "--epochs"),
    (["train", "--lr", "fast"], "--lr"),
    (["train", "--loss", "mse"], "--loss"),
    (["train", "--on-error", "ignore"], "--on-error"),
    (["train", "--resume", "yes"], "yes"),
])
def test_parser_rejects_bad_values_with_exit_2(argv, names, capsys) -> None:
    """argparse's own errors: exit 2, a usage line and one "error:" line naming the flag."""
    code, out, err = _call(argv, capsys)
    assert code == 2 and out == ""
    assert err.startswith("usage: supemb") and names in err.splitlines()[-1]
    assert err.splitlines()[-1].startswith("supemb") and ": error: " in err.splitlines()[-1]


def test_version_and_help(capsys) -> None:
    """--version prints "supemb VERSION"; --help names the program and each subcommand's help."""
    from supemb import __version__

    assert _call(["--version"], capsys)[:2] == (0, f"supemb {__version__}\n")
    code, out, _ = _call(["--help"], capsys)
    assert code == 0 and out.startswith("usage: supemb [-h] [--version] [--debug] COMMAND")
    assert "Label-aware embeddings: train with supervised contrastive losses" in out
    for name, (help_text, _) in cli._SUBCOMMANDS.items():
        code, out, _ = _call([name, "--help"], capsys)  # the description is the help, unwrapped here
        assert code == 0 and out.startswith(f"usage: supemb {name}")
        assert " ".join(help_text.split()[:6]) in " ".join(out.split())


def test_parser_without_subcommands_still_parses_the_global_flags(monkeypatch) -> None:
    """With no subcommand registered the parser has only --version and --debug (and command None)."""
    monkeypatch.setattr(cli, "_SUBCOMMANDS", {})
    args = build_parser().parse_args(["--debug"])
    assert args.debug is True and args.command is None
    assert build_parser().parse_args([]).debug is False


def test_every_subcommand_gets_its_handler() -> None:
    """Each subcommand's parser carries the handler its builder returned."""
    p = build_parser()
    for name in cli._SUBCOMMANDS:
        extra = {"viz": ["R"], "export": ["R", "--out", "B"], "predict": ["B", "x.png"], "eval": ["B", "--data", "D"],
                 "index": ["B", "--data", "D"]}.get(name, [])
        args = p.parse_args([name, *extra])
        assert args.command == name and callable(args.handler)
        assert args.handler.__qualname__.endswith(".run")


def test_lazy_builders_import_their_module_only_when_built(monkeypatch) -> None:
    """`_lazy(module, name)` calls module.name(parser) and returns what it returned."""
    seen = []
    _fake_module(monkeypatch, "supemb_fake_cmds", build=lambda p: seen.append(p) or "HANDLER")
    add = cli._lazy("supemb_fake_cmds", "build")
    assert seen == []
    assert add("PARSER") == "HANDLER" and seen == ["PARSER"]


def test_on_error_flag_maps_to_the_library_words() -> None:
    assert ON_ERROR_FLAGS == ("fail", "skip")
    assert (raise_or_skip("fail"), raise_or_skip("skip")) == ("raise", "skip")
    with pytest.raises(UsageError) as err:
        raise_or_skip("ignore")
    assert str(err.value) == "--on-error must be one of fail, skip, got 'ignore'"
    assert issubclass(UsageError, UserError)


# ------------------------------------------------------------------ supemb train: the handler up to train()


@pytest.fixture
def trainer(monkeypatch) -> types.SimpleNamespace:
    """A stand-in supemb.train.trainer: records the configs and resumed runs; `final` is what they return."""
    rec = types.SimpleNamespace(configs=[], resumed=[], final={})
    _fake_module(monkeypatch, "supemb.train.trainer",
                 train=lambda cfg: rec.configs.append(cfg) or rec.final,
                 resume_run=lambda out: rec.resumed.append(out) or rec.final)
    return rec


def test_train_builds_the_config_and_prints_the_test_metrics(trainer, capsys) -> None:
    """The flags become the TrainConfig; stdout names the run and the test_ floats (4 decimals, sorted)."""
    from supemb.train.config import TrainConfig

    trainer.final = {"test_r2": 0.5, "val_mae": 2.0, "test_mae": 1.234567, "test_items": 7, "epochs": 3}
    code, out, err = _call(["train", "--data", "d", "--target", "t", "--out", "o", "--epochs", "3"], capsys)
    assert (code, err) == (0, "")
    assert out == "wrote o (all metrics in metrics.jsonl)\ntest_mae=1.2346  test_r2=0.5\n"
    assert trainer.configs == [TrainConfig(data="d", target="t", out="o", epochs=3)] and trainer.resumed == []


def test_train_without_test_metrics_prints_one_line(trainer, capsys) -> None:
    trainer.final = {"val_mae": 2.0, "test_items": 7}
    assert _call(["train", "--data", "d", "--target", "t", "--out", "o"], capsys) == (
        0, "wrote o (all metrics in metrics.jsonl)\n", "")


def test_train_switches_set_their_field_only_when_given(trainer, capsys) -> None:
    """--no-viz / --no-sync-bn turn a field off, --faces on; absent, the config's defaults stand."""
    from supemb.train.config import TrainConfig

    base = ["train", "--data", "d", "--target", "t", "--out", "o"]
    assert _call(base, capsys)[0] == 0
    assert _call([*base, "--no-viz", "--no-sync-bn", "--faces"], capsys)[0] == 0
    default, given = trainer.configs
    assert (default.viz, default.sync_bn, default.faces) == (TrainConfig.viz, TrainConfig.sync_bn, TrainConfig.faces)
    assert (given.viz, given.sync_bn, given.faces) == (False, False, True)


def test_train_flags_override_the_yaml_config(trainer, tmp_path, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: d\ntarget: t\nout: o\nepochs: 3\nlr: 0.5\n")
    assert _call(["train", "--config", str(cfg), "--epochs", "5"], capsys)[0] == 0
    assert (trainer.configs[0].epochs, trainer.configs[0].lr, trainer.configs[0].data) == (5, 0.5, "d")


def test_train_format_is_checked_before_training(trainer, capsys) -> None:
    from supemb import modalities

    code, out, err = _call(["train", "--data", "d", "--out", "o", "--format", "tiff"], capsys)
    assert (code, out) == (2, "") and trainer.configs == []
    assert err == f"supemb train: error: --format must be one of {', '.join(modalities.formats())}, got 'tiff'\n"
    assert _call(["train", "--data", "d", "--target", "t", "--out", "o", "--format", "csv"], capsys)[0] == 0
    assert trainer.configs[0].format == "csv"


def test_resume_needs_out_and_continues_that_run(trainer, capsys) -> None:
    assert _call(["train", "--resume"], capsys) == (
        2, "", "supemb train: error: --resume needs --out RUN_DIR (the run to continue)\n")
    assert trainer.resumed == [] and trainer.configs == []
    trainer.final = {"test_mae": 1.0}
    assert _call(["train", "--resume", "--out", "runs/a", "--epochs", "9"], capsys) == (
        2, "", "supemb train: error: --resume continues the run with its own config.json and takes only --out; "
               "drop --epochs\n")  # not silently ignored
    assert _call(["train", "--resume", "--out", "runs/a"], capsys) == (
        0, "wrote runs/a (all metrics in metrics.jsonl)\ntest_mae=1.0\n", "")
    assert trainer.resumed == ["runs/a"] and trainer.configs == []


def test_only_rank_0_reports_under_torchrun(trainer, monkeypatch, capsys) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    trainer.final = {"test_mae": 1.0}
    argv = ["train", "--data", "d", "--target", "t", "--out", "o"]
    monkeypatch.setenv("RANK", "1")
    assert _call(argv, capsys) == (0, "", "")
    monkeypatch.setenv("RANK", "0")
    assert _call(argv, capsys) == (0, "wrote o (all metrics in metrics.jsonl)\ntest_mae=1.0\n", "")
    assert len(trainer.configs) == 2


# ------------------------------------------------------------------ supemb viz: the handler up to the drawing


@pytest.fixture
def drawn(monkeypatch) -> list:
    """Stand-ins for embed_run (4 embeddings of a classification run) and embedding_map (records its call)."""
    calls = []
    cfg = types.SimpleNamespace(loss="supcon", task="classification", seed=7)
    _fake_module(monkeypatch, "supemb.train.embedding",
                 embed_run=lambda run, split: calls.append(("embed", run, split)) or (["e"] * 4, "T", cfg, "l2"))
    _fake_module(monkeypatch, "supemb.train.viz",
                 embedding_map=lambda *a, **kw: calls.append(("map", a, kw)))
    return calls


def test_viz_defaults_draw_val_with_tsne_into_the_run(drawn, capsys) -> None:
    out_png = Path("runs/a") / "embeddings-val.png"
    assert _call(["viz", "runs/a"], capsys) == (0, f"wrote {out_png}\n", "")
    assert drawn == [("embed", "runs/a", "val"),
                     ("map", (["e"] * 4, "T", out_png), dict(title="supcon: val embeddings (4)", method="tsne",
                                                             discrete=True, seed=7, metric="l2"))]


def test_viz_split_method_and_out(drawn, monkeypatch, capsys) -> None:
    assert _call(["viz", "runs/a", "--split", "test", "--method", "pca", "--out", "m.png"], capsys) == (
        0, "wrote m.png\n", "")
    assert drawn[0] == ("embed", "runs/a", "test")
    _, args, kw = drawn[1]
    assert args[2] == Path("m.png") and kw["method"] == "pca" and kw["title"] == "supcon: test embeddings (4)"
    drawn.clear()
    cfg = types.SimpleNamespace(loss="rnc", task="regression", seed=0)
    sys.modules["supemb.train.embedding"].embed_run = lambda run, split: (["e"], "T", cfg, "cosine")
    assert _call(["viz", "r", "--split", "train"], capsys)[0] == 0
    assert drawn[0][2]["discrete"] is False and drawn[0][2]["metric"] == "cosine"
    assert drawn[0][1][2] == Path("r") / "embeddings-train.png"


# ------------------------------------------------------------------ supemb demo: the --bundle checks


@pytest.fixture
def launched(monkeypatch) -> list:
    calls = []
    app = types.SimpleNamespace(launch=lambda bundles, **kw: calls.append((bundles, kw)))
    monkeypatch.setattr(cli, "_load_demo", lambda: app)
    return calls


def test_demo_defaults_and_bundles(launched, capsys) -> None:
    assert _call(["demo"], capsys) == (0, "", "")
    assert launched == [({}, {"host": "127.0.0.1", "port": 7860})]
    argv = ["demo", "--bundle", " age =b/a=1", "--bundle", "brain_age=/x", "--host", "0.0.0.0", "--port", "80"]
    assert _call(argv, capsys)[0] == 0
    assert launched[1] == ({"age": "b/a=1", "brain_age": "/x"}, {"host": "0.0.0.0", "port": 80})


@pytest.mark.parametrize("items, message", [
    (["age"], "--bundle 'age': expected NAME=DIR, e.g. --bundle age=path/to/bundle"),
    (["=b"], "--bundle '=b': expected NAME=DIR, e.g. --bundle age=path/to/bundle"),
    ([" =b"], "--bundle ' =b': expected NAME=DIR, e.g. --bundle age=path/to/bundle"),
    (["age="], "--bundle 'age=': expected NAME=DIR, e.g. --bundle age=path/to/bundle"),
    (["age=a", "age=b"], "--bundle age=...: given twice"),
    (["cats=a"], "--bundle cats=...: no demo tab 'cats'; the tabs are age, temperature, brain_age"),
])
def test_demo_rejects_bad_bundles_before_loading(launched, items, message, capsys) -> None:
    argv = ["demo", *[x for item in items for x in ("--bundle", item)]]
    assert _call(argv, capsys) == (2, "", f"supemb demo: error: {message}\n")
    assert launched == []


def test_demo_app_is_imported_when_it_runs(monkeypatch) -> None:
    app = _fake_module(monkeypatch, "supemb.demo.app")
    assert cli._load_demo() is app
