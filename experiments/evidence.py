"""Reproduce the evidence in docs/evidence.md: contrastive against plain training on CPU.

    .venv/bin/python experiments/evidence.py [--work DIR] [--epochs N] [--seeds N]
        [--only webcam|eeg|digits] [--docs-dir DIR] [--quick]

Every contrastive run and its baseline use the same data, split, encoder,
epochs, seed and the package's default recipe (`TrainConfig` and trainer
defaults: encoder, batch size, learning rate, augmentation, stage 2, all
chosen on validation; the augmentation is each side's own where validation
chose differently for it: EEG, docs/recipe.md). This script sets only data shapes (image size, the EEG
window spec) and the epochs table EPOCHS; --epochs overrides every task's.

1. Main table, SEEDS training seeds (0..SEEDS-1) on one fixed data set and
   split per task:
   - synthetic webcam temperature (the SupCR paper's Figure 1 setting): RnC vs L1;
   - synthetic resting EEG, brain age, judged per recording: RnC vs L1;
   - scikit-learn's bundled handwritten digits (real): SupCon vs CE.
   Rows: predict the training mean (regression); the plain model's own head,
   a converged linear probe on its frozen encoder and kNN on it; the
   contrastive embedding with kNN and with its linear head. Then the best
   plain and best contrastive figure (over those rows, by the mean over
   seeds) and their ratio. Regression also gives both embeddings'
   ordinality and the share of test errors inside the served ±, digits both
   embeddings' MAP@R and P@1.
2. Less training data (webcam, EEG; seed 0 only): both methods trained on
   10%, 25% and 100% of the training split (val and test unchanged); each
   method's figure is its best by validation (contrastive: kNN or linear
   head; plain: head, probe or kNN).
3. Test-time corruption (webcam, EEG): the 100% seed-0 models on corrupted
   test inputs (images: pixel noise, blur, JPEG; EEG: noise, dropped channels).

Writes DOCS/evidence.md, DOCS/evidence.json (every figure, per seed),
DOCS/img/evidence-webcam.png (validation embeddings, L1 vs RnC, each in its
served geometry), DOCS/img/evidence-fraction.png and
DOCS/img/evidence-corruption.png; DOCS is docs/ unless --docs-dir says
(--quick: WORK/docs). --quick is a smoke test of every code path on tiny
data (1 epoch, 1 seed); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402

from supemb import modalities  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # experiments/_common.py, however this file is loaded
import _common as C  # noqa: E402

# webcam and digits: the package default (20); EEG: 10, for time on 2 CPU cores (both sides alike).
EPOCHS = {"webcam": 20, "eeg": 20, "digits": 20}  # the package default; EEG ran at 10 before docs/recipe.md showed 20 better for both losses
SEEDS = 3
FRACTIONS = (0.1, 0.25, 1.0)
FRACTION_SEED = 0  # which training rows a fraction keeps (nested: 10% within 25% within 100%)
CORRUPTION_SEED = 0
QUICK = {"webcam_images": 300, "eeg_recordings": 40, "digits": 400, "epochs": 1, "seeds": 1}
RECORD_VERSION = 2

# Per task: losses (contrastive, plain), their display names, the task kind,
# "rec_" for EEG (judged per recording), the unit of the figure.
TASKS: dict[str, dict[str, Any]] = {
    "webcam": {"losses": ("rnc", "l1"), "names": ("RnC", "L1"), "kind": "regression", "level": "",
               "unit": "°C", "target": "temperature", "title": "Synthetic webcam temperature (RnC vs L1)"},
    "eeg": {"losses": ("rnc", "l1"), "names": ("RnC", "L1"), "kind": "regression", "level": "rec_",
            "unit": "years", "target": "age", "title": "Synthetic resting EEG, brain age (RnC vs L1)"},
    "digits": {"losses": ("supcon", "ce"), "names": ("SupCon", "CE"), "kind": "classification", "level": "",
               "unit": "", "target": "class", "title": "Handwritten digits (scikit-learn's bundled data, real)"},
}
# Table rows: (side, what): side "plain" or "contrastive"; what the final-metrics key stem
# ("head": the plain model's end-to-end head; "linear": converged probe / stage-2 head; "knn").
# "served": what the run's bundle serves for a value (plain or residual kNN, chosen on validation; regression).
ROWS = (("plain", "head"), ("plain", "linear"), ("plain", "knn"), ("contrastive", "knn"), ("contrastive", "linear"))
SERVED_ROWS = (("plain", "served"), ("contrastive", "served"))


def rows_of(task: dict) -> tuple[tuple[str, str], ...]:
    return ROWS + (SERVED_ROWS if task["kind"] == "regression" else ())


def _row_label(task: dict, side: str, what: str) -> str:
    c, p = task["names"]
    return {("plain", "head"): f"{p} end to end (its own head)",
            ("plain", "linear"): f"{p} encoder + converged linear probe",
            ("plain", "knn"): f"{p} encoder + kNN",
            ("contrastive", "knn"): f"{c} + kNN",
            ("contrastive", "linear"): f"{c} + linear head (stage 2)",
            ("plain", "served"): f"{p}, as its bundle serves it (kNN or residual kNN, chosen on validation)",
            ("contrastive", "served"): f"{c}, as its bundle serves it (kNN or residual kNN, chosen on validation)",
            }[(side, what)]


def _key(task: dict, split: str, what: str) -> str:
    """The final-metrics key of a figure, e.g. test_rec_knn_mae (EEG) or test_head_acc (digits);
    "served" is per input already (test_served_mae: per recording for EEG)."""
    if what == "served":
        return f"{split}_served_mae"
    return f"{split}_{task['level']}{what}_{'mae' if task['kind'] == 'regression' else 'acc'}"


def _lower_better(task: dict) -> bool:
    return task["kind"] == "regression"


def _stats(values: list[float]) -> dict[str, Any]:
    v = [float(x) for x in values]
    return {"seed0": v[0], "mean": float(np.mean(v)), "min": min(v), "max": max(v), "per_seed": v}


# ------------------------------------------------------------------- data


def _make_data(name: str, work: Path, quick: bool) -> tuple[dict[str, Any], Path | None]:
    """(the train() keyword arguments that say what the data is, labels.csv with a split column)."""
    if name == "webcam":
        labels = C.webcam_data(work / "data", QUICK["webcam_images"] if quick else C.WEBCAM["n_images"])
        return {"data": str(labels), "target": "temperature", "image_size": C.WEBCAM["size"], "viz": False}, labels
    if name == "eeg":
        data = C.eeg_data(work / "data", QUICK["eeg_recordings"] if quick else C.EEG_RECORDINGS)
        return {"data": str(data), "target": "age", "eeg": dict(C.EEG_SPEC), "viz": False}, data / "labels.csv"
    data = C.digits_data(work / "data", QUICK["digits"] if quick else None)
    return {"data": str(data), "target": "class", "image_size": C.DIGITS_SIZE, "viz": False}, None


def _data_summary(name: str, quick: bool) -> dict[str, Any]:
    if name == "webcam":
        return {**C.WEBCAM, "n_images": QUICK["webcam_images"] if quick else C.WEBCAM["n_images"]}
    if name == "eeg":
        return {"recordings": QUICK["eeg_recordings"] if quick else C.EEG_RECORDINGS,
                "duration_s": C.EEG_DURATION_S, "sfreq": C.EEG_SFREQ, **C.EEG_SPEC}
    return {"digits": QUICK["digits"] if quick else 1797, "image_size": C.DIGITS_SIZE}


def _mean_baseline(labels_csv: Path, column: str) -> float:
    """Test MAE of predicting the training mean (one row per recording for EEG: recording level)."""
    with open(labels_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    train_mean = np.mean([float(r[column]) for r in rows if r["split"] == "train"])
    test = np.array([float(r[column]) for r in rows if r["split"] == "test"])
    return float(np.abs(test - train_mean).mean())


def _fraction_csv(labels_csv: Path, fraction: float) -> tuple[Path, int]:
    """A labels CSV beside `labels_csv` keeping `fraction` of its train rows (seeded, nested
    across fractions), every val and test row, and the split column; (path, train rows kept)."""
    with open(labels_csv, newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    train = [i for i, r in enumerate(rows) if r["split"] == "train"]
    n_keep = max(2, int(round(fraction * len(train))))
    keep = set(np.asarray(train)[np.random.default_rng(FRACTION_SEED).permutation(len(train))[:n_keep]].tolist())
    out = labels_csv.with_name(f"labels-train{round(fraction * 100):03d}.csv")
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
        w.writeheader()
        w.writerows(r for i, r in enumerate(rows) if r["split"] != "train" or i in keep)
    return out, n_keep


# ------------------------------------------------------------- main table


def _run_record(final: dict, seconds: float) -> dict[str, Any]:
    return {**{k: v for k, v in final.items() if isinstance(v, (int, float, str, bool))}, "seconds": seconds}


def main_table(name: str, work: Path, epochs: int, seeds: int, data_kw: dict) -> dict[str, Any]:
    task = TASKS[name]
    runs = []
    for seed in range(seeds):
        entry: dict[str, Any] = {"seed": seed}
        for loss in task["losses"]:
            final, secs = C.timed_train(work / f"{loss}-s{seed}", loss=loss, seed=seed, epochs=epochs, **data_kw)
            cfg = C.load_json(work / f"{loss}-s{seed}" / "config.json")  # what the defaults resolved to
            entry[loss] = {**_run_record(final, secs), "loss_temperature": cfg.get("temperature")}
        runs.append(entry)
    loss_of = dict(zip(("contrastive", "plain"), task["losses"]))
    rows = []
    for side, what in rows_of(task):
        key = _key(task, "test", what)
        if not all(key in r[loss_of[side]] for r in runs):
            continue  # a run trained before supemb recorded what it serves
        rows.append({"side": side, "what": what, "label": _row_label(task, side, what), "loss": loss_of[side],
                     "key": key, **_stats([r[loss_of[side]][key] for r in runs])})
    extra = []
    stems = (("ordinality", "test ordinality (Spearman)"), ("knn_coverage", "test errors inside the served ±")) \
        if task["kind"] == "regression" else (
        ("map_at_r", "test MAP@R"), ("p_at_1", "test P@1"))
    for stem, label in stems:
        for side, loss in loss_of.items():
            key = f"test_{stem}"
            if all(key in r[loss] for r in runs):
                extra.append({"label": label, "side": side, "loss": loss, "key": key,
                              **_stats([r[loss][key] for r in runs])})
    pick = min if _lower_better(task) else max
    best = {side: pick((r for r in rows if r["side"] == side), key=lambda r: r["mean"])
            for side in ("plain", "contrastive")}
    res: dict[str, Any] = {"n_seeds": seeds, "rows": rows, "extra_rows": extra,
                           "best_plain": best["plain"], "best_contrastive": best["contrastive"],
                           "ratio": best["contrastive"]["mean"] / best["plain"]["mean"],
                           "verdict": _verdict(task, best["contrastive"], best["plain"], seeds), "runs": runs}
    if task["kind"] == "classification":
        res["error_ratio"] = (1 - best["contrastive"]["mean"]) / max(1e-12, 1 - best["plain"]["mean"])
    return res


def _verdict(task: dict, c: dict, p: dict, seeds: int) -> str:
    """Better only against the best plain figure, and only when the seed ranges do not overlap."""
    if seeds < 2:
        return "one seed: no spread to judge a difference by"
    if _lower_better(task):
        c_wins, p_wins = c["max"] < p["min"], p["max"] < c["min"]
    else:
        c_wins, p_wins = c["min"] > p["max"], p["min"] > c["max"]
    if c_wins:
        return "contrastive better: every seed's figure beats every seed of the best plain figure"
    if p_wins:
        return "plain better: every seed of the best plain figure beats every contrastive seed"
    return "no clear difference: the seed ranges overlap"


def webcam_map(work: Path, docs: Path) -> Path:
    from supemb.train.embedding import embed_run
    from supemb.train.viz import side_by_side

    maps = []
    for title, run in (("L1 end to end", "l1-s0"), ("RnC (SupCR)", "rnc-s0")):
        emb, targets, _, metric = embed_run(work / run, "val")
        maps.append((emb, targets, f"{title}: {metric} geometry"))
    # embed_run gives each embedding in its served geometry (L2-normalised for cosine, raw for l2):
    # metric="l2" keeps both as they are, so each panel shows its own geometry.
    return side_by_side(maps, docs / "img" / "evidence-webcam.png", discrete=False, seed=0,
                        target_name="temperature (°C)", metric="l2")


# --------------------------------------------------------------- fractions


FRACTION_CANDIDATES = {"contrastive": ("knn", "linear", "served"), "plain": ("head", "linear", "knn", "served")}
FRACTION_SHOWN = {"knn": "kNN", "linear": "linear head", "head": "head", "served": "as served"}


def fraction_point(task: dict, side: str, final: dict) -> dict[str, Any]:
    """One side's figure at one fraction: of its predictors (the served one where the run
    records it), the best on validation (ties: the first), reported on test."""
    cands = [w for w in FRACTION_CANDIDATES[side] if _key(task, "val", w) in final]
    chosen = min(cands, key=lambda w: final[_key(task, "val", w)])
    label = "probe" if (side, chosen) == ("plain", "linear") else FRACTION_SHOWN[chosen]
    if chosen == "served" and "served" in final:
        label = f"{final['served']}, as served"
    return {"chosen": chosen, "chosen_label": label, "val": final[_key(task, "val", chosen)],
            "test": final[_key(task, "test", chosen)],
            "all_test": {w: final[_key(task, "test", w)] for w in cands}, "seconds": final["seconds"]}


def fractions(name: str, work: Path, epochs: int, data_kw: dict, labels_csv: Path, main: dict) -> dict[str, Any]:
    """Seed 0 on 10% / 25% / 100% of the training rows; each method's figure chosen by validation."""
    task = TASKS[name]
    out: dict[str, Any] = {"fractions": list(FRACTIONS), "seed": 0, "n_train": {}, "contrastive": {}, "plain": {}}
    n_full = None
    for frac in FRACTIONS:
        finals = {}
        if frac == 1.0:  # the main table's seed-0 runs
            finals = {loss: main["runs"][0][loss] for loss in task["losses"]}
            with open(labels_csv, newline="") as f:
                n_full = sum(r["split"] == "train" for r in csv.DictReader(f))
            out["n_train"][str(frac)] = n_full
        else:
            csv_path, n_keep = _fraction_csv(labels_csv, frac)
            out["n_train"][str(frac)] = n_keep
            for loss in task["losses"]:
                final, secs = C.timed_train(work / f"{loss}-f{round(frac * 100):03d}-s0", loss=loss, seed=0,
                                            epochs=epochs, **{**data_kw, "data": str(csv_path)})
                finals[loss] = _run_record(final, secs)
        for side, loss in zip(("contrastive", "plain"), task["losses"]):
            out[side][str(frac)] = fraction_point(task, side, finals[loss])
    out["unit"] = "recordings" if name == "eeg" else "images"
    return out


# -------------------------------------------------------------- corruption


def _image_noise(sigma: float):
    def f(img: Image.Image, i: int, group: int) -> Image.Image:
        a = np.asarray(img, dtype=np.float64)
        rng = np.random.default_rng([CORRUPTION_SEED, i])
        return Image.fromarray(np.clip(np.rint(a + rng.normal(0.0, sigma * 255.0, a.shape)), 0, 255).astype(np.uint8))
    return f


def _image_blur(radius: float):
    return lambda img, i, group: img.filter(ImageFilter.GaussianBlur(radius))


def _image_jpeg(quality: int):
    def f(img: Image.Image, i: int, group: int) -> Image.Image:
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        return Image.open(buf).convert("RGB")
    return f


def _eeg_noise(level: float):
    """Gaussian noise of `level` x each channel's standard deviation (over the window)."""
    def f(x: torch.Tensor, i: int, group: int) -> torch.Tensor:
        a = x.numpy().astype(np.float64)
        rng = np.random.default_rng([CORRUPTION_SEED, i])
        noisy = a + level * a.std(axis=1, keepdims=True) * rng.standard_normal(a.shape)
        return torch.from_numpy(noisy.astype(np.float32))
    return f


def _eeg_drop(fraction: float):
    """round(fraction x C) channels zeroed, the same ones in every window of a recording (a dead
    electrode), drawn per recording with a fixed seed."""
    def f(x: torch.Tensor, i: int, group: int) -> torch.Tensor:
        c = x.shape[0]
        ch = np.random.default_rng([CORRUPTION_SEED, 1, group]).choice(c, size=int(round(fraction * c)), replace=False)
        y = x.clone()
        y[torch.as_tensor(ch, dtype=torch.long)] = 0.0
        return y
    return f


CORRUPTIONS = {
    "image": [("clean", None), ("noise σ=0.05", _image_noise(0.05)), ("noise σ=0.1", _image_noise(0.1)),
              ("blur r=0.5", _image_blur(0.5)), ("blur r=1", _image_blur(1.0)),
              ("JPEG q=50", _image_jpeg(50)), ("JPEG q=20", _image_jpeg(20))],
    "eeg": [("clean", None), ("noise 0.25σ", _eeg_noise(0.25)), ("noise 0.5σ", _eeg_noise(0.5)),
            ("20% channels dropped", _eeg_drop(0.2)), ("40% channels dropped", _eeg_drop(0.4))],
}


def _probe_head(run: C.LoadedRun, train_feats: np.ndarray, val_feats: np.ndarray):
    """The converged linear probe the trainer fits on a baseline's frozen encoder (not saved
    with the run), refitted on the clean train features, strength chosen on clean validation."""
    from supemb.train import probe

    fit = probe.fit_ridge(train_feats, run.split("train").targets, val_feats,
                          lambda pred: -run.mae(pred, "val"))
    return lambda feats: feats.astype(np.float64) @ fit.weight[0] + fit.bias[0]


def predictors(name: str, runs: dict[str, C.LoadedRun]) -> dict[tuple[str, str], Any]:
    """A regression task's table rows as functions of raw test features: {(side, what): predict}
    (`ROWS`), from its finished contrastive and plain runs `runs` {loss: run}; the kNN gallery
    and the plain model's probe come from clean training (and validation) features."""
    (c_loss, p_loss) = TASKS[name]["losses"]
    out: dict[tuple[str, str], Any] = {}
    for side, loss in (("contrastive", c_loss), ("plain", p_loss)):
        run = runs[loss]
        train_feats = run.features("train")
        out[side, "knn"] = lambda f, r=run, g=train_feats: r.knn_predict(g, f)
        if side == "plain":
            out[side, "head"] = run.head_predict
            out[side, "linear"] = _probe_head(run, train_feats, run.features("val"))
        else:
            out[side, "linear"] = run.head_predict
    return out


def corruption(name: str, work: Path, main: dict) -> dict[str, Any]:
    task = TASKS[name]
    runs = {loss: C.load_run(work / f"{loss}-s0") for loss in task["losses"]}
    modality = runs[task["losses"][0]].data.modality
    side_loss = dict(zip(("contrastive", "plain"), task["losses"]))
    (c, p) = task["names"]
    labels = {("contrastive", "knn"): f"{c} + kNN", ("contrastive", "linear"): f"{c} + linear head",
              ("plain", "head"): f"{p} end to end", ("plain", "linear"): f"{p} encoder + probe",
              ("plain", "knn"): f"{p} encoder + kNN"}  # the order of the table's rows
    rows = predictors(name, runs)
    table: dict[str, dict[str, float]] = {label: {} for label in labels.values()}
    names = []
    for cname, fn in CORRUPTIONS[modality]:
        names.append(cname)
        feats = {loss: run.features("test", fn) for loss, run in runs.items()}
        for row, label in labels.items():
            loss = side_loss[row[0]]
            table[label][cname] = runs[loss].mae(rows[row](feats[loss]), "test")
    # The clean column recomputes the trainer's test figures: a check of this evaluation path.
    check = {}
    for row in labels:
        ref = main["runs"][0][side_loss[row[0]]].get(_key(task, "test", row[1]))
        if ref is not None:
            check[labels[row]] = {"here": table[labels[row]]["clean"], "trainer": ref,
                                  "abs_diff": abs(table[labels[row]]["clean"] - ref)}
    worst = max((v["abs_diff"] for v in check.values()), default=0.0)
    if worst > 1e-3 * max(1.0, max(abs(v["trainer"]) for v in check.values())):
        print(f"WARNING: {name}: clean figures differ from the trainer's by up to {worst:.4g}: "
              f"{json.dumps(check)}", file=sys.stderr)
    return {"modality": modality, "corruptions": names, "mae": table, "clean_check": check,
            "seed": 0, "level": "recording" if task["level"] else "item"}


# ------------------------------------------------------------------- plots


def plot_fractions(results: dict, out_png: Path) -> Path | None:
    import matplotlib.pyplot as plt

    tasks = [n for n in ("webcam", "eeg") if "fraction" in results.get(n, {})]
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.0), squeeze=False)
    for ax, name in zip(axes[0], tasks):
        fr, task = results[name]["fraction"], TASKS[name]
        xs = [float(f) * 100 for f in fr["fractions"]]
        for side, label, style in (("contrastive", task["names"][0], "o-"), ("plain", task["names"][1], "s--")):
            ys = [fr[side][str(f)]["test"] for f in fr["fractions"]]
            ax.plot(xs, ys, style, label=f"{label} (best by val)")
            other = "plain" if side == "contrastive" else "contrastive"
            for x, f, y in zip(xs, fr["fractions"], ys):  # the chosen predictor, above the higher point of the two
                point, up = fr[side][str(f)], y >= fr[other][str(f)]["test"]
                ax.annotate(point.get("chosen_label", point["chosen"]).split(",")[0], (x, y),
                            textcoords="offset points", xytext=(4, 4 if up else -10), fontsize=7)
        if "predict_mean_mae" in results[name]:
            ax.axhline(results[name]["predict_mean_mae"], color="grey", lw=0.8, ls=":", label="predict the mean")
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:g}%\n({fr['n_train'][str(f)]})" for x, f in zip(xs, fr["fractions"])])
        ax.minorticks_off()
        level = "recording-level " if task["level"] else ""
        ax.set(title=task["title"].split(" (")[0], xlabel=f"training split kept (train {fr['unit']})",
               ylabel=f"{level}test MAE ({task['unit']})")
        ax.legend(fontsize=8)
    fig.suptitle("Less training data (seed 0)")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_corruption(results: dict, out_png: Path) -> Path | None:
    import matplotlib.pyplot as plt

    tasks = [n for n in ("webcam", "eeg") if "corruption" in results.get(n, {})]
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(7.0 * len(tasks), 4.4), squeeze=False)
    for ax, name in zip(axes[0], tasks):
        cor, task = results[name]["corruption"], TASKS[name]
        models = list(cor["mae"])
        x = np.arange(len(cor["corruptions"]))
        width = 0.8 / len(models)
        for j, m in enumerate(models):
            ax.bar(x + (j - (len(models) - 1) / 2) * width, [cor["mae"][m][c] for c in cor["corruptions"]],
                   width, label=m, hatch="" if m.startswith(task["names"][0]) else "//")
        ax.set_xticks(x, cor["corruptions"], rotation=25, ha="right", fontsize=8)
        level = "recording-level " if task["level"] else ""
        ax.set(title=task["title"].split(" (")[0] + " (seed 0)", ylabel=f"{level}test MAE ({task['unit']})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


# ---------------------------------------------------------------- markdown


def _fmt(task: dict) -> str:
    return ".2f" if task["kind"] == "regression" else ".3f"


def _cells(s: dict, fmt: str) -> str:
    if len(s["per_seed"]) == 1:
        return f"{s['seed0']:{fmt}} | –"
    return f"{s['seed0']:{fmt}} | {s['mean']:{fmt}} ({s['min']:{fmt}}–{s['max']:{fmt}})"


def _task_markdown(name: str, r: dict) -> list[str]:
    task, fmt = TASKS[name], _fmt(TASKS[name])
    n = r["n_seeds"]
    figure = {"webcam": "test MAE (°C)", "eeg": "recording-level test MAE (years)", "digits": "test accuracy"}[name]
    d = r["data"]
    if name == "webcam":
        intro = (f"{d['n_images']:,} {d['size']}x{d['size']} frames from {d['n_cameras']} cameras, one fixed "
                 "seeded 80/10/10 split; the camera dominates the pixels, temperature shows through weak cues "
                 "(synthetic, `supemb.data.synthetic_webcam`).")
    elif name == "eeg":
        intro = (f"{d['recordings']} recordings (one per subject) of {d['duration_s']:g} s, 19 channels at "
                 f"{d['sfreq']:g} Hz, {d['window_s']:g} s windows with {d['stride_s']:g} s stride, {d['scaling']} "
                 "per-channel scaling, one fixed seeded 70/15/15 split over subjects; alpha peak frequency and 1/f "
                 "slope change with age, per-subject variation dominates (synthetic, `supemb.data.synthetic_eeg`). "
                 "Every figure is per recording (window predictions averaged), the level the task is judged at.")
    else:
        intro = (f"{d['digits']:,} 8x8 digits upscaled to {d['image_size']}x{d['image_size']}, 10 classes, one "
                 "fixed stratified 80/10/10 split (seed 0).")
    lines = [f"## {task['title']}", "", intro + f" Epochs: {r['epochs']}.", "",
             f"| model | {figure}, seed 0 | mean (min–max) over {n} seeds |", "|---|---:|---:|"]
    if "predict_mean_mae" in r:
        lines.append(f"| predict the training mean | {r['predict_mean_mae']:{fmt}} | |")
    for row in r["rows"]:
        lines.append(f"| {row['label']} | {_cells(row, fmt)} |")
    c, p = r["best_contrastive"], r["best_plain"]
    direction = "below 1: contrastive better" if _lower_better(task) else "above 1: contrastive better"
    lines += [f"| **best plain figure**: {p['label']} | {_cells(p, fmt)} |",
              f"| **best contrastive figure**: {c['label']} | {_cells(c, fmt)} |", "",
              f"Ratio best contrastive / best plain (means over seeds): **{r['ratio']:.3f}** ({direction})"
              + (f"; error-rate ratio {r['error_ratio']:.3f}" if "error_ratio" in r else "") + ". "
              f"Verdict against the best plain figure: {r['verdict']}. The best figure of each side is picked "
              "over its rows by the mean over seeds on test, the same rule for both sides.", ""]
    if r["extra_rows"]:
        lines += [f"| embedding | figure | seed 0 | mean (min–max) over {n} seeds |", "|---|---|---:|---:|"]
        for row in r["extra_rows"]:
            who = task["names"][0] if row["side"] == "contrastive" else task["names"][1]
            lines.append(f"| {who} | {row['label']} | {_cells(row, '.3f')} |")
        what = ("Ordinality: Spearman correlation between embedding and target distances over test pairs, in the "
                "geometry each model serves" + (" (windows)." if name == "eeg" else ".") + " Errors inside the ±: "
                "the share of test " + ("recordings" if name == "eeg" else "items") + " whose error, as the bundle "
                "serves the value (plain or residual kNN), is within the served ± (the neighbours' spread scaled on "
                "validation to hold 68.27 % of its errors; docs/DESIGN.md)."
                ) if task["kind"] == "regression" else ("MAP@R and P@1: test queries against the train gallery in each model's served "
                               "geometry; they show how tightly each embedding clusters the classes.")
        lines += ["", what, ""]
    lines += ["| run | served metric per seed | served predictor per seed | kNN k, seed 0 | kNN temperature, seed 0 "
              "| training seconds, seed 0 | mean over seeds |", "|---|---|---|---:|---:|---:|---:|"]
    for loss, label in zip(task["losses"], task["names"]):
        per = [run[loss] for run in r["runs"]]
        served = ", ".join(x.get("served", "kNN vote" if task["kind"] == "classification" else "?") for x in per)
        lines.append(f"| {label} | {', '.join(x.get('metric', '?') for x in per)} | {served} | "
                     f"{per[0].get('knn_k', '?')} | "
                     f"{per[0].get('knn_temperature', float('nan')):.3g} | {per[0]['seconds']:.0f} | "
                     f"{np.mean([x['seconds'] for x in per]):.0f} |")
    lines.append("")
    if name == "webcam" and "image" in r:
        lines += [f"![validation embeddings, L1 vs RnC, each in its served geometry]({r['image']})", ""]
    if name == "webcam":
        lines += _reference_markdown(r)
    return lines


def reference(work: Path, labels_csv: Path, epochs: int, seeds: int, quick: bool) -> dict[str, Any]:
    """experiments/plain_reference.py (a plain PyTorch script of our own) on the same data, epochs and seeds."""
    import subprocess

    out: dict[str, Any] = {"epochs": epochs, "runs": []}
    for seed in range(seeds):
        for loss in ("rnc", "l1"):
            path = work / f"reference-{loss}-s{seed}.json"
            t0 = time.perf_counter()
            subprocess.run([sys.executable, str(C.ROOT / "experiments" / "plain_reference.py"), str(labels_csv),
                            "--target", "temperature", "--loss", loss, "--epochs", str(epochs), "--seed", str(seed),
                            "--json", str(path)], check=True, stdout=subprocess.DEVNULL)
            figures = {k: v for k, v in C.load_json(path).items() if not k.endswith("_errors")}  # per-image lists
            out["runs"].append({**figures, "seconds": time.perf_counter() - t0})
    rows = {}
    for loss, keys in (("rnc", ("knn", "ridge")), ("l1", ("head", "knn", "ridge"))):
        for key in keys:
            vals = [r[f"{key}_test_mae"] for r in out["runs"] if r["loss"] == loss]
            rows[f"{loss}_{key}"] = _stats(vals)
    out["rows"] = rows
    return out


def _reference_markdown(r: dict) -> list[str]:
    if "reference" not in r:
        return []
    ref = r["reference"]
    n = len(ref["rows"]["rnc_knn"]["per_seed"])
    labels = {"rnc_knn": "RnC + kNN", "rnc_ridge": "RnC + ridge probe", "l1_head": "L1 end to end",
              "l1_knn": "L1 encoder + kNN", "l1_ridge": "L1 encoder + ridge probe"}
    lines = ["### Against a plain reference script of our own", "",
             "`experiments/plain_reference.py` (about 80 lines of plain PyTorch: 5 conv layers 32-32-64-64-128, "
             "batch 128, crop + flip + brightness/contrast/colour-shift jitter, RnC written from the paper's "
             "formula, closed-form ridge probe with its strength chosen on validation), trained on the same data, "
             f"split, epochs ({ref['epochs']}) and seeds. Test MAE (°C)."
             + (f" Rerun on its own ({ref['machine']['command']}, {ref['machine']['date']})." if "machine" in ref
                else ""), "",
             f"| reference | seed 0 | mean (min–max) over {n} seeds |", "|---|---:|---:|"]
    for key, label in labels.items():
        lines.append(f"| {label} | {_cells(ref['rows'][key], '.2f')} |")
    best = {loss: min((v for k, v in ref["rows"].items() if k.startswith(loss)), key=lambda v: v["mean"])
            for loss in ("rnc", "l1")}
    ours_best = {side: r[f"best_{side}"] for side in ("contrastive", "plain")}
    lines += ["", f"Best reference RnC {best['rnc']['mean']:.2f} against supemb's best RnC figure "
              f"{ours_best['contrastive']['mean']:.2f}; best reference L1 {best['l1']['mean']:.2f} against "
              f"supemb's best L1 figure {ours_best['plain']['mean']:.2f} (means over seeds). The two, paired per "
              "image on 2,400 fresh frames of the same cameras, with a bootstrap interval: docs/significance.md "
              "(`experiments/significance.py`).", ""]
    return lines


def _fraction_markdown(results: dict) -> list[str]:
    tasks = [n for n in ("webcam", "eeg") if "fraction" in results.get(n, {})]
    if not tasks:
        return []
    lines = ["## Less training data (the SupCR paper's claim)", "",
             "Seed 0 only (one training per point: read differences smaller than the seed spread of the main "
             "tables as noise). Both methods trained on a seeded subset of the training split (nested: the 10% "
             "rows are among the 25%), validation and test unchanged; each method's figure is the one of its "
             "predictors that is best on validation (contrastive: kNN, linear head or as its bundle serves it; "
             "plain: its head, the probe, kNN or as served), reported on test.", ""]
    for name in tasks:
        fr, task = results[name]["fraction"], TASKS[name]
        c, p = task["names"]
        lines += [f"**{task['title'].split(' (')[0]}** (test MAE, {task['unit']}"
                  + (", per recording" if task["level"] else "") + ")", "",
                  f"| train kept | train {fr['unit']} | {c} (chosen) | {p} (chosen) | ratio {c}/{p} |",
                  "|---:|---:|---:|---:|---:|"]
        for f in fr["fractions"]:
            a, b = fr["contrastive"][str(f)], fr["plain"][str(f)]
            la, lb = a.get("chosen_label", a["chosen"]), b.get("chosen_label", b["chosen"])
            lines.append(f"| {float(f) * 100:g}% | {fr['n_train'][str(f)]} | {a['test']:.2f} ({la}) | "
                         f"{b['test']:.2f} ({lb}) | {a['test'] / b['test']:.3f} |")
        lines.append("")
    lines += ["![test MAE against the fraction of training data](img/evidence-fraction.png)", ""]
    return lines


def _corruption_markdown(results: dict) -> list[str]:
    tasks = [n for n in ("webcam", "eeg") if "corruption" in results.get(n, {})]
    if not tasks:
        return []
    lines = ["## Test-time corruption (the SupCR paper's robustness claim)", "",
             "The 100% seed-0 models of each task, every test input corrupted, the training gallery (kNN) and "
             "heads clean. Images (0–255 pixels): Gaussian pixel noise of σ = 0.05 and 0.1 of the range, "
             "Gaussian blur of radius 0.5 and 1 px, JPEG at quality 50 and 20 (PIL). EEG (on the model's input, "
             "after per-channel scaling): Gaussian noise of 0.25 and 0.5 x each channel's standard deviation in "
             "the window, and 20% / 40% of the channels zeroed (the same channels in every window of a "
             "recording, like a dead electrode; drawn per recording). Every draw is seeded. The plain model's "
             "probe is not saved with its run; it is refitted on the clean training features (strength chosen "
             "on clean validation). The clean column recomputes the trainer's test figures (largest difference "
             "below).", ""]
    for name in tasks:
        cor, task = results[name]["corruption"], TASKS[name]
        lines += [f"**{task['title'].split(' (')[0]}** ({'recording-level ' if task['level'] else ''}test MAE, "
                  f"{task['unit']})", "", "| model | " + " | ".join(cor["corruptions"]) + " |",
                  "|---|" + "---:|" * len(cor["corruptions"])]
        for m, vals in cor["mae"].items():
            lines.append(f"| {m} | " + " | ".join(f"{vals[c]:.2f}" for c in cor["corruptions"]) + " |")
        worst = max((v["abs_diff"] for v in cor["clean_check"].values()), default=0.0)
        lines += ["", f"Clean column against the trainer's test figures: largest difference {worst:.2g}.", ""]
    lines += ["![test MAE under corruption](img/evidence-corruption.png)", ""]
    return lines


def write_markdown(results: dict, docs: Path) -> Path:
    m = results["machine"]
    epochs = ", ".join(f"{k} {results[k]['epochs']}" for k in TASKS if k in results)
    earlier = [f"The {name} figures come from an earlier run: `{results[name]['machine']['command']}` "
               f"({results[name]['machine']['date']})." for name in TASKS  # kept by --only
               if name in results and results[name].get("machine", m) != m]
    from supemb.losses.registry import LOSSES

    temperatures = ", ".join([*(f"{k} {LOSSES[k].temperature:g}" for k in ("supcon", "rnc")),
                              *(f"except {o}" for o in C.temperature_overrides())])
    eeg = modalities.get("eeg")  # the plug-in's presets for each side (supemb.modalities.eeg)
    lines = ["# Evidence: contrastive against plain training", ""]
    if results.get("quick"):
        lines += ["**SMOKE RUN (--quick): tiny data, 1 epoch; these figures mean nothing.**", ""]
    lines += [f"Reproduce with `{m['command']}` (the figures below come from that one run"
              + (" unless noted" if earlier else "") + f"; epochs: {epochs}).", C.machine_line(m), *earlier, "",
              "Every contrastive run and its baseline use the same data, split, encoder, epochs, seed and the "
              "package's default recipe (batch size, learning rate, augmentation, stage 2: chosen on validation "
              "splits for both; the augmentation is each side's own where validation chose differently for "
              f"it: on EEG RnC trains with {eeg.contrastive_augment['regression']} and L1 with "
              f"{eeg.default_augment['regression']}, docs/recipe.md; the contrastive loss at its "
              f"default temperature: {temperatures}, docs/temperature.md, docs/temperature-check.md); the figures "
              "are on the test splits. Each main table trains both with several "
              "training seeds on one fixed data set and split and gives seed 0 and the mean (min–max) over the "
              "seeds. A method is called better only against the best plain figure (the best of the plain "
              "model's own head, a converged linear probe on its frozen encoder and kNN on it).",
              "How far each test split's sample alone could move a ratio, and the same models on fresh inputs "
              "from the same generators: docs/significance.md (`experiments/significance.py`, from these runs).",
              ""]
    for name in TASKS:
        if name in results:
            lines += _task_markdown(name, results[name])
    lines += _fraction_markdown(results) + _corruption_markdown(results)
    return C.write_doc(docs / "evidence.md", lines)


# -------------------------------------------------------------------- main


def run_task(name: str, work: Path, epochs: int, seeds: int, docs: Path, quick: bool, results: dict,
             save) -> None:
    data_kw, labels_csv = _make_data(name, work, quick)
    res: dict[str, Any] = {"epochs": epochs, "data": _data_summary(name, quick), "machine": results["machine"]}
    if labels_csv is not None:
        res["predict_mean_mae"] = _mean_baseline(labels_csv, TASKS[name]["target"])
    res.update(main_table(name, work, epochs, seeds, data_kw))
    results[name] = res
    save()
    if name == "webcam":
        res["image"] = str(webcam_map(work, docs).relative_to(docs))
        print("== webcam: the plain reference script", flush=True)
        res["reference"] = reference(work, labels_csv, epochs, seeds, quick)
        save()
    if labels_csv is not None:
        print(f"== {name}: less training data", flush=True)
        res["fraction"] = fractions(name, work, epochs, data_kw, labels_csv, res)
        save()
        print(f"== {name}: corrupted test inputs", flush=True)
        res["corruption"] = corruption(name, work, res)
        save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/evidence", help="where data and runs go (must be empty or new)")
    parser.add_argument("--epochs", type=int, default=None, help="override every task's epochs")
    parser.add_argument("--seeds", type=int, default=None, help=f"training seeds per task (default {SEEDS})")
    parser.add_argument("--only", choices=list(TASKS), action="append",
                        help="run only these tasks (repeatable); the others are kept from DOCS/evidence.json")
    parser.add_argument("--docs-dir", default=None, help="where evidence.md/.json and img/ go (default docs/; "
                        "--quick: WORK/docs)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {QUICK['webcam_images']} webcam images, {QUICK['eeg_recordings']} EEG "
                             f"recordings, {QUICK['digits']} digits, {QUICK['epochs']} epoch, {QUICK['seeds']} seed")
    parser.add_argument("--reference-only", action="store_true",
                        help="rerun only the plain reference script on the webcam data; keep everything else "
                             "from DOCS/evidence.json")
    args = parser.parse_args()
    work = C.fresh_work(Path(args.work))
    docs = Path(args.docs_dir) if args.docs_dir else (work / "docs" if args.quick else C.ROOT / "docs")
    (docs / "img").mkdir(parents=True, exist_ok=True)
    seeds = args.seeds or (QUICK["seeds"] if args.quick else SEEDS)
    record = docs / "evidence.json"
    old = C.load_json(record) if args.only or args.reference_only else {}
    same_kind = old.get("version") == RECORD_VERSION and bool(old.get("quick")) == args.quick
    results: dict[str, Any] = {k: v for k, v in old.items() if k in TASKS} if same_kind else {}
    results.update({"version": RECORD_VERSION, "machine": C.machine(), "quick": args.quick})

    def save() -> None:
        record.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        write_markdown(results, docs)

    if args.reference_only:  # the webcam task's last run stays; its reference rows are replaced
        old_web = results.get("webcam")
        if not same_kind or old_web is None:
            sys.exit(f"--reference-only needs a {'quick ' if args.quick else ''}webcam result in {record}")
        _, labels_csv = _make_data("webcam", work / "webcam", args.quick)
        epochs = args.epochs or (QUICK["epochs"] if args.quick else EPOCHS["webcam"])
        print("== webcam: the plain reference script", flush=True)
        old_web["reference"] = {**reference(work / "webcam", labels_csv, epochs, seeds, args.quick),
                                "machine": results["machine"]}
        save()
        print(f"wrote {docs / 'evidence.md'}, {record}")
        return
    for name in TASKS:
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        epochs = args.epochs or (QUICK["epochs"] if args.quick else EPOCHS[name])
        results.pop(name, None)
        run_task(name, work / name, epochs, seeds, docs, args.quick, results, save)
        summary = {k: results[name][k] for k in ("ratio", "verdict") if k in results[name]}
        print(json.dumps(summary, ensure_ascii=False), flush=True)
    plot_fractions(results, docs / "img" / "evidence-fraction.png")
    plot_corruption(results, docs / "img" / "evidence-corruption.png")
    save()
    print(f"wrote {docs / 'evidence.md'}, {record}")


if __name__ == "__main__":
    main()
