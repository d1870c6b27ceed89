"""The machine record every benchmark writes beside its figures."""

from __future__ import annotations

import datetime
import os
import platform
from typing import Any


def machine_info(**extra: Any) -> dict[str, Any]:
    """Platform, CPU count, Python, the load from other jobs and the date, plus `extra` (library versions)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        **extra,
        "load_avg_1_5_15_min": [round(v, 2) for v in os.getloadavg()],  # other jobs on the machine
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
