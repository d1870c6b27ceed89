"""Mutation testing of the core arithmetic (`make mutation`): mutmut mutates each
target module in turn, runs for every mutant the fast tests that reach the mutated
function (pyproject.toml's [tool.mutmut]), and this prints the score per module
and every mutant that survived. A run is appended to benchmarks/results/mutation.jsonl
with its date, machine and load; docs/mutation.md explains the survivors.

    python tools/mutation.py                      # all target modules, one mutant at a time
    python tools/mutation.py --modules manifest   # one module
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
MODULES = ("neighbours", "retrieval", "manifest")  # supemb/predict/<name>.py, as in [tool.mutmut] only_mutate
DETECTED = ("killed", "timeout", "segfault", "caught by type check")  # a test run noticed the change
RESULTS = ROOT / "benchmarks" / "results" / "mutation.jsonl"


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mutmut_version() -> str:
    from importlib.metadata import version

    return version("mutmut")


def run_module(module: str, children: int, log: Path) -> float:
    """`mutmut run` on one module's mutants; its progress goes to `log`. Returns the seconds taken."""
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(children),
                               f"supemb.predict.{module}.*"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"mutmut failed on supemb/predict/{module}.py (exit {proc.returncode}); see {log}")
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


def summarise(module: str, status: dict[str, str], seconds: float) -> dict:
    """Counts, score (detected / all mutants, in %) and the mutants left alive of one module."""
    mine = {n: s for n, s in status.items() if n.startswith(f"supemb.predict.{module}.")}
    counts = Counter(mine.values())
    detected = sum(counts[s] for s in DETECTED)
    return {"module": f"supemb/predict/{module}.py", "mutants": len(mine), "killed": detected,
            "score_pct": round(100.0 * detected / max(len(mine), 1), 1), "by_status": dict(sorted(counts.items())),
            "alive": sorted(n for n, s in mine.items() if s not in DETECTED), "seconds": round(seconds)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modules", nargs="+", choices=MODULES, default=list(MODULES))
    ap.add_argument("--children", type=int, default=1, help="mutants tested at once (default 1: a shared machine)")
    ap.add_argument("--min-score", type=float, default=0.0, help="exit 1 if a module's score (%%) is lower")
    ap.add_argument("--keep", action="store_true", help="reuse ./mutants instead of starting afresh")
    ap.add_argument("--no-record", action="store_true", help=f"do not append the run to {RESULTS.relative_to(ROOT)}")
    args = ap.parse_args(argv)
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
    for module in args.modules:
        print(f"mutating supemb/predict/{module}.py ...", flush=True)
        seconds[module] = run_module(module, args.children, work / f"{module}.log")
    status = statuses()
    report = [summarise(m, status, seconds[m]) for m in args.modules]
    print(f"\nmutmut {version}; score = mutants detected (killed, timed out) / all mutants")
    for r in report:
        print(f"  {r['module']:32s} {r['killed']:4d} / {r['mutants']:4d}  {r['score_pct']:5.1f} %  "
              f"{r['by_status']}  ({r['seconds']} s)")
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
