"""The temperature study: which contrastive temperature validation picks, and what it does
to the embedding's geometry.

    .venv/bin/python experiments/temperature.py [--work DIR] [--epochs N] [--docs-dir DIR] [--quick]

SupCon on the scikit-learn digits at TEMPERATURES["supcon"], and RnC at
TEMPERATURES["rnc"] on three of the recipe's tasks: the synthetic webcam
frames, the synthetic faces and the synthetic resting EEG (`STUDIES`). One
training seed (0), the same data and fixed splits as experiments/evidence.py
(faces: FACES, a set of their own), everything else the package defaults
(epochs too, unless --epochs). For each temperature:

- the validation figure: SupCon val kNN accuracy and MAP@R; RnC val kNN MAE
  (EEG: per recording);
- on the validation items' encoder output (the served embedding; the
  measures L2-normalise it, whatever geometry it is served in):
  uniformity (Wang & Isola 2020, `geometry.uniformity`; lower = more uniform),
  alignment of two augmented views of each item (`geometry.alignment`, the
  run's own training augmentation, seeded; lower = better aligned) and
  tolerance (Wang & Liu 2021: the mean cosine similarity of pairs of the same
  class; for regression, of pairs whose targets differ by at most
  TOLERANCE_UNITS target unit).

Each study's pick is its best validation figure (SupCon: kNN accuracy, ties
by MAP@R; RnC: lowest kNN MAE). A loss's default is one temperature for every
task: SupCon's is the digits' pick; RnC's is the temperature whose validation
MAE, relative to the best of its task, is lowest on average over the RnC
studies (`loss_choice`). Writes DOCS/temperature.md, DOCS/temperature.json and
DOCS/img/temperature.png (uniformity against tolerance, one point per
temperature, one panel per study); DOCS is docs/ unless --docs-dir says
(--quick: WORK/docs). --quick is a smoke test (tiny data, 1 epoch, two
temperatures per loss); its figures mean nothing.
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
QUICK = {"webcam_images": 300, "faces": 200, "eeg_recordings": 40, "digits": 400, "epochs": 1,
         "supcon": (0.1, 1.0), "rnc": (1.0, 2.0)}
# study -> (loss, title); "supcon" and "rnc" (the webcam) are the keys of the record before faces and EEG
STUDIES = {"supcon": ("supcon", "SupCon on handwritten digits"), "rnc": ("rnc", "RnC on the synthetic webcam frames"),
           "rnc-faces": ("rnc", "RnC on the synthetic faces (age)"),
           "rnc-eeg": ("rnc", "RnC on the synthetic resting EEG (brain age, per recording)")}
FACES = {"n_images": 1600, "n_identities": 60, "size": 32, "seed": 0}  # the recipe's faces shape, another seed
UNITS = {"supcon": "", "rnc": "°C", "rnc-faces": "years", "rnc-eeg": "years"}
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


def study(loss: str, work: Path, temps: tuple[float, ...], epochs: int | None, data_kw: dict,
          seed: int = SEED) -> dict[str, Any]:
    discrete = loss == "supcon"
    points = []
    for tau in temps:
        out = work / f"t{tau:g}"
        extra = {} if epochs is None else {"epochs": epochs}
        final, secs = C.timed_train(out, loss=loss, temperature=tau, seed=seed, **extra, **data_kw)
        if discrete:
            figures = {k: final[k] for k in ("val_knn_acc", "val_map_at_r", "test_knn_acc", "test_map_at_r")
                       if k in final}
        else:  # an EEG run's figure is per recording (its windows' predictions averaged), as served
            lvl = "rec_" if "val_rec_knn_mae" in final else ""
            figures = {"val_knn_mae": final[f"val_{lvl}knn_mae"], "test_knn_mae": final[f"test_{lvl}knn_mae"],
                       "val_ordinality": final.get("val_ordinality", float("nan"))}
        cfg = json.loads((out / "config.json").read_text())
        points.append({"temperature": tau, **figures, **geometry(out, discrete), "epochs": cfg["epochs"],
                       "seconds": secs})
    if discrete:
        chosen = max(points, key=lambda p: (p["val_knn_acc"], p.get("val_map_at_r", 0.0)))
    else:
        chosen = min(points, key=lambda p: p["val_knn_mae"])
    return {"points": points, "chosen": chosen["temperature"],
            "rule": "highest val kNN accuracy (ties: MAP@R)" if discrete else "lowest val kNN MAE"}


# A default moves only for a clear difference: the seed-to-seed relative standard deviation of
# RnC + kNN on the webcam (docs/evidence.md, 3 seeds: 3.31, 3.48, 3.35 °C), the smallest RnC spread there.
MOVE_MARGIN = 0.026


def loss_choice(results: dict, loss: str, current: float | None = None) -> dict[str, Any] | None:
    """One default temperature for `loss` over its studies: SupCon (one study) its pick; RnC the
    temperature whose val MAE over the best val MAE of the same study is lowest on average over
    the studies that tried it (only temperatures every study tried; ties: the lower temperature),
    unless that mean is within MOVE_MARGIN of `current`'s (the default today): then `current` stays."""
    names = [n for n, (l, _) in STUDIES.items() if l == loss and n in results]
    if not names:
        return None
    if loss == "supcon":
        return {"studies": names, "chosen": results[names[0]]["chosen"], "rule": results[names[0]]["rule"]}
    rel: dict[float, list[float]] = {}
    for n in names:
        best = min(p["val_knn_mae"] for p in results[n]["points"])
        for p in results[n]["points"]:
            rel.setdefault(p["temperature"], []).append(p["val_knn_mae"] / best)
    common = {t: float(np.mean(v)) for t, v in rel.items() if len(v) == len(names)}
    best = min(sorted(common), key=lambda t: common[t])
    keep = current in common and common[current] - common[best] <= MOVE_MARGIN
    return {"studies": names, "relative_val_mae": {f"{t:g}": common[t] for t in sorted(common)}, "best": best,
            "current": current, "chosen": current if keep else best,
            "rule": "lowest mean over the studies of val kNN MAE / that study's best, unless today's default is "
                    f"within {MOVE_MARGIN:g} of it"}


def plot(results: dict, out_png: Path) -> Path:
    import matplotlib.pyplot as plt

    names = [n for n in STUDIES if n in results]
    cols = min(2, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        r, loss = results[name], STUDIES[name][0]
        xs = [p["uniformity"] for p in r["points"]]
        ys = [p["tolerance"] for p in r["points"]]
        ax.plot(xs, ys, "-", color="lightgrey", zorder=1)
        ax.scatter(xs, ys, c=np.log([p["temperature"] for p in r["points"]]), cmap="viridis", zorder=2)
        for p, x, y in zip(r["points"], xs, ys):
            chosen = p["temperature"] == r["chosen"]
            ax.annotate(f"τ={p['temperature']:g}" + (" (val)" if chosen else ""), (x, y),
                        textcoords="offset points", xytext=(5, 4), fontsize=8,
                        fontweight="bold" if chosen else "normal")
        what = "same class" if loss == "supcon" else f"|Δy| ≤ {TOLERANCE_UNITS:g}"
        ax.set(title=STUDIES[name][1].split(" (")[0].replace(" on the synthetic", ",").replace(" on ", ", ")
               + ", validation", xlabel="uniformity (lower = more uniform)",
               ylabel=f"tolerance (mean cosine, {what})")
        ax.title.set_fontsize(10)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def _study_markdown(name: str, r: dict) -> list[str]:
    loss, title = STUDIES[name]
    lines = [f"## {title}", ""]
    if loss == "supcon":
        lines += ["| τ | val kNN acc | val MAP@R | uniformity | alignment | tolerance | test kNN acc | epochs "
                  "| seconds |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    else:
        lines += [f"| τ | val kNN MAE ({UNITS[name]}) | val ordinality | uniformity | alignment | tolerance | "
                  "test kNN MAE | served metric | epochs | seconds |",
                  "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for p in r["points"]:
        mark = " **(val)**" if p["temperature"] == r["chosen"] else ""
        geo = f"| {p['uniformity']:.3f} | {p['alignment']:.3f} | {p['tolerance']:.3f} |"
        if loss == "supcon":
            lines.append(f"| {p['temperature']:g}{mark} | {p['val_knn_acc']:.3f} | "
                         f"{p.get('val_map_at_r', float('nan')):.3f} {geo} "
                         f"{p.get('test_knn_acc', float('nan')):.3f} | {p['epochs']} | {p['seconds']:.0f} |")
        else:
            lines.append(f"| {p['temperature']:g}{mark} | {p['val_knn_mae']:.2f} | "
                         f"{p.get('val_ordinality', float('nan')):.3f} {geo} "
                         f"{p.get('test_knn_mae', float('nan')):.2f} | {p['served_metric']} | {p['epochs']} | "
                         f"{p['seconds']:.0f} |")
    lines += ["", f"Validation picks **τ = {r['chosen']:g}** ({r['rule']}).", ""]
    return lines


def _choice_markdown(results: dict) -> list[str]:
    lines = ["## The defaults", ""]
    d = results.get("defaults") or {loss: loss_choice(results, loss) for loss in ("supcon", "rnc")}
    sup, rnc = d.get("supcon"), d.get("rnc")
    if sup:
        lines += [f"SupCon: **τ = {sup['chosen']:g}**, the digits' pick.", ""]
    if rnc:
        names = rnc["studies"]
        temps = list(rnc["relative_val_mae"])
        lines += [f"RnC: one temperature for every task, {rnc['rule']} (1 = that study's best):", "",
                  "| study | " + " | ".join(f"τ = {t}" for t in temps) + " |",
                  "|---|" + "---:|" * len(temps)]
        for n in names:
            best = min(p["val_knn_mae"] for p in results[n]["points"])
            by_t = {f"{p['temperature']:g}": p["val_knn_mae"] / best for p in results[n]["points"]}
            lines.append(f"| {STUDIES[n][1].split(' (')[0]} | " + " | ".join(f"{by_t[t]:.3f}" for t in temps) + " |")
        lines += ["| **mean** | " + " | ".join(
            f"**{v:.3f}**" if float(t) == rnc["chosen"] else f"{v:.3f}" for t, v in rnc["relative_val_mae"].items())
            + " |", "", f"Lowest mean: τ = {rnc['best']:g}. RnC's default: **τ = {rnc['chosen']:g}**"
            + (f" (today's default, kept: within {MOVE_MARGIN:g} of the lowest, the webcam's seed-to-seed spread)"
               if rnc["chosen"] == rnc.get("current") != rnc["best"] else "") + ".",
                  "", *_overrides()]
    return lines


def _overrides() -> list[str]:
    """The lines naming the modality recipes that override a loss's temperature (`recipe["temperatures"]`)."""
    found = C.temperature_overrides()
    return [f"Modality recipes that train a loss at another temperature: {', '.join(found)} (adopted on a check "
            "on data this study did not see: docs/temperature-seeds.md, docs/temperature-check.md).", ""
            ] if found else []


def write_markdown(results: dict, docs: Path) -> Path:
    m = results["machine"]
    lines = ["# Contrastive temperature: validation choice and geometry", "",
             f"Reproduce with `{m['command']}` (figures below from that one run).", C.machine_line(m), ""]
    if results.get("quick"):
        lines += ["**SMOKE RUN (--quick): tiny data, 1 epoch; these figures mean nothing.**", ""]
    lines += ["One training seed (0) per temperature, the data and fixed splits of `experiments/evidence.py` "
              f"(the faces: {FACES['n_images']} synthetic faces of {FACES['n_identities']} people, "
              f"{FACES['size']} px, generator seed {FACES['seed']}), "
              "everything but the temperature the package defaults. Geometry on the validation items' encoder "
              "output (the served embedding), L2-normalised for these measures: uniformity (Wang & Isola 2020, "
              "t = 2; lower = more uniform), alignment of two augmented views of each item (the run's training "
              f"augmentation, seeds {VIEW_SEEDS[0]} and {VIEW_SEEDS[1]}; alpha = 2, lower = closer), tolerance "
              "(Wang & Liu 2021: mean cosine similarity of same-class pairs; for regression, of pairs whose "
              f"targets differ by at most {TOLERANCE_UNITS:g} unit; EEG: of windows). The test column is "
              "reported, never used to choose.", ""]
    for name in STUDIES:
        if name in results:
            lines += _study_markdown(name, results[name])
    lines += _choice_markdown(results)
    lines += ["RnC serves its raw encoder output (l2) by default; uniformity, alignment and tolerance are "
              "measured on the L2-normalised output all the same, as the measures are defined on the hypersphere. "
              "One training seed per temperature: a difference in the validation figure smaller than the seed "
              "spread of the same setting in docs/evidence.md is not a reason to prefer one temperature.", "",
              "![uniformity against tolerance per temperature](img/temperature.png)", ""]
    return C.write_doc(docs / "temperature.md", lines)


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
    for name, (loss, _) in STUDIES.items():
        temps = QUICK[loss] if args.quick else TEMPERATURES[loss]
        print(f"== {name}: temperatures {temps}", flush=True)
        results[name] = study(loss, work / name, temps, epochs, _data(name, work, args.quick))
        (docs / "temperature.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        print(f"{name}: validation picks temperature {results[name]['chosen']:g}", flush=True)
    from supemb.losses.registry import LOSSES

    results["defaults"] = {loss: loss_choice(results, loss, LOSSES[loss].temperature) for loss in ("supcon", "rnc")}
    (docs / "temperature.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    plot(results, docs / "img" / "temperature.png")
    print(f"defaults: {json.dumps({k: v['chosen'] for k, v in results['defaults'].items()})}")
    print(f"wrote {write_markdown(results, docs)}, {docs / 'temperature.json'}")


def _data(name: str, work: Path, quick: bool) -> dict[str, Any]:
    """The train() keyword arguments of a study's data (made under work/)."""
    if name == "supcon":
        digits = C.digits_data(work / "digits-data", QUICK["digits"] if quick else None)
        return {"data": str(digits), "target": "class", "image_size": C.DIGITS_SIZE, "viz": False}
    if name == "rnc":
        webcam = C.webcam_data(work / "webcam-data", QUICK["webcam_images"] if quick else C.WEBCAM["n_images"])
        return {"data": str(webcam), "target": "temperature", "image_size": C.WEBCAM["size"], "viz": False}
    if name == "rnc-faces":
        from supemb.data.synthetic_faces import make_face_dataset

        faces = make_face_dataset(work / "faces-data", QUICK["faces"] if quick else FACES["n_images"],
                                  n_identities=FACES["n_identities"], size=FACES["size"], seed=FACES["seed"])
        return {"data": str(faces), "target": "age", "image_size": FACES["size"], "viz": False}
    eeg = C.eeg_data(work / "eeg-data", QUICK["eeg_recordings"] if quick else C.EEG_RECORDINGS)
    return {"data": str(eeg), "target": "age", "eeg": dict(C.EEG_SPEC), "viz": False}


if __name__ == "__main__":
    main()
