"""How often the default bundles flag an input as unfamiliar: the figures behind the
familiarity threshold in docs/DESIGN.md ("Inputs unlike the gallery").

    .venv/bin/python experiments/familiarity.py [--docs-dir DIR]

For each default bundle, sets of inputs of its own kind (held out: generated
with a seed no bundle was built from) and of other kinds (the other image
bundle's synthetic frames, scikit-learn's digits, scikit-image's sample
photographs, real faces from scikit-image's lfw_subset; for EEG, brown and white
noise, and held-out recordings with their channels scrambled). For each set it records the
median prediction, the median familiarity (the percentile of the input's nearest-neighbour statistic
in the gallery's own leave-one-out reference) and the share flagged at cuts
1 %, 2 %, 5 % and 10 % (familiarity below the cut; the bundles flag at their
manifest's `threshold_quantile`, 5 %). Appends the run, with its machine
record, to DOCS/familiarity.json and writes DOCS/familiarity.md.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # experiments/_common.py, however this file is loaded
import _common as C  # noqa: E402

CUTS = (0.01, 0.02, 0.05, 0.10)
HELD_OUT_SEED = 321  # the default bundles are built from seed 0
OTHER_SEED = 123
SKIMAGE_SAMPLES = ("astronaut", "camera", "coffee", "coins", "chelsea", "rocket", "moon", "page", "text", "brick",
                   "grass", "gravel", "colorwheel", "clock", "cell", "retina", "hubble_deep_field",
                   "immunohistochemistry")


def digits(n: int = 200) -> list[np.ndarray]:
    """scikit-learn's 8x8 digits, upscaled 4x to 32x32 grey RGB uint8."""
    from sklearn.datasets import load_digits

    grey = (load_digits().images[:n] / 16.0 * 255).astype(np.uint8)
    big = grey.repeat(4, axis=1).repeat(4, axis=2)
    return list(np.repeat(big[..., None], 3, axis=3))


def photographs() -> list[np.ndarray]:
    """scikit-image's bundled sample images (no download), as RGB uint8."""
    from skimage import data

    out = []
    for name in SKIMAGE_SAMPLES:
        try:
            a = np.asarray(getattr(data, name)())
        except Exception:  # noqa: BLE001 - a sample missing from this version: skipped, no download
            continue
        a = np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3]
        out.append(np.ascontiguousarray(a, dtype=np.uint8))
    return out


def lfw_faces(n: int = 100) -> list[np.ndarray]:
    """scikit-image's lfw_subset: real faces, 25 px grey crops, as RGB uint8."""
    from skimage import data

    grey = (data.lfw_subset()[:n] * 255).astype(np.uint8)
    return list(np.repeat(grey[..., None], 3, axis=3))


def noise_recordings(folder: Path, kind: str, n: int = 40) -> list[Path]:
    """Noise on the brain-age model's channels, 30 s at 100 Hz: "brown" (1/f^2, a drifting,
    disconnected-looking recording) or "white" (Gaussian)."""
    from supemb.data.synthetic_eeg import TUH_FILE_CHANNELS, write_edf

    names = [f"EEG {c}-REF" for c in TUH_FILE_CHANNELS]
    out = []
    for i in range(n):
        x = np.random.default_rng([9 if kind == "brown" else 10, i]).normal(size=(len(names), 3000))
        if kind == "brown":
            x = np.cumsum(x, axis=1)
            x -= x.mean(axis=1, keepdims=True)
        out.append(write_edf(folder / f"{kind}_{i}.edf", 20 * x / x.std(), 100.0, names))
    return out


def scrambled(recordings: list[Path], folder: Path) -> list[Path]:
    """The same recordings with their channels' signals shuffled among the channel names (seeded)."""
    import mne

    from supemb.data.synthetic_eeg import write_edf

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, path in enumerate(recordings):
        raw = mne.io.read_raw_edf(path, preload=True, verbose="error")
        x = raw.get_data() * 1e6  # volts -> microvolts
        order = np.random.default_rng([11, i]).permutation(len(x))
        out.append(write_edf(folder / path.name, x[order], raw.info["sfreq"], raw.ch_names))
    return out


def input_sets(tmp: Path) -> dict[str, dict[str, list]]:
    """{bundle: {set name: inputs}}; the first set of each bundle is its own kind, held out."""
    from supemb.data.synthetic_eeg import make_eeg_dataset
    from supemb.data.synthetic_faces import face_arrays
    from supemb.data.synthetic_webcam import webcam_arrays

    faces, frames = list(face_arrays(500, size=32, seed=HELD_OUT_SEED)[0]), \
        list(webcam_arrays(500, size=32, seed=HELD_OUT_SEED)[0])
    other_faces, other_frames = list(face_arrays(200, size=32, seed=OTHER_SEED)[0]), \
        list(webcam_arrays(200, size=32, seed=OTHER_SEED)[0])
    photos, digit_images = photographs(), digits()
    held = sorted(make_eeg_dataset(tmp / "held", 200, duration_s=30.0, sfreq=100.0, seed=11).glob("*.edf"))
    return {
        "age": {"own kind, held out (synthetic faces)": faces, "webcam frames": other_frames,
                "digits": digit_images, "photographs": photos, "real faces (LFW, 25 px grey)": lfw_faces()},
        "temperature": {"own kind, held out (synthetic webcam frames)": frames, "faces": other_faces,
                        "digits": digit_images, "photographs": photos},
        "brain_age": {"own kind, held out (synthetic EEG recordings)": held,
                      "brown-noise recordings": noise_recordings(tmp / "noise", "brown"),
                      "the held-out recordings, channels scrambled": scrambled(held, tmp / "scrambled"),
                      "white-noise recordings": noise_recordings(tmp / "noise", "white")},
    }


def measure(name: str, items: list) -> dict[str, Any]:
    from supemb.predict import api
    from supemb.predict.bundle import load_bundle

    bundle = load_bundle(api.default_bundle_path(name))
    # the embedding's own judgement: the age bundle's face detector would refuse most foreign images first
    preds = bundle.predict(items, **({"detect": False} if bundle.detects_faces else {}))
    f = np.array([p.familiarity for p in preds], np.float64)
    flagged = np.array([p.unfamiliar for p in preds], bool)
    return {"n": len(f), "median_familiarity": float(np.median(f)),
            "flagged_at": {f"{c:g}": float(np.mean(f < c)) for c in CUTS},
            "flagged_by_bundle": float(flagged.mean()),
            "median_prediction": float(np.median([p.value for p in preds]))}


def write_markdown(record: dict, docs: Path) -> Path:
    last = record["runs"][-1]
    lines = C.record_header("Familiarity: which inputs the default bundles flag", "familiarity", record) + [
             "Familiarity is the percentile of an input's nearest-neighbour similarity within the gallery's own "
             "leave-one-out reference (docs/DESIGN.md). A cut flags inputs below that percentile; the bundles "
             "flag at their manifest's threshold quantile (5 %), the last column.", ""]
    head = " | ".join(f"flagged at {float(c) * 100:g} %" for c in last["cuts"])
    for name, sets in last["bundles"].items():
        lines += [f"## {name}", "", f"| inputs | n | median familiarity | {head} | flagged by the bundle | "
                  "median prediction |", "|---|---:|---:|" + "---:|" * len(last["cuts"]) + "---:|---:|"]
        for what, r in sets.items():
            rates = " | ".join(f"{r['flagged_at'][c] * 100:.1f} %" for c in last["cuts"])
            lines.append(f"| {what} | {r['n']} | {r['median_familiarity'] * 100:.1f} % | {rates} | "
                         f"{r['flagged_by_bundle'] * 100:.1f} % | {r.get('median_prediction', float('nan')):.1f} |")
        lines.append("")
    return C.write_doc(docs / "familiarity.md", lines)


def main() -> None:
    docs = C.docs_dir_arg(__doc__)
    run: dict[str, Any] = {"machine": C.machine(), "cuts": [f"{c:g}" for c in CUTS], "bundles": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, sets in input_sets(Path(tmp)).items():
            run["bundles"][name] = {what: measure(name, items) for what, items in sets.items()}
            for what, r in run["bundles"][name].items():
                print(f"{name:12s} {what:45s} median {r['median_familiarity']:.3f}  "
                      f"flagged {r['flagged_by_bundle']:.3f}", flush=True)
    C.append_run(docs / "familiarity.json", run, write_markdown)


if __name__ == "__main__":
    main()
