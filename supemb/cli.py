"""The `supemb` command line.

Subcommands are listed explicitly in `_SUBCOMMANDS`; each module adds its own
parser and handler. Exit codes: 0 success; 2 a usage error, the command line
itself is wrong, whatever the files hold (an unknown flag or choice, a value
out of range, flags that do not go together: argparse or `UsageError`; so is
any setting a `--config` YAML holds, its file's syntax included); 1 a
data or model error, a file, folder, bundle or run is missing, damaged, or
not what the command needs, an --out that exists included (`UserError`);
130 Ctrl-C; 141 the reader of stdout went away. An error prints one line
("supemb CMD: error: ..."); `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from supemb import __version__
from supemb.errors import UsageError, UserError
from supemb.train.world import rank_prefix

# name -> (help, function that adds arguments and returns the handler)
Handler = Callable[[argparse.Namespace], int]
# Each command module contributes one entry; only commands that work are listed.
_SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], Handler]]] = {}


def _train_parser(p: argparse.ArgumentParser) -> Handler:
    from supemb.train.config import TRAIN_FLAGS

    for flag in TRAIN_FLAGS:  # declared once, beside TrainConfig
        if flag.off or flag.on:
            p.add_argument(flag.option, dest=flag.name, action="store_const", const=bool(flag.on), help=flag.help)
        else:
            p.add_argument(flag.option, dest=flag.name, type=flag.type, choices=flag.choices,
                           metavar=flag.metavar, help=flag.help)
    p.add_argument("--config", help="YAML file of settings; flags override it")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out with its own settings (takes no other flag)")

    def run(args: argparse.Namespace) -> int:
        from supemb.train.config import load_config
        from supemb.train.trainer import resume_run, train
        from supemb.train.world import World

        overrides = {flag.name: getattr(args, flag.name) for flag in TRAIN_FLAGS}
        if args.format is not None:
            from supemb import modalities

            if args.format not in modalities.formats():
                raise UsageError(f"--format must be one of {', '.join(modalities.formats())}, got {args.format!r}")
        if args.resume:
            if not args.out:
                raise UsageError("--resume needs --out RUN_DIR (the run to continue)")
            given = [flag.option for flag in TRAIN_FLAGS if flag.name != "out" and overrides[flag.name] is not None
                     and not ((flag.off or flag.on) and overrides[flag.name] != bool(flag.on))]  # the switch used
            if given or args.config:
                raise UsageError(f"--resume continues the run with its own config.json and takes only --out; "
                                 f"drop {', '.join(given + (['--config'] if args.config else []))}")
            out = args.out
            final = resume_run(out)
        else:
            cfg = load_config(args.config, overrides)
            out = cfg.out
            final = train(cfg)
        if not World.from_env().main:  # under torchrun, rank 0 reports
            return 0
        print(f"wrote {out} (all metrics in metrics.jsonl)")
        shown = {k: round(v, 4) for k, v in final.items() if k.startswith("test_") and isinstance(v, float)}
        if shown:
            print("  ".join(f"{k}={v}" for k, v in sorted(shown.items())))
        return 0

    return run


def _viz_parser(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("run", help="a finished training run directory")
    p.add_argument("--split", default="val", choices=["train", "val", "test"], help="which split (default val)")
    p.add_argument("--method", default="tsne", choices=["tsne", "pca"], help="2-D projection (default tsne)")
    p.add_argument("--out", default=None, help="PNG to write (default RUN/embeddings-SPLIT.png)")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from supemb.train.embedding import embed_run
        from supemb.train.viz import embedding_map

        emb, targets, cfg, metric = embed_run(args.run, args.split)
        out = Path(args.out) if args.out else Path(args.run) / f"embeddings-{args.split}.png"
        embedding_map(emb, targets, out, title=f"{cfg.loss}: {args.split} embeddings ({len(emb)})",
                      method=args.method, discrete=cfg.task == "classification", seed=cfg.seed, metric=metric)
        print(f"wrote {out}")
        return 0

    return run


_SUBCOMMANDS["train"] = ("train an encoder (two-stage contrastive, or an end-to-end baseline)", _train_parser)
_SUBCOMMANDS["viz"] = ("draw a 2-D map of a run's embeddings, coloured by target (PNG)", _viz_parser)


def _lazy(module: str, name: str) -> Callable[[argparse.ArgumentParser], Handler]:
    """A parser builder imported only when the subcommand is built (keeps `supemb --help` fast)."""

    def add(p: argparse.ArgumentParser) -> Handler:
        import importlib

        return getattr(importlib.import_module(module), name)(p)

    return add


_SUBCOMMANDS["export"] = ("export a training run to a bundle: ONNX encoder + FAISS gallery + manifest",
                          _lazy("supemb.commands", "export_parser"))
_SUBCOMMANDS["predict"] = ("predict values or classes (with neighbours) for images or EEG recordings",
                           _lazy("supemb.commands", "predict_parser"))
_SUBCOMMANDS["eval"] = ("evaluate a bundle's kNN predictions on labelled data",
                        _lazy("supemb.commands", "eval_parser"))
_SUBCOMMANDS["index"] = ("rebuild or extend a bundle's labelled gallery without retraining",
                         _lazy("supemb.commands", "index_parser"))


def _load_demo() -> ModuleType:
    """supemb.demo.app, imported only when the demo runs: gradio is heavy, and `supemb --help` must stay light."""
    import importlib

    return importlib.import_module("supemb.demo.app")


def _demo_parser(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--bundle", action="append", default=[], metavar="NAME=DIR",
                   help="serve your own bundle in a tab: age, temperature or brain_age (repeatable); "
                   "default: the synthetic demo bundles shipped with supemb")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")

    def run(args: argparse.Namespace) -> int:
        if not 0 <= args.port <= 65535:
            raise UsageError(f"--port must be between 0 and 65535, got {args.port}")
        bundles = {}
        for item in args.bundle:
            name, sep, path = item.partition("=")
            name = name.strip()
            if not sep or not name or not path:
                raise UsageError(f"--bundle {item!r}: expected NAME=DIR, e.g. --bundle age=path/to/bundle")
            if name in bundles:
                raise UsageError(f"--bundle {name}=...: given twice")
            from supemb.predict.api import DEFAULT_BUNDLES  # the tabs (light: no gradio, no torch)

            if name not in DEFAULT_BUNDLES:
                raise UsageError(f"--bundle {name}=...: no demo tab {name!r}; the tabs are {', '.join(DEFAULT_BUNDLES)}")
            bundles[name] = path
        _load_demo().launch(bundles, host=args.host, port=args.port)
        return 0

    return run


_SUBCOMMANDS["demo"] = ("serve the web demo (age, temperature, brain age) on http://127.0.0.1:7860",
                        _demo_parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="supemb",
        description="Label-aware embeddings: train with supervised contrastive losses, "
        "export to ONNX, serve with FAISS kNN.",
    )
    parser.add_argument("--version", action="version", version=f"supemb {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.set_defaults(command=None)
    if not _SUBCOMMANDS:
        return parser
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add) in _SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=add(p), parser=p)  # `parser`: the command's own usage for its errors
    return parser


def _warning_line(command: str) -> Callable[..., None]:
    """warnings.showwarning for the command line: supemb's own warnings (a flat EEG channel, an input
    unlike the gallery) as one line "supemb CMD: warning: ..."; anyone else's as Python shows them."""
    import warnings

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202
        if getattr(category, "__module__", "").startswith("supemb."):
            print(f"supemb {command}: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    return show


def _lost_contact(err: RuntimeError) -> str | None:
    """One line for a collective that failed under torchrun (another process killed, stopped or stuck:
    gloo's or NCCL's timeout or reset), which names what this rank saw; None for any other error."""
    from supemb.train.world import World

    text = " ".join(str(err).split())
    dist = sys.modules.get("torch.distributed")
    known = isinstance(err, getattr(dist, "DistError", ())) or any(
        mark in text for mark in ("gloo", "NCCL", "Timed out", "Connection reset", "Connection closed by peer"))
    if not (World.from_env().active and known):
        return None
    seen = text.split("] ", 1)[-1] if text.startswith("[") else text  # gloo's "[file:line] " prefix
    return (f"lost contact with the other processes ({seen[:200]}); another process was stopped, killed or is "
            "stuck (torchrun names the first rank to fail, which may be this one: see every rank's line); "
            "an epoch's checkpoint saved before this is intact: `torchrun ... supemb train --resume --out RUN`")


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    # mne (EEG files) logs INFO to stdout, into --json; at ERROR from its import on, our decode threads also read
    # recordings in parallel (supemb.data.eeg_files.quiet_mne). A level the user set stays.
    os.environ.setdefault("MNE_LOGGING_LEVEL", "ERROR")

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        cut = extra.index("--") if "--" in extra else len(extra)  # after "--" even "-x.png" is a file
        words, files = extra[:cut], extra[cut + 1:]
        if isinstance(getattr(args, "inputs", None), list) and not any(e.startswith("-") for e in words):
            args.inputs.extend(words + files)  # `predict B a.png --k 2 b.png`: the files after an option are inputs too
        else:
            getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_line(args.command)
            return int(args.handler(args))
    except UserError as err:
        if args.debug:
            raise
        print(f"supemb {args.command}: error: {rank_prefix()}{err}", file=sys.stderr)
        return 2 if isinstance(err, UsageError) else 1
    except KeyboardInterrupt:
        print(f"supemb: {rank_prefix()}interrupted", file=sys.stderr)
        return 130
    except RuntimeError as err:
        lost = _lost_contact(err)
        if args.debug or lost is None:
            raise
        print(f"supemb {args.command}: error: {rank_prefix()}{lost}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`supemb predict ... | head`): stop quietly, as
        # Unix tools do. Point stdout at /dev/null so the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
