"""Calling `supemb ARGV` in process, for the fast command-line tests."""

from __future__ import annotations

from supemb.cli import main


def call(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `supemb ARGV`; argparse's own errors exit by SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err
