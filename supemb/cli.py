"""The `supemb` command line.

Subcommands are listed explicitly in `_SUBCOMMANDS`; each module adds its own
parser and handler. Exit codes: 0 success, 2 usage error, 1 data/model error.
A `UserError` prints one line; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from supemb import __version__
from supemb.errors import UsageError, UserError

# name -> (help, function that adds arguments and returns the handler)
Handler = Callable[[argparse.Namespace], int]
# Each command module contributes one entry; only commands that work are listed.
_SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], Handler]]] = {}


# The names of supemb.preprocess.image.IMAGE_AUGMENTS and supemb.preprocess.eeg_augment.EEG_AUGMENTS and the
# defaults of supemb.train.data.DEFAULT_AUGMENT, spelled out so `supemb --help` imports none of them
# (torch); tests/test_augment_presets.py keeps them in step.
AUGMENT_HELP = ("augmentation preset; images: simclr (SupCon recipe: crops, flips, colour jitter with hue, "
                "greyscale), colour (crops, flips, brightness/contrast only: keeps colour), light (colour "
                "without flips: digits, text), none; EEG: eeg, eeg-light, none. Default: by task "
                "(image classes: light, image values: colour, EEG: eeg). "
                "A YAML config may give {preset: NAME, field: value, ...}")


def _train_parser(p: argparse.ArgumentParser) -> Handler:
    from supemb.train.config import LOSSES

    p.add_argument("--data", help="images (CSV, folder with labels.csv, class folders, UTKFace/AgeDB names) "
                   "or EEG recordings (folder or CSV of EDF/BDF/FIF)")
    p.add_argument("--target", help="target column (or 'age' from EDF headers / file names; 'class' for folders)")
    p.add_argument("--out", help="run directory to create (or to continue with --resume)")
    p.add_argument("--loss", choices=LOSSES, help="supcon|tsc (classes), rnc (values); ce|l1: end-to-end baselines")
    p.add_argument("--task", choices=["classification", "regression"], help="default: from the loss")
    p.add_argument("--format", help="auto | csv | folder | utkface | agedb | eeg (default auto)")
    p.add_argument("--encoder", help="encoder name (default: the recipe's, small_cnn with 2 convolutions per block "
                   "for images, shallow for EEG)")
    p.add_argument("--epochs", type=int, help="stage-1 (or baseline) epochs (default 20)")
    p.add_argument("--linear-epochs", type=int, help="0 skips stage 2 (the linear head); with --head-fit sgd, "
                   "its epochs (default 10)")
    p.add_argument("--head-fit", choices=["convex", "sgd"], help="stage 2: convex (ridge / logistic regression "
                   "to convergence, regularisation chosen on validation; default) or sgd (AdamW epochs)")
    p.add_argument("--similarity", choices=["l2", "cosine"], help="RnC's feature similarity (default l2, as in "
                   "its paper); the run serves the same geometry")
    p.add_argument("--metric", choices=["cosine", "l2"], help="served geometry (default: the loss's; a baseline's "
                   "is chosen on validation)")
    p.add_argument("--knn-k", type=int, help="neighbours of the kNN (default: chosen on validation from 5-40)")
    p.add_argument("--batch-size", type=int, help="samples per batch (default: 128 for images, 64 for EEG)")
    p.add_argument("--lr", type=float, help="peak learning rate, AdamW with warm-up + cosine "
                   "(default: 3e-3 for images, 1e-3 for EEG)")
    p.add_argument("--temperature", type=float, help="loss temperature (default: the loss's own)")
    p.add_argument("--image-size", type=int, help="square input size for images (default 64)")
    p.add_argument("--ema-decay", type=float, help="EMA of weights, e.g. 0.999 (default off)")
    p.add_argument("--grad-clip", type=float, help="max gradient norm, 0 = off (default 5)")
    p.add_argument("--augment", metavar="NAME", help=AUGMENT_HELP)
    p.add_argument("--seed", type=int, help="seed of splits, initialisation and augmentation (default 0)")
    p.add_argument("--device", help="auto | cpu | cuda (default auto)")
    p.add_argument("--num-workers", type=int, help="data-loading processes (default 0)")
    p.add_argument("--on-error", choices=["fail", "skip"], help="bad data rows: stop (default) or skip")
    p.add_argument("--no-viz", dest="viz", action="store_const", const=False, help="skip the embedding map")
    p.add_argument("--config", help="YAML file of settings; flags override it")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")

    def run(args: argparse.Namespace) -> int:
        from supemb.train.config import load_config
        from supemb.train.trainer import resume_run, train

        keys = ["data", "target", "out", "loss", "task", "format", "encoder", "epochs", "linear_epochs",
                "head_fit", "similarity", "metric", "knn_k",
                "batch_size", "lr", "temperature", "image_size", "ema_decay", "grad_clip", "augment", "seed",
                "device", "num_workers", "on_error", "viz"]
        overrides = {k: getattr(args, k) for k in keys}
        if args.resume:
            if not args.out:
                raise UsageError("--resume needs --out RUN_DIR (the run to continue)")
            out = args.out
            final = resume_run(out)  # the run's own config.json; other flags are not used
        else:
            cfg = load_config(args.config, overrides)
            out = cfg.out
            final = train(cfg)
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

        from supemb.train.trainer import embed_run
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
        bundles = {}
        for item in args.bundle:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise UsageError(f"--bundle {item!r}: expected NAME=DIR, e.g. --bundle age=path/to/bundle")
            bundles[name.strip()] = path
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
        p.set_defaults(handler=add(p))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except UserError as err:
        if args.debug:
            raise
        print(f"supemb {args.command}: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, UsageError) else 1
    except KeyboardInterrupt:
        print("supemb: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`supemb predict ... | head`): stop quietly, as
        # Unix tools do. Point stdout at /dev/null so the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
