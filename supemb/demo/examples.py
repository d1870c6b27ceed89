"""The demo's example inputs: a few synthetic faces, webcam frames and EEG recordings, and a real photo.

The synthetic ones come from the project's own generators (`supemb.data.synthetic_*`),
with seeds the default bundles never trained on; the synthetic faces are face crops
already (`cropped`: the demo skips face detection for them). The real photo is
matplotlib's sample portrait of Grace Hopper (matplotlib is a dependency): the
age tab finds her face in it. They are written once into a
cache folder (`$SUPEMB_CACHE/demo-examples-v1`, default
`~/.cache/supemb/...`). Only this folder is opened to the web app
(`allowed_paths`), so examples are the only server files a page can load.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

SEED = 2024  # not a seed the default bundles were built from (they use 0)
IMAGE_SIZE = 32  # what the default image bundles were trained on
N_IMAGES = 4
N_RECORDINGS = 3
EEG_SECONDS = 60.0
EEG_SFREQ = 100.0
_VERSION = "v2"  # bump when the files written here change


@dataclass(frozen=True)
class Example:
    path: Path
    label: str  # shown under the example, e.g. "age 39"
    cropped: bool = True  # a face crop already (the synthetic faces): face detection is skipped for it


def cache_dir() -> Path:
    """`$SUPEMB_CACHE/demo-examples-v1` (default `~/.cache/supemb/demo-examples-v1`)."""
    root = Path(os.environ.get("SUPEMB_CACHE", Path.home() / ".cache" / "supemb"))
    return root / f"demo-examples-{_VERSION}"


def example_inputs(folder: Path | None = None) -> dict[str, list[Example]]:
    """Example inputs per tab ("age", "temperature", "brain_age"), written on first use."""
    folder = cache_dir() if folder is None else Path(folder)
    index = folder / "examples.json"
    if not index.is_file():
        _write_examples(folder)
    listing = json.loads(index.read_text(encoding="utf-8"))
    return {tab: [Example(folder / e["file"], e["label"], e.get("cropped", True)) for e in items]
            for tab, items in listing.items()}


def _write_examples(folder: Path) -> None:
    """Write into a fresh sibling folder, then rename it into place: two demos
    starting at once never see a half-written folder."""
    from PIL import Image

    from supemb.data.synthetic_eeg import make_eeg_dataset
    from supemb.data.synthetic_faces import face_arrays
    from supemb.data.synthetic_webcam import webcam_arrays

    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        listing: dict[str, list[dict[str, str]]] = {"age": [], "temperature": [], "brain_age": []}
        faces, ages, _ = face_arrays(N_IMAGES, size=IMAGE_SIZE, seed=SEED)
        for i, (img, age) in enumerate(zip(faces, ages)):
            name = f"face_{i}_age{int(age)}.png"
            Image.fromarray(img).save(work / name)
            listing["age"].append({"file": name, "label": f"synthetic face, age {int(age)}"})
        import matplotlib.cbook

        shutil.copyfile(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), work / "photo.jpg")
        listing["age"].append({"file": "photo.jpg", "label": "a real photo (Grace Hopper, from matplotlib)",
                               "cropped": False})
        frames, temps, _ = webcam_arrays(N_IMAGES, size=IMAGE_SIZE, seed=SEED)
        for i, (img, temp) in enumerate(zip(frames, temps)):
            name = f"webcam_{i}_{float(temp):+.1f}C.png"
            Image.fromarray(img).save(work / name)
            listing["temperature"].append({"file": name, "label": f"synthetic webcam, {float(temp):.1f} °C"})
        eeg = make_eeg_dataset(work / "eeg", N_RECORDINGS, duration_s=EEG_SECONDS, sfreq=EEG_SFREQ, seed=SEED)
        rows = (eeg / "labels.csv").read_text(encoding="utf-8").splitlines()[1:]
        for i, row in enumerate(rows):
            file, age = row.split(",")[:2]
            name = f"eeg_{i}_age{age}.edf"
            (eeg / file).rename(work / name)
            listing["brain_age"].append({"file": name, "label": f"synthetic EEG, {EEG_SECONDS:g} s, age {age}"})
        shutil.rmtree(eeg)
        (work / "examples.json").write_text(json.dumps(listing, indent=1), encoding="utf-8")
        work.chmod(0o755)
        try:
            work.rename(folder)
        except OSError:  # another process got there first (or a stale folder without examples.json)
            if not (folder / "examples.json").is_file():
                shutil.rmtree(folder, ignore_errors=True)
                work.rename(folder)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
