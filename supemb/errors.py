"""Errors a user can act on.

A `UserError` is printed by the CLI as one line (what, which file, what to
do) with exit code 1; everything else is a bug and shows a traceback.
"""


class UserError(Exception):
    """Bad data, a bad file or a bad model: reported as one clear line."""


class UsageError(UserError):
    """A wrong command-line call: exit code 2."""


ON_ERROR_FLAGS = ("fail", "skip")  # what `--on-error` accepts on the command line and in TrainConfig


def raise_or_skip(flag: str) -> str:
    """`--on-error fail|skip` -> the library's `on_error="raise"|"skip"` (an input that cannot be read)."""
    if flag not in ON_ERROR_FLAGS:
        raise UsageError(f"--on-error must be one of {', '.join(ON_ERROR_FLAGS)}, got {flag!r}")
    return "raise" if flag == "fail" else "skip"
