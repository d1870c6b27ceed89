"""The command line's interface, flag by flag: tests/cli_flags.json lists every subcommand's
arguments (names, defaults, types, choices, help) as the user sees them in `--help`. A flag
renamed, a default or choice changed, or a help text lost, fails here until the file is
rewritten on purpose, after reading its diff:

    python tests/test_cli_flags.py    # rewrites tests/cli_flags.json from the parser
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SNAPSHOT = Path(__file__).with_name("cli_flags.json")


def _describe(action: argparse.Action) -> dict:
    """What `--help` and parsing reveal of one argument, in JSON terms."""
    kind = type(action).__name__.removeprefix("_").removesuffix("Action")
    typ = action.type.__name__ if action.type is not None else None
    choices = list(action.choices) if action.choices is not None else None
    found = {"flags": action.option_strings or [action.dest], "dest": action.dest, "action": kind,
             "default": action.default, "type": typ, "choices": choices, "nargs": action.nargs,
             "const": action.const, "required": action.required, "metavar": action.metavar, "help": action.help}
    return {k: v for k, v in found.items() if v is not None}  # None: not set


def interface() -> dict[str, dict]:
    """{"supemb" and each subcommand: its help, description and arguments (in --help order)}."""
    from supemb.cli import build_parser

    parser = build_parser()
    found = {"supemb": {"prog": parser.prog, "description": parser.description, "arguments": []}}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found["supemb"]["commands"] = {"dest": action.dest, "metavar": action.metavar}
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                found[name] = {"help": helps[name], "description": sub.description, "arguments": [
                    _describe(a) for a in sub._actions if not isinstance(a, argparse._HelpAction)]}
        elif not isinstance(action, argparse._HelpAction):
            found["supemb"]["arguments"].append(_describe(action))
    return found


def test_command_line_interface_is_as_recorded() -> None:
    """Every subcommand's help and arguments equal tests/cli_flags.json, one argument at a time."""
    want = json.loads(SNAPSHOT.read_text())
    got = json.loads(json.dumps(interface()))  # tuples -> lists, as in the file
    assert list(got) == list(want)
    for command, w in want.items():
        g = got[command]
        assert {k: v for k, v in g.items() if k != "arguments"} == {k: v for k, v in w.items() if k != "arguments"}
        assert [a["flags"] for a in g["arguments"]] == [a["flags"] for a in w["arguments"]], command
        for ga, wa in zip(g["arguments"], w["arguments"]):
            assert ga == wa, f"supemb {command} {wa['flags'][0]}"


def _write(found: dict[str, dict]) -> str:
    """The snapshot as JSON, one argument a line (readable diffs)."""
    parts = []
    for command, about in found.items():
        head = json.dumps({k: v for k, v in about.items() if k != "arguments"}, ensure_ascii=False)[1:-1]
        rows = ",\n".join("   " + json.dumps(a, ensure_ascii=False) for a in about["arguments"])
        parts.append(f' "{command}": {{{head}, "arguments": [\n{rows}\n ]}}')
    return "{\n" + ",\n".join(parts) + "\n}\n"


if __name__ == "__main__":
    SNAPSHOT.write_text(_write(interface()))
    print(f"wrote {SNAPSHOT}")
