"""The `supemb` command line.

Subcommands are listed explicitly in `_SUBCOMMANDS`; each module adds its own
parser and handler. Exit codes: 0 success, 2 usage error, 1 data/model error.
A `UserError` prints one line; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from supemb import __version__
from supemb.errors import UsageError, UserError

# name -> (help, function that adds arguments and returns the handler)
Handler = Callable[[argparse.Namespace], int]
_SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], Handler]]] = {}


def _bench_parser(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("what", choices=["losses"], help="which benchmark to run")
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="batch sizes 2N to time (default: 64 256 512 1024)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", dest="json_out", default=None, help="write the results here as JSON")

    def run(args: argparse.Namespace) -> int:
        from supemb.bench import run_loss_benchmark

        run_loss_benchmark(sizes=args.sizes, device=args.device, json_out=args.json_out)
        return 0

    return run


_SUBCOMMANDS["bench"] = ("time the losses (see benchmarks/ for all benchmarks)", _bench_parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="supemb",
        description="Label-aware embeddings: train with supervised contrastive losses, "
        "export to ONNX, serve with FAISS kNN.",
    )
    parser.add_argument("--version", action="version", version=f"supemb {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
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


if __name__ == "__main__":
    sys.exit(main())
