"""The package's defaults on data they were not chosen on: RnC against L1 as a new user trains them.

    .venv/bin/python experiments/heldout.py [--work runs/heldout] [--seeds 2] [--only SET] [--docs-dir DIR]

The default recipe (docs/recipe.md) and the evidence (docs/evidence.md) use the synthetic webcam
set of eight cameras (generator seed 0) and 200 recordings of 30 s at 100 Hz. Here each side is
trained exactly as `supemb train --loss rnc|l1` trains it, with every default (only the image
size of 32 px frames is given, as the README's example does), on sets shaped otherwise:

- webcam, new scenes: 3,000 frames of 12 cameras (four scenes the defaults never saw), another
  generator seed, a 70/10/20 split over frames (the issue's SkyFinder-style shape);
- webcam, unseen cameras: 3,000 frames of 16 cameras split by camera, so the test cameras'
  scenes and climates are never in training (val: two other unseen cameras);
- webcam, more frames: the new-scenes shape with four times the frames (12,000; 8,400 to train
  on), another seed: does either side gain more from data?
- EEG: 160 recordings of 60 s at 250 Hz (the issue's TUH-style shape), another seed.

Each set's comparisons are the paired bootstrap of `experiments/significance.py` (each side's
best row on test, each side's row chosen on validation, kNN against kNN, and what each side's
bundle serves: plain or residual kNN, as the run chose on validation). The unseen-camera
set's test frames come from three cameras, so its interval, over frames, is too narrow
(`CAUTION`). Appends the run to DOCS/heldout.json and writes DOCS/heldout.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # experiments/*.py, however this file is loaded
import _common as C  # noqa: E402
import evidence as E  # noqa: E402
import significance as S  # noqa: E402

DRAWS = 10_000
# set -> (task kind in evidence.TASKS, how its data is made, what it is)
SETS: dict[str, tuple[str, dict[str, Any], str]] = {
    "webcam-new-scenes": ("webcam", {"n_images": 3000, "n_cameras": 12, "size": 32, "seed": 11, "val_frac": 0.1,
                                     "test_frac": 0.2},
                          "3,000 frames of 12 cameras (4 scenes new), 32 px, seed 11, 70/10/20 over frames"),
    "webcam-unseen-cameras": ("webcam", {"n_images": 3000, "n_cameras": 16, "size": 32, "seed": 12,
                                         "split_by": "group", "val_frac": 0.1, "test_frac": 0.2},
                              "3,000 frames of 16 cameras, 32 px, seed 12, split by camera (11 train, 2 val, "
                              "3 test cameras)"),
    "webcam-more-frames": ("webcam", {"n_images": 12000, "n_cameras": 12, "size": 32, "seed": 13,
                                      "val_frac": 0.1, "test_frac": 0.2},
                           "12,000 frames of 12 cameras, 32 px, seed 13, 70/10/20 over frames (four times "
                           "the new-scenes set)"),
    "eeg-60s": ("eeg", {"n_recordings": 160, "duration_s": 60.0, "sfreq": 250.0, "seed": 5},
                "160 recordings of 60 s at 250 Hz, seed 5, 70/15/15 over recordings"),
}

# read with care: what the bootstrap over test inputs does not see
CAUTION = {"webcam-unseen-cameras": "The test frames come from three cameras: frames of one camera share their "
                                    "scene and climate, so the interval over frames is too narrow; the seeds and "
                                    "the three cameras are the real sample."}


def make_data(kind: str, spec: dict[str, Any], out: Path) -> dict[str, Any]:
    """The set's files in `out`; returns the train() keyword arguments a user's command line gives."""
    if kind == "webcam":
        from supemb.data.synthetic_webcam import make_webcam_dataset

        spec = dict(spec)
        labels = make_webcam_dataset(out, spec.pop("n_images"), **spec)
        return {"data": str(labels), "target": "temperature", "image_size": spec["size"], "viz": False}
    from supemb.data.synthetic_eeg import make_eeg_dataset

    spec = dict(spec)
    make_eeg_dataset(out, spec.pop("n_recordings"), **spec)
    return {"data": str(out), "target": "age", "viz": False}


def run_set(name: str, work: Path, seeds: int) -> dict[str, Any]:
    kind, spec, what = SETS[name]
    data_kw = make_data(kind, spec, work / name / "data")
    seconds: dict[str, list[float]] = {}
    for seed in range(seeds):
        for loss in E.TASKS[kind]["losses"]:
            print(f"== {name}: {loss}, seed {seed}", flush=True)
            _, sec = C.timed_train(work / name / f"{loss}-s{seed}", loss=loss, seed=seed, **data_kw)
            seconds.setdefault(loss, []).append(sec)
    return {"kind": kind, "data": what, "seconds": seconds, **S.analyse(name, work, DRAWS, 0, kind=kind)}


def write_markdown(record: dict, docs: Path) -> Path:
    run = record["runs"][-1]
    lines = C.record_header("The defaults on data they were not chosen on", "heldout", record)
    seeds = f"{run['seeds']} training seed{'s' if run['seeds'] != 1 else ''}"
    lines += [f"Each side trained as `supemb train --loss rnc|l1` trains it, every setting at its default; {seeds} "
              f"per set. Test figures; paired bootstrap over the test inputs ({DRAWS:,} draws) as in "
              "docs/significance.md: ratio = RnC's MAE over L1's, each averaged over the seeds; below 1: RnC ahead.",
              ""]
    for name, r in run["sets"].items():
        task = E.TASKS[r["kind"]]
        unit = "recordings" if task["level"] else "images"
        secs = ", ".join(f"{loss} {sum(v) / len(v):.0f} s" for loss, v in r["seconds"].items())
        lines += [f"## {name}", "", *C.kept_line(r), f"{r['data']}. Mean training time per run: {secs}.", ""]
        lines += [CAUTION[name], ""] if name in CAUTION else []
        lines += S.table(task, r["test"], unit)
    return C.write_doc(docs / "heldout.md", lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/heldout", help="where data and runs go (must be empty or new)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--only", choices=list(SETS), action="append")
    ap.add_argument("--docs-dir", default=str(C.ROOT / "docs"))
    args = ap.parse_args()
    machine = C.machine()  # at the start: its load average is the other jobs', its date when the run began
    work, docs = C.fresh_work(Path(args.work)), Path(args.docs_dir)
    sets = {}
    for name in SETS:
        if args.only and name not in args.only:
            continue
        sets[name] = run_set(name, work, args.seeds)
        print(name, S.brief(sets[name]["test"]), flush=True)
    docs.mkdir(parents=True, exist_ok=True)
    if args.only:  # the other sets' figures stay, marked with the run they come from
        sets = C.keep_earlier(docs / "heldout.json", "sets", sets, SETS)
    C.append_run(docs / "heldout.json", {"machine": machine, "work": str(work), "seeds": args.seeds,
                                         "sets": sets}, write_markdown)


if __name__ == "__main__":
    main()
