"""Serving must read and preprocess images and EEG without importing torch
(about 2 s on import): these modules stay numpy / Pillow / mne only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIGHT = ("supemb.data.eeg_files", "supemb.preprocess.eeg", "supemb.preprocess.image")


@pytest.mark.parametrize("module", LIGHT)
def test_module_imports_without_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", f"importing {module} imported torch"


def test_the_check_can_fail() -> None:
    """The same probe on a module that does import torch answers True."""
    code = "import sys, supemb.preprocess.image_augment; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
