"""Import boundaries: serving a bundle loads no training code, and the
neighbour arithmetic (`supemb.predict.neighbours`, `retrieval`) needs nothing
but numpy. Each check runs in a fresh interpreter, so what this test process
has already imported cannot hide an import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ("supemb.train", "supemb.losses")


def _run(code: str) -> dict:
    """Run `code` in a fresh interpreter with the repository on the path; it prints one JSON object."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _serve(bundle: str, source: Path) -> dict:
    """Load a shipped bundle, predict `source`; the prediction and every module then imported."""
    return _run(f"""
import json, sys
import supemb
b = supemb.load_bundle({str(ROOT / "supemb" / "bundles" / bundle)!r}, device="cpu")
p = b.predict({str(source)!r})[0]
print(json.dumps({{"ok": p.ok, "value": p.value, "error": p.error, "modules": sorted(sys.modules)}}))
""")


def _training_modules(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == t or m.startswith(t + ".") for t in TRAINING)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A synthetic face image and a synthetic EEG recording, written before any check starts."""
    from PIL import Image

    from supemb.data.synthetic_eeg import TUH_FILE_CHANNELS, synth_recording, write_edf
    from supemb.data.synthetic_faces import face_arrays

    d = tmp_path_factory.mktemp("boundary_inputs")
    images, _, _ = face_arrays(1)
    Image.fromarray(images[0]).save(d / "face.png")
    signals = synth_recording(45.0, 30.0, 250.0, np.random.default_rng(0))
    write_edf(d / "rec.edf", signals, 250.0, TUH_FILE_CHANNELS)
    return {"image": d / "face.png", "eeg": d / "rec.edf"}


@pytest.fixture(scope="module")
def image_served(inputs: dict[str, Path]) -> dict:
    return _serve("age", inputs["image"])


@pytest.fixture(scope="module")
def eeg_served(inputs: dict[str, Path]) -> dict:
    return _serve("brain_age", inputs["eeg"])


def test_image_serving_imports_no_training_code_and_no_torch(image_served: dict) -> None:
    assert image_served["ok"], image_served["error"]
    assert np.isfinite(image_served["value"])
    assert _training_modules(image_served["modules"]) == []
    assert "torch" not in image_served["modules"]


def test_eeg_serving_imports_no_training_code(eeg_served: dict) -> None:
    assert eeg_served["ok"], eeg_served["error"]
    assert np.isfinite(eeg_served["value"])
    assert _training_modules(eeg_served["modules"]) == []


def test_eeg_serving_imports_no_torch(eeg_served: dict) -> None:
    assert eeg_served["ok"], eeg_served["error"]
    assert "torch" not in eeg_served["modules"]


def test_neighbour_arithmetic_imports_only_numpy() -> None:
    new = _run("""
import json, sys
before = set(sys.modules)
import supemb.predict.neighbours, supemb.predict.retrieval
print(json.dumps(sorted(set(sys.modules) - before)))
""")
    assert "supemb.predict.neighbours" in new and "supemb.predict.retrieval" in new
    ours = {"supemb", "supemb.errors", "supemb.predict", "supemb.predict.neighbours", "supemb.predict.retrieval"}
    others = [m for m in new if m not in ours and m.split(".")[0] not in sys.stdlib_module_names
              and m.split(".")[0] != "numpy"]
    assert others == []
