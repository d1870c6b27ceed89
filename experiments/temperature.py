"""The temperature study: which contrastive temperature validation picks, and what it does
to the embedding's geometry.

    .venv/bin/python experiments/temperature.py [--work DIR] [--epochs N] [--docs-dir DIR] [--quick]

SupCon on the scikit-learn digits at TEMPERATURES["supcon"] and RnC on the
synthetic webcam frames at TEMPERATURES["rnc"], one training seed (0), the
same data and fixed splits as experiments/evidence.py, everything else the
package defaults (epochs too, unless --epochs). For each temperature:

- the validation figure: SupCon val kNN accuracy and MAP@R; RnC val kNN MAE;
- on the validation items' encoder output (the served embedding; the
  measures L2-normalise it, whatever geometry it is served in):
  uniformity (Wang & Isola 2020, `geometry.uniformity`; lower = more uniform),
  alignment of two augmented views of each item (`geometry.alignment`, the
  run's own training augmentation, seeded; lower = better aligned) and
  tolerance (Wang & Liu 2021: the mean cosine similarity of pairs of the same
  class; for regression, of pairs whose targets differ by at most
  TOLERANCE_UNITS target unit).

The temperature validation picks is the best validation figure (SupCon: kNN
accuracy, ties by MAP@R; RnC: lowest kNN MAE). Writes DOCS/temperature.md,
DOCS/temperature.json and DOCS/img/temperature.png (uniformity against
tolerance, one point per temperature, one panel per loss); DOCS is docs/
unless --docs-dir says (--quick: WORK/docs). --quick is a smoke test (tiny
data, 1 epoch, two temperatures per loss); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # experiments/_common.py, however this file is loaded
import _common as C  # noqa: E402

TEMPERATURES = {"supcon": (0.05, 0.1, 0.2, 0.5, 1.0, 2.0), "rnc": (0.5, 1.0, 2.0, 5.0)}
QUICK = {"webcam_images": 300, "digits": 400, "epochs": 1, "supcon": (0.1, 1.0), "rnc": (1.0, 2.0)}
TOLERANCE_UNITS = 1.0  # regression: pairs within this many target units count as "same"
VIEW_SEEDS = (1, 2)  # the two augmented views' generator seeds
SEED = 0


def tolerance(feats: np.ndarray, targets: np.ndarray, discrete: bool) -> tuple[float, int]:
    """(mean cosine similarity over pairs i < j of one class / within TOLERANCE_UNITS, number of pairs)."""
    from supemb.predict.neighbours import l2_normalize

    e = l2_normalize(np.asarray(feats, np.float64))
    t = np.asarray(targets)
    i, j = np.triu_indices(len(e), k=1)
    same = t[i] == t[j] if discrete else np.abs(t[i].astype(np.float64) - t[j].astype(np.float64)) <= TOLERANCE_UNITS
    i, j = i[same], j[same]
    if len(i) == 0:
        return float("nan"), 0
    return float(np.mean(np.einsum("pd,pd->p", e[i], e[j]))), int(len(i))


def geometry(run_dir: Path, discrete: bool) -> dict[str, Any]:
    """Uniformity, alignment and tolerance of a finished run's validation embeddings."""
    from supemb.train import geometry as geo

    run = C.load_run(run_dir)
    feats = run.features("val")
    a, b = (run.views("val", s) for s in VIEW_SEEDS)
    tol, pairs = tolerance(feats, run.split("val").targets, discrete)
    return {"uniformity": geo.uniformity(feats, seed=SEED), "alignment": geo.alignment(a, b),
            "tolerance": tol, "tolerance_pairs": pairs, "served_metric": run.metric,
            "knn_k": run.meta.get("knn_k"), "knn_temperature": run.meta.get("knn_temperature")}


def study(loss: str, work: Path, temps: tuple[float, ...], epochs: int | None, data_kw: dict) -> dict[str, Any]:
    discrete = loss == "supcon"
    points = []
    for tau in temps:
        out = work / f"t{tau:g}"
        extra = {} if epochs is None else {"epochs": epochs}
        final, secs = C.timed_train(out, loss=loss, temperature=tau, seed=SEED, **extra, **data_kw)
        keys = ("val_knn_acc", "val_map_at_r", "test_knn_acc", "test_map_at_r") if discrete else (
            "val_knn_mae", "val_ordinality", "test_knn_mae")
        cfg = json.loads((out / "config.json").read_text())
        points.append({"temperature": tau, **{k: final[k] for k in keys if k in final},
                       **geometry(out, discrete), "epochs": cfg["epochs"], "seconds": secs})
    if discrete:
        chosen = max(points, key=lambda p: (p["val_knn_acc"], p.get("val_map_at_r", 0.0)))
    else:
        chosen = min(points, key=lambda p: p["val_knn_mae"])
    return {"points": points, "chosen": chosen["temperature"],
            "rule": "highest val kNN accuracy (ties: MAP@R)" if discrete else "lowest val kNN MAE"}


def plot(results: dict, out_png: Path) -> Path:
    import matplotlib.pyplot as plt

    losses = [l for l in ("supcon", "rnc") if l in results]
    fig, axes = plt.subplots(1, len(losses), figsize=(5.2 * len(losses), 4.4), squeeze=False)
    for ax, loss in zip(axes[0], losses):
        r = results[loss]
        xs = [p["uniformity"] for p in r["points"]]
        ys = [p["tolerance"] for p in r["points"]]
        ax.plot(xs, ys, "-", color="lightgrey", zorder=1)
        ax.scatter(xs, ys, c=np.log([p["temperature"] for p in r["points"]]), cmap="viridis", zorder=2)
        for p, x, y in zip(r["points"], xs, ys):
            chosen = p["temperature"] == r["chosen"]
            ax.annotate(f"τ={p['temperature']:g}" + (" (val)" if chosen else ""), (x, y),
                        textcoords="offset points", xytext=(5, 4), fontsize=8,
                        fontweight="bold" if chosen else "normal")
        data = "digits" if loss == "supcon" else "webcam"
        what = "same class" if loss == "supcon" else f"|Δy| ≤ {TOLERANCE_UNITS:g}"
        ax.set(title=f"{'SupCon' if loss == 'supcon' else 'RnC'} ({data}, validation)",
               xlabel="uniformity (lower = more uniform)", ylabel=f"tolerance (mean cosine, {what})")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def write_markdown(results: dict, docs: Path) -> Path:
    m = results["machine"]
    lines = ["# Contrastive temperature: validation choice and geometry", "",
             f"Reproduce with `{m['command']}` (figures below from that one run).", C.machine_line(m), ""]
    if results.get("quick"):
        lines += ["**SMOKE RUN (--quick): tiny data, 1 epoch; these figures mean nothing.**", ""]
    lines += ["One training seed (0) per temperature, the data and fixed splits of `experiments/evidence.py`, "
              "everything but the temperature the package defaults. Geometry on the validation items' encoder "
              "output (the served embedding), L2-normalised for these measures: uniformity (Wang & Isola 2020, "
              "t = 2; lower = more uniform), alignment of two augmented views of each item (the run's training "
              f"augmentation, seeds {VIEW_SEEDS[0]} and {VIEW_SEEDS[1]}; alpha = 2, lower = closer), tolerance "
              "(Wang & Liu 2021: mean cosine similarity of same-class pairs; for regression, of pairs whose "
              f"targets differ by at most {TOLERANCE_UNITS:g} unit). The test column is reported, never used "
              "to choose.", ""]
    if "supcon" in results:
        r = results["supcon"]
        lines += ["## SupCon on handwritten digits", "",
                  "| τ | val kNN acc | val MAP@R | uniformity | alignment | tolerance | test kNN acc | epochs "
                  "| seconds |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for p in r["points"]:
            mark = " **(val)**" if p["temperature"] == r["chosen"] else ""
            lines.append(f"| {p['temperature']:g}{mark} | {p['val_knn_acc']:.3f} | "
                         f"{p.get('val_map_at_r', float('nan')):.3f} "
                         f"| {p['uniformity']:.3f} | {p['alignment']:.3f} | {p['tolerance']:.3f} | "
                         f"{p.get('test_knn_acc', float('nan')):.3f} | {p['epochs']} | {p['seconds']:.0f} |")
        lines += ["", f"Validation picks **τ = {r['chosen']:g}** ({r['rule']}).", ""]
    if "rnc" in results:
        r = results["rnc"]
        lines += ["## RnC on the synthetic webcam frames", "",
                  "| τ | val kNN MAE (°C) | val ordinality | uniformity | alignment | tolerance | test kNN MAE | "
                  "served metric | epochs | seconds |", "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
        for p in r["points"]:
            mark = " **(val)**" if p["temperature"] == r["chosen"] else ""
            lines.append(f"| {p['temperature']:g}{mark} | {p['val_knn_mae']:.2f} | "
                         f"{p.get('val_ordinality', float('nan')):.3f} "
                         f"| {p['uniformity']:.3f} | {p['alignment']:.3f} | {p['tolerance']:.3f} | "
                         f"{p.get('test_knn_mae', float('nan')):.2f} | {p['served_metric']} | {p['epochs']} | "
                         f"{p['seconds']:.0f} |")
        lines += ["", f"Validation picks **τ = {r['chosen']:g}** ({r['rule']}). RnC serves its raw encoder output "
                  "(l2) by default; uniformity, alignment and tolerance are measured on the L2-normalised "
                  "output all the same, as the measures are defined on the hypersphere.", ""]
    lines += ["One training seed per temperature: a difference in the validation figure smaller than the seed "
              "spread of the same setting in docs/evidence.md is not a reason to prefer one temperature.", "",
              "![uniformity against tolerance per temperature](img/temperature.png)", ""]
    out = docs / "temperature.md"
    out.write_text("\n".join(lines))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/temperature", help="where data and runs go (must be empty or new)")
    parser.add_argument("--epochs", type=int, default=None, help="override the package's default epochs")
    parser.add_argument("--docs-dir", default=None,
                        help="where temperature.md/.json and img/ go (default docs/; --quick: WORK/docs)")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny data, 1 epoch, 2 temperatures per loss")
    args = parser.parse_args()
    work = C.fresh_work(Path(args.work))
    docs = Path(args.docs_dir) if args.docs_dir else (work / "docs" if args.quick else C.ROOT / "docs")
    (docs / "img").mkdir(parents=True, exist_ok=True)
    epochs = args.epochs or (QUICK["epochs"] if args.quick else None)
    results: dict[str, Any] = {"machine": C.machine(), "quick": args.quick, "seed": SEED}

    digits = C.digits_data(work / "digits-data", QUICK["digits"] if args.quick else None)
    webcam = C.webcam_data(work / "webcam-data", QUICK["webcam_images"] if args.quick else C.WEBCAM["n_images"])
    setups = {"supcon": {"data": str(digits), "target": "class", "image_size": C.DIGITS_SIZE, "viz": False},
              "rnc": {"data": str(webcam), "target": "temperature", "image_size": C.WEBCAM["size"], "viz": False}}
    for loss, data_kw in setups.items():
        temps = QUICK[loss] if args.quick else TEMPERATURES[loss]
        print(f"== {loss}: temperatures {temps}", flush=True)
        results[loss] = study(loss, work / loss, temps, epochs, data_kw)
        (docs / "temperature.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        print(f"{loss}: validation picks temperature {results[loss]['chosen']:g}", flush=True)
    plot(results, docs / "img" / "temperature.png")
    print(f"wrote {write_markdown(results, docs)}, {docs / 'temperature.json'}")


if __name__ == "__main__":
    main()
