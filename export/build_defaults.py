"""Build the three default bundles that ship inside supemb (`supemb/bundles/`).

    .venv/bin/python export/build_defaults.py            # all three, ~10 min on 2 CPU cores
    .venv/bin/python export/build_defaults.py --only age --work /tmp/defaults

Each is made by the project's own pipeline, start to end: a synthetic data
set from `supemb.data.synthetic_*`, `supemb train` (RnC, two stages), and
`supemb export` with the training split as the gallery. Everything is seeded
and runs single-threaded on CPU, so a rebuild on the same software gives the
same bundles byte for byte (the manifest's checksums do not change).

These are DEMONSTRATION models trained on SYNTHETIC data (their manifests say
"synthetic": true, and `predict_*` and the demo warn). They are not models of
real faces, webcams or brains. README, "Serve your own model", shows how to
train real ones (AgeDB / UTKFace, SkyFinder, TUH Abnormal).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # determinism: one thread, fixed reduction order

import torch  # noqa: E402

from supemb.data.synthetic_eeg import make_eeg_dataset  # noqa: E402
from supemb.data.synthetic_faces import make_face_dataset  # noqa: E402
from supemb.data.synthetic_webcam import make_webcam_dataset  # noqa: E402
from supemb.export.writer import export_run  # noqa: E402
from supemb.train.config import TrainConfig  # noqa: E402
from supemb.train.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "supemb" / "bundles"

# name -> (make data(work) -> data path, training settings, export settings)
RECIPES = {
    "age": dict(
        data=lambda work: make_face_dataset(work / "data", 1200, n_identities=40, size=32, seed=0),
        train=dict(target="age", loss="rnc", image_size=32),
        # real photos are cropped to their face (YuNet) before embedding; the synthetic gallery
        # faces are cartoon crops already (the detector finds about half of them), so the gallery
        # is embedded without the step and the manifest says so
        export=dict(unit="years", thumbnails=32, name="age (synthetic demo)", detect_faces=True),
    ),
    "temperature": dict(
        data=lambda work: make_webcam_dataset(work / "data", 1200, n_cameras=8, size=32, seed=0),
        train=dict(target="temperature", loss="rnc", image_size=32),
        export=dict(unit="°C", thumbnails=32, name="temperature (synthetic demo)"),
    ),
    "brain_age": dict(
        # the settings docs/evidence.md chose on validation: many short recordings, robust scaling
        data=lambda work: make_eeg_dataset(work / "data", 200, duration_s=30.0, sfreq=100.0, seed=0),
        train=dict(target="age", loss="rnc", eeg={"window_s": 10.0, "stride_s": 5.0, "scaling": "robust"}),
        export=dict(unit="years", thumbnails=0, name="brain age (synthetic demo)"),
    ),
}


def build(name: str, work: Path, out_root: Path) -> Path:
    """Build bundle `name` with scratch files under `work`, a path relative to
    the current directory (so no machine-specific path enters the bundle)."""
    recipe = RECIPES[name]
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = recipe["data"](work)
    run = work / "run"
    if run.exists():
        shutil.rmtree(run)
    final = train(TrainConfig(data=str(data), out=str(run), seed=0, device="cpu", viz=False, **recipe["train"]))
    out = out_root / name
    export_run(run, out, force=True, synthetic=True, **recipe["export"])
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    shown = {k: round(v, 3) for k, v in final.items() if k.startswith("test_") and isinstance(v, float)}
    print(f"{name}: {out} ({size:.1f} MB) in {time.perf_counter() - t0:.0f} s; {shown}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(RECIPES), help="build only this bundle")
    parser.add_argument("--work", help="scratch folder for data and runs (default: a temporary one)")
    parser.add_argument("--out", default=str(OUT), help=f"where the bundles go (default {OUT})")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out_root = Path(args.out).resolve()
    scratch = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="supemb-defaults-"))
    scratch.mkdir(parents=True, exist_ok=True)
    here = Path.cwd()
    os.chdir(scratch)  # data and run paths are recorded relative to here, e.g. "age/data/labels.csv"
    try:
        for name in args.only or sorted(RECIPES):
            build(name, Path(name), out_root)
    finally:
        os.chdir(here)
        if not args.work:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
