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
# Each command module contributes one entry; only commands that work are listed.
_SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], Handler]]] = {}


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


if __name__ == "__main__":
    sys.exit(main())
