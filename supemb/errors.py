"""Errors a user can act on.

A `UserError` is printed by the CLI as one line (what, which file, what to
do) with exit code 1; everything else is a bug and shows a traceback.
"""


class UserError(Exception):
    """Bad data, a bad file or a bad model: reported as one clear line."""


class UsageError(UserError):
    """A wrong command-line call: exit code 2."""
