"""Load a script under benchmarks/ as a module, so tests can check the
baselines and counters that its figures rest on."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

_BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
_loaded: dict[str, ModuleType] = {}


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/<name>.py, loaded once per test session."""
    if name not in _loaded:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", _BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _loaded[name] = module
    return _loaded[name]
