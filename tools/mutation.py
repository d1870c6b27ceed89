"""Mutation testing (`make mutation`) of the core arithmetic and of the command line's
argument and error handling: mutmut mutates each target module in turn, runs for
every mutant the fast tests that reach the mutated function (pyproject.toml's
[tool.mutmut]), and this prints the score per module and every mutant that survived.
A run is appended to benchmarks/results/mutation.jsonl with its date, machine and
load; docs/mutation.md explains the survivors.

    python tools/mutation.py                      # all target modules, one mutant at a time
    python tools/mutation.py --modules manifest   # one module (a short name of TARGETS)
    python tools/mutation.py --modules cli commands
    python tools/mutation.py --min-score 90       # exit 1 when a module scores lower

Not run in CI (minutes of CPU). mutmut works in ./mutants (a copy of the package;
ignored by git through the mutants/.gitignore this writes).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# short name -> the dotted module mutated; each one's file must be in [tool.mutmut] only_mutate
TARGETS = {
    "neighbours": "supemb.predict.neighbours",
    "retrieval": "supemb.predict.retrieval",
    "manifest": "supemb.predict.manifest",
    "cli": "supemb.cli",
    "commands": "supemb.commands",
    "errors": "supemb.errors",
}
# Functions of a target left out of its score, with the reason (docs/mutation.md lists them): their
# mutants are made (only_mutate is per file) but counted apart, as "left out".
LEFT_OUT = {
    "supemb.commands": {"evaluate_bundle": "the metrics of `supemb eval`: it needs a bundle's encoder, "
                                           "index and data; its arithmetic is retrieval.py's, mutated there"},
}
DETECTED = ("killed", "timeout", "segfault", "caught by type check")  # a test run noticed the change
RESULTS = ROOT / "benchmarks" / "results" / "mutation.jsonl"
sys.path.insert(0, str(ROOT / "benchmarks"))  # benchmarks/_machine.py
from _machine import cpu_model  # noqa: E402  (one definition, shared with the benchmarks)


def mutmut_version() -> str:
    from importlib.metadata import version

    return version("mutmut")


def source_path(module: str) -> str:
    """`supemb.predict.neighbours` -> `supemb/predict/neighbours.py` (as [tool.mutmut] only_mutate names it)."""
    return module.replace(".", "/") + ".py"


def check_configured(targets: list[str]) -> None:
    """Exit with a message when a target's file is not in pyproject.toml's [tool.mutmut] only_mutate
    (mutmut would make no mutants of it, and the score would read 0 / 0)."""
    import tomllib

    only = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"].get("only_mutate", [])
    missing = [source_path(TARGETS[t]) for t in targets if source_path(TARGETS[t]) not in only]
    if missing:
        sys.exit(f"not in [tool.mutmut] only_mutate of pyproject.toml: {', '.join(missing)}")


def run_module(module: str, children: int, log: Path) -> float:
    """`mutmut run` on one module's mutants (`module` dotted); its progress goes to `log`. Returns the seconds taken."""
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(children),
                               f"{module}.*"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"mutmut failed on {source_path(module)} (exit {proc.returncode}); see {log}")
    return time.monotonic() - start


def statuses() -> dict[str, str]:
    """{mutant name: status} of every mutant mutmut has recorded (`mutmut results --all true`)."""
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name.startswith("supemb."):
            found[name] = status
    return found


def function_of(name: str, module: str) -> str:
    """The function a mutant of `module` changes: `supemb.cli.x_main__mutmut_3` -> `main`
    (a method's mutants, `xǁClassǁmethod__mutmut_1`, give `Class.method`)."""
    mangled = name[len(module) + 1:].rpartition("__mutmut_")[0]
    return mangled.removeprefix("x_").removeprefix("xǁ").replace("ǁ", ".")


def summarise(module: str, status: dict[str, str], seconds: float) -> dict:
    """Counts, score (detected / all mutants, in %) and the mutants left alive of one module
    (dotted), without the mutants of its LEFT_OUT functions (counted apart)."""
    skip = LEFT_OUT.get(module, {})
    mine = {n: s for n, s in status.items() if n.startswith(f"{module}.")}
    left_out = Counter(function_of(n, module) for n in mine if function_of(n, module) in skip)
    mine = {n: s for n, s in mine.items() if function_of(n, module) not in skip}
    counts = Counter(mine.values())
    detected = sum(counts[s] for s in DETECTED)
    report = {"module": source_path(module), "mutants": len(mine), "killed": detected,
              "score_pct": round(100.0 * detected / max(len(mine), 1), 1), "by_status": dict(sorted(counts.items())),
              "alive": sorted(n for n, s in mine.items() if s not in DETECTED), "seconds": round(seconds)}
    if left_out:
        report["left_out"] = dict(sorted(left_out.items()))  # function -> its mutants, not in the score
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modules", nargs="+", choices=list(TARGETS), default=list(TARGETS),
                    help="short names of the modules to mutate (default: all)")
    ap.add_argument("--children", type=int, default=1, help="mutants tested at once (default 1: a shared machine)")
    ap.add_argument("--min-score", type=float, default=0.0, help="exit 1 if a module's score (%%) is lower")
    ap.add_argument("--keep", action="store_true", help="reuse ./mutants instead of starting afresh")
    ap.add_argument("--no-record", action="store_true", help=f"do not append the run to {RESULTS.relative_to(ROOT)}")
    args = ap.parse_args(argv)
    check_configured(args.modules)
    try:
        version = mutmut_version()
    except ImportError:
        sys.exit("mutmut is not installed: pip install mutmut (`make mutation` does this)")
    work = ROOT / "mutants"
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(exist_ok=True)
    (work / ".gitignore").write_text("*\n")
    load_before = [round(v, 2) for v in os.getloadavg()]
    seconds = {}
    for name in args.modules:
        print(f"mutating {source_path(TARGETS[name])} ...", flush=True)
        seconds[name] = run_module(TARGETS[name], args.children, work / f"{name}.log")
    status = statuses()
    report = [summarise(TARGETS[m], status, seconds[m]) for m in args.modules]
    print(f"\nmutmut {version}; score = mutants detected (killed, timed out) / all mutants")
    for r in report:
        print(f"  {r['module']:32s} {r['killed']:4d} / {r['mutants']:4d}  {r['score_pct']:5.1f} %  "
              f"{r['by_status']}  ({r['seconds']} s)")
        if r.get("left_out"):
            left = ", ".join(f"{f} ({n} mutants)" for f, n in r["left_out"].items())
            print(f"  {'':32s} left out of the score: {left}")
    for r in report:
        if r["alive"]:
            print(f"\nalive in {r['module']} (`mutmut show NAME` shows the change):")
            print("\n".join(f"  {n}  {status[n]}" for n in r["alive"]))
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        record = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "tool": "mutmut",
                  "tool_version": version, "python": platform.python_version(), "cpu_model": cpu_model(),
                  "cpu_count": os.cpu_count(), "children": args.children, "load_avg_1_5_15_min": load_before,
                  "modules": [{k: v for k, v in r.items()} for r in report]}
        with open(RESULTS, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"\nappended to {RESULTS.relative_to(ROOT)}")
    low = [r["module"] for r in report if r["score_pct"] < args.min_score]
    if low:
        print(f"below {args.min_score:g} %: {', '.join(low)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
