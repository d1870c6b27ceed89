"""How honest the default bundles' ± is on inputs they never saw: the figures behind
"A value's served ± is calibrated on validation" in docs/DESIGN.md.

    .venv/bin/python experiments/calibration.py [--docs-dir DIR]

For each default bundle, a held-out set of its own kind with known targets (generated
with a seed no bundle was built from: 500 synthetic faces, 500 synthetic webcam frames,
200 synthetic EEG recordings) goes through `Bundle.predict`. Recorded per bundle: the
MAE, the median served ±, the median |error|, and the share of errors inside the ±,
both as served (the kNN spread times the manifest's `knn.uncertainty_scale`, chosen on
the run's validation split) and with the plain spread (scale 1, what bundles served
before the calibration). A calibrated ± covers about 68 %. Appends the run, with its
machine record, to DOCS/calibration.json and writes DOCS/calibration.md.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # experiments/_common.py, however this file is loaded
import _common as C  # noqa: E402

HELD_OUT_SEED = 321  # the default bundles are built from seed 0 (images)
HELD_OUT_EEG_SEED = 11


def held_out(tmp: Path) -> dict[str, tuple[list, np.ndarray, str]]:
    """{bundle: (inputs, targets, what they are)}."""
    from supemb.data.eeg_files import list_recordings
    from supemb.data.synthetic_eeg import make_eeg_dataset
    from supemb.data.synthetic_faces import face_arrays
    from supemb.data.synthetic_webcam import webcam_arrays

    faces, ages, _ = face_arrays(500, size=32, seed=HELD_OUT_SEED)
    frames, temps, _ = webcam_arrays(500, size=32, seed=HELD_OUT_SEED)
    folder = make_eeg_dataset(tmp / "held", 200, duration_s=30.0, sfreq=100.0, seed=HELD_OUT_EEG_SEED)
    recs = list_recordings(folder, "age")
    return {
        "age": (list(faces), ages.astype(np.float64), "synthetic faces"),
        "temperature": (list(frames), temps.astype(np.float64), "synthetic webcam frames"),
        "brain_age": ([r.path for r in recs], np.array([float(r.target) for r in recs]),
                      "synthetic EEG recordings"),
    }


def measure(name: str, items: list, targets: np.ndarray) -> dict[str, Any]:
    from supemb.predict import api
    from supemb.predict.bundle import load_bundle
    from supemb.predict.calibration import coverage_of

    bundle = load_bundle(api.default_bundle_path(name))
    # synthetic face crops: the detector would refuse about half of them (the gallery skipped it too)
    kw = {"detect": False} if bundle.detects_faces else {}
    preds = bundle.predict(items, **kw)
    err = np.abs(np.array([p.value for p in preds]) - targets)
    unc = np.array([p.uncertainty for p in preds])
    flagged = np.array([bool(p.unfamiliar) for p in preds])
    bundle.familiarity = None  # the same predictions without the table: no input flagged, so no floor
    raw = np.array([p.uncertainty for p in bundle.predict(items, **kw)])
    scale = bundle.uncertainty_scale
    return {"n": len(err), "mae": float(err.mean()), "median_abs_error": float(np.median(err)),
            "uncertainty_scale": scale, "median_uncertainty": float(np.median(unc)),
            "coverage": coverage_of(err, unc), "flagged": float(flagged.mean()),
            "coverage_without_floor": coverage_of(err, raw),
            "median_plain_spread": float(np.median(raw / scale)),
            "coverage_plain_spread": coverage_of(err, raw / scale)}


def write_markdown(record: dict, docs: Path) -> Path:
    last = record["runs"][-1]
    title = "Calibration: how often the default bundles' ± holds the true value"
    lines = C.record_header(title, "calibration", record) + [
             "Held-out inputs of each bundle's own kind (a seed no bundle was built from). *As served*: the kNN "
             "spread times the manifest's `knn.uncertainty_scale`, the scale that put 68.27 % of the run's "
             "validation errors inside it (docs/DESIGN.md), and for an input flagged unfamiliar at least the ± "
             "of knowing only the gallery's targets (`supemb.predict.calibration.prior_halfwidth`); *without the "
             "floor*: the scaled spread alone. *Plain spread*: the neighbours' weighted spread alone (scale 1, "
             "no floor), what bundles served before. A calibrated ± covers about 68 %.", "",
             "| bundle | inputs | n | MAE | median \\|error\\| | scale | flagged | median ± as served "
             "| inside ± as served | inside ± without the floor | median plain spread | inside plain spread |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in last["bundles"].items():
        lines.append(f"| {name} | {r['inputs']} | {r['n']} | {r['mae']:.2f} | {r['median_abs_error']:.2f} | "
                     f"{r['uncertainty_scale']:.2f} | {r['flagged'] * 100:.1f} % | {r['median_uncertainty']:.2f} | "
                     f"{r['coverage'] * 100:.0f} % | {r['coverage_without_floor'] * 100:.0f} % | "
                     f"{r['median_plain_spread']:.2f} | {r['coverage_plain_spread'] * 100:.0f} % |")
    out = docs / "calibration.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def main() -> None:
    docs = C.docs_dir_arg(__doc__)
    run: dict[str, Any] = {"machine": C.machine(), "bundles": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (items, targets, what) in held_out(Path(tmp)).items():
            r = run["bundles"][name] = {"inputs": what, **measure(name, items, targets)}
            print(f"{name:12s} MAE {r['mae']:.2f}  inside ± {r['coverage']:.2f} (plain spread "
                  f"{r['coverage_plain_spread']:.2f}, scale {r['uncertainty_scale']:.2f})", flush=True)
    C.append_run(docs / "calibration.json", run, write_markdown)


if __name__ == "__main__":
    main()
