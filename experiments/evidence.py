"""Reproduce the evidence in docs/evidence.md: contrastive vs plain training,
each pair on the same data, encoder, epochs and seed, on CPU.

    .venv/bin/python experiments/evidence.py [--work DIR] [--epochs N] [--seeds N] [--only webcam|eeg|digits]

The defaults (EPOCHS, SEEDS, EEG_*) are the settings that reproduce
docs/evidence.md; --epochs overrides every experiment's epochs. Each
experiment is trained with training seeds 0..SEEDS-1 on one fixed data set and
split; the tables give seed 0 and the mean, min and max over the seeds.

1. Synthetic webcam temperature (the SupCR paper's Figure 1 setting): RnC
   (stage 1 + kNN, and + linear head) against L1 end to end. Test MAE,
   embedding ordinality, and the two validation embedding maps side by side.
   Both embeddings are the L2-normalised encoder output (`Model.embed`): the
   one feeding L1's head, and the one RnC's loss orders (RnC has no
   projection head, as in its paper).
2. Synthetic resting EEG, brain age: RnC recording-level test MAE against
   predicting the training mean. 200 subjects of 30 s and robust per-channel
   scaling (it removes per-subject and per-electrode gain, which the generator
   makes pure nuisance), chosen on the validation split (recording-level kNN
   MAE), never on test.
3. scikit-learn's bundled handwritten digits (real data): SupCon + kNN
   against cross-entropy end to end.

Writes docs/evidence.md, docs/img/evidence-webcam.png and a JSON record of
every figure (docs/evidence.json).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from supemb.data.synthetic_eeg import make_eeg_dataset
from supemb.data.synthetic_images import make_webcam_dataset
from supemb.train.config import TrainConfig
from supemb.train.trainer import embed_run, train
from supemb.train.viz import side_by_side

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = {"webcam": 12, "eeg": 10, "digits": 12}
SEEDS = 3
EEG_RECORDINGS, EEG_DURATION_S = 200, 30.0
EEG_SPEC = {"window_s": 10.0, "stride_s": 5.0, "scaling": "robust"}


def _run(out: Path, **kw) -> tuple[dict, float]:
    t0 = time.perf_counter()
    final = train(TrainConfig(out=str(out), **kw))
    return final, time.perf_counter() - t0


def _pairs_over_seeds(work: Path, seeds: int, common: dict, losses: tuple[str, str],
                      figures: Callable[[dict, dict], dict]) -> list[dict]:
    """Train a contrastive loss and its baseline with each training seed on the
    same data; `figures(final_a, final_b)` picks the test figures of one seed."""
    runs = []
    for seed in range(seeds):
        (a, t_a), (b, t_b) = (_run(work / f"{loss}-s{seed}", loss=loss, seed=seed, **common) for loss in losses)
        runs.append({"seed": seed, **figures(a, b), "seconds": {losses[0]: t_a, losses[1]: t_b}})
    return runs


def _mean_baseline(labels_csv: Path, column: str) -> float:
    with open(labels_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    train_mean = np.mean([float(r[column]) for r in rows if r["split"] == "train"])
    test = np.array([float(r[column]) for r in rows if r["split"] == "test"])
    return float(np.abs(test - train_mean).mean())


def webcam(work: Path, epochs: int, seeds: int) -> dict:
    labels = make_webcam_dataset(work / "data", 2400, n_cameras=8, size=32, seed=0)
    common = {"data": str(labels), "target": "temperature", "epochs": epochs, "linear_epochs": 20,
              "batch_size": 128, "image_size": 32, "encoder": "small_cnn", "viz": False}
    runs = _pairs_over_seeds(work, seeds, common, ("rnc", "l1"), lambda rnc, l1: {
        "rnc_knn_mae": rnc["test_knn_mae"], "rnc_linear_mae": rnc["test_linear_mae"],
        "l1_mae": l1["test_head_mae"], "l1_knn_mae": l1["test_knn_mae"],
        "rnc_ordinality": rnc["test_ordinality"], "l1_ordinality": l1["test_ordinality"]})
    maps = []
    for name, run in (("L1 end to end", "l1-s0"), ("RnC (SupCR)", "rnc-s0")):
        emb, targets, _ = embed_run(work / run, "val")
        maps.append((emb, targets, name))
    img = ROOT / "docs" / "img" / "evidence-webcam.png"
    side_by_side(maps, img, discrete=False, seed=0, target_name="temperature (°C)")
    return {"predict_mean_mae": _mean_baseline(labels, "temperature"), **_summarise(runs),
            "image": str(img.relative_to(ROOT))}


def eeg(work: Path, epochs: int, seeds: int) -> dict:
    data = make_eeg_dataset(work / "data", EEG_RECORDINGS, duration_s=EEG_DURATION_S, sfreq=100.0, seed=0)
    runs = []
    for seed in range(seeds):
        final, secs = _run(work / f"rnc-s{seed}", data=str(data), target="age", loss="rnc", epochs=epochs,
                           linear_epochs=20, batch_size=64, seed=seed, viz=False, eeg=EEG_SPEC)
        runs.append({
            "seed": seed,
            "rnc_rec_knn_mae": final["test_rec_knn_mae"], "rnc_rec_linear_mae": final["test_rec_linear_mae"],
            "rnc_window_knn_mae": final["test_knn_mae"], "rnc_ordinality": final["test_ordinality"],
            "seconds": secs,
        })
    return {"predict_mean_mae": _mean_baseline(data / "labels.csv", "age"), **_summarise(runs)}


def _digits_folder(out: Path) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        px = (img / 16.0 * 255).astype(np.uint8)
        Image.fromarray(px).resize((16, 16), Image.NEAREST).convert("RGB").save(folder / f"{i:04d}.png")
    return out


def digits(work: Path, epochs: int, seeds: int) -> dict:
    data = _digits_folder(work / "data")
    common = {"data": str(data), "target": "class", "epochs": epochs, "linear_epochs": 20, "batch_size": 128,
              "image_size": 16, "encoder": "small_cnn", "viz": False}
    runs = _pairs_over_seeds(work, seeds, common, ("supcon", "ce"), lambda supcon, ce: {
        "supcon_knn_acc": supcon["test_knn_acc"], "supcon_linear_acc": supcon["test_linear_acc"],
        "ce_acc": ce["test_head_acc"], "ce_knn_acc": ce["test_knn_acc"]})
    return _summarise(runs)


def _summarise(runs: list[dict]) -> dict:
    """Seed 0's figures at the top level (as before), every seed in "seeds", and
    mean / min / max of each figure over the seeds in "over_seeds"."""
    keys = [k for k, v in runs[0].items() if k not in ("seed", "seconds") and isinstance(v, float)]
    over = {k: {"mean": float(np.mean([r[k] for r in runs])), "min": float(min(r[k] for r in runs)),
                "max": float(max(r[k] for r in runs))} for k in keys}
    return {**{k: runs[0][k] for k in keys}, "seconds": runs[0]["seconds"], "n_seeds": len(runs),
            "over_seeds": over, "seeds": runs}


def _cell(res: dict, key: str, fmt: str) -> str:
    """`seed 0 | mean (min–max)` table cells."""
    if "over_seeds" not in res:  # a record from before seeds were repeated (--only on an old evidence.json)
        return f"{res[key]:{fmt}} | "
    o = res["over_seeds"][key]
    return f"{res[key]:{fmt}} | {o['mean']:{fmt}} ({o['min']:{fmt}}–{o['max']:{fmt}})"


def write_markdown(results: dict, epochs_used: dict[str, int]) -> Path:
    lines = ["# Evidence: contrastive against plain training", "",
             "Reproduce with `.venv/bin/python experiments/evidence.py` (figures below from one run; epochs: "
             + ", ".join(f"{k} {v}" for k, v in epochs_used.items()) + ").",
             f"Machine: {platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}; "
             "every pair uses the same data, split, encoder (`small_cnn` / `shallow`), epochs and seed. "
             "Each experiment is trained with several training seeds on one data set and split: "
             "the tables give seed 0 and the mean (min–max) over the seeds. Settings were chosen on "
             "validation splits; the figures are on the test splits.", ""]
    if "webcam" in results:
        w = results["webcam"]
        n = w.get("n_seeds", 1)
        lines += ["## Synthetic webcam temperature (RnC vs L1)", "",
                  "2,400 32x32 frames from 8 cameras; the camera dominates the pixels, temperature shows "
                  "through weak cues (synthetic, `supemb.data.synthetic_images`). Ordinality: Spearman "
                  "correlation between embedding and target distances over test pairs, on the embedding "
                  "both models serve (the L2-normalised encoder output; RnC's loss is applied to it "
                  "directly, without a projection head, as in the RnC paper).", "",
                  f"| model | test MAE (°C), seed 0 | {n} seeds | test ordinality (Spearman), seed 0 | {n} seeds |",
                  "|---|---:|---:|---:|---:|",
                  f"| predict the training mean | {w['predict_mean_mae']:.2f} | | – | |",
                  f"| L1 end to end | {_cell(w, 'l1_mae', '.2f')} | {_cell(w, 'l1_ordinality', '.3f')} |",
                  f"| RnC + kNN | {_cell(w, 'rnc_knn_mae', '.2f')} | {_cell(w, 'rnc_ordinality', '.3f')} |",
                  f"| RnC + linear head | {_cell(w, 'rnc_linear_mae', '.2f')} | | |",
                  f"| (L1 encoder + kNN) | {_cell(w, 'l1_knn_mae', '.2f')} | | |", "",
                  f"![validation embeddings, L1 vs RnC]({Path(w['image']).relative_to('docs')})", ""]
    if "eeg" in results:
        e = results["eeg"]
        n = e.get("n_seeds", 1)
        lines += ["## Synthetic resting EEG, brain age (RnC)", "",
                  f"{EEG_RECORDINGS} recordings (one per subject) of {EEG_DURATION_S:g} s, 19 channels at "
                  f"100 Hz, {EEG_SPEC['window_s']:g} s windows with {EEG_SPEC['stride_s']:g} s stride, "
                  f"{EEG_SPEC['scaling']} per-channel scaling; alpha peak frequency and 1/f slope change "
                  "with age, per-subject variation dominates (synthetic, `supemb.data.synthetic_eeg`). "
                  "Seeded 70/15/15 split over subjects; the best epoch is picked on the validation "
                  "subjects' recording-level kNN MAE.", "",
                  f"| model | recording-level test MAE (years), seed 0 | {n} seeds |", "|---|---:|---:|",
                  f"| predict the training mean | {e['predict_mean_mae']:.2f} | |",
                  f"| RnC + kNN (windows averaged per recording) | {_cell(e, 'rnc_rec_knn_mae', '.2f')} |",
                  f"| RnC + linear head | {_cell(e, 'rnc_rec_linear_mae', '.2f')} |", ""]
    if "digits" in results:
        d = results["digits"]
        n = d.get("n_seeds", 1)
        lines += ["## Handwritten digits (scikit-learn's bundled data, real)", "",
                  "1,797 8x8 digits upscaled to 16x16, 10 classes, seeded 80/10/10 split.", "",
                  f"| model | test accuracy, seed 0 | {n} seeds |", "|---|---:|---:|",
                  f"| cross-entropy end to end | {_cell(d, 'ce_acc', '.3f')} |",
                  f"| SupCon + kNN | {_cell(d, 'supcon_knn_acc', '.3f')} |",
                  f"| SupCon + linear head | {_cell(d, 'supcon_linear_acc', '.3f')} |",
                  f"| (CE encoder + kNN) | {_cell(d, 'ce_knn_acc', '.3f')} |", ""]
    out = ROOT / "docs" / "evidence.md"
    out.write_text("\n".join(lines))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/evidence", help="where data and runs go")
    parser.add_argument("--epochs", type=int, default=None, help="override every experiment's epochs")
    parser.add_argument("--seeds", type=int, default=SEEDS, help=f"training seeds per experiment (default {SEEDS})")
    parser.add_argument("--only", choices=["webcam", "eeg", "digits"], action="append")
    args = parser.parse_args()
    work = Path(args.work)
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"{work} is not empty: remove it or pass another --work")
    record = ROOT / "docs" / "evidence.json"
    results = json.loads(record.read_text()) if record.is_file() and args.only else {}
    for name, fn in (("webcam", webcam), ("eeg", eeg), ("digits", digits)):
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        epochs = args.epochs or EPOCHS[name]
        results[name] = {"epochs": epochs, **fn(work / name, epochs, args.seeds)}
        print(json.dumps({k: v for k, v in results[name].items() if k != "seeds"}, indent=2), flush=True)
        record.write_text(json.dumps(results, indent=2) + "\n")
    epochs_used = {k: results[k]["epochs"] for k in EPOCHS if k in results and "epochs" in results[k]}
    print(f"wrote {write_markdown(results, epochs_used)}")


if __name__ == "__main__":
    main()
