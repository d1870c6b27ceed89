"""The machine record every benchmark writes beside its figures, and the append-only result files.

Every run is appended (`append_run`), never overwritten, so a range quoted in
BENCHMARKS.md is backed by the runs it spans; each record carries the date,
the CPU model, the core and thread counts and the load from other jobs.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(**extra: Any) -> dict[str, Any]:
    """Platform, CPU model and count, the threads torch uses (when loaded), Python, the load from
    other jobs and the date, plus `extra` (library versions)."""
    torch = sys.modules.get("torch")
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "python": platform.python_version(),
        **extra,
        "load_avg_1_5_15_min": [round(v, 2) for v in os.getloadavg()],  # other jobs on the machine
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def append_run(path: str | Path, record: dict[str, Any]) -> int:
    """Append `record` to the result file `path` ({"runs": [...]}); a file written before runs
    were appended (one record) becomes the first run. Returns the number of runs now held."""
    path = Path(path)
    runs: list[dict[str, Any]] = []
    if path.is_file():
        old = json.loads(path.read_text())
        runs = old["runs"] if isinstance(old, dict) and isinstance(old.get("runs"), list) else [old]
    runs.append(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    return len(runs)
