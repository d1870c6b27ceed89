"""Can the evidence's test sets tell contrastive from plain training apart? A paired bootstrap
of the ratios in docs/evidence.md, over the test inputs.

    .venv/bin/python experiments/significance.py [--work runs/evidence-cal] [--draws 10000] [--no-fresh]
        [--no-reference] [--keep-others] [--docs-dir DIR]

Nothing of supemb's is trained: the finished main-table runs of `experiments/evidence.py` (WORK/TASK/LOSS-sSEED,
every seed found) are loaded, and each table row's prediction (`evidence.predictors`: kNN, the
stage-2 head, the plain model's own head and its converged probe) gives the |error| of every
validation and test input (an image; an EEG recording, its windows averaged). The recomputed
test MAEs are checked against the trainer's own figures.

For the two regression tasks (synthetic webcam temperature, synthetic EEG brain age) three
comparisons of the best contrastive against the best plain figure, as a ratio of MAEs averaged
over the seeds:
- "the best row of each side": each side's row with the lowest MAE on the test inputs averaged
  over the seeds (evidence.md's rule; the choice itself looks at those inputs);
- "chosen on validation": per seed, each side's row with the lowest validation MAE (no test
  figure is used to choose);
- "kNN against kNN": plain kNN on both sides (what a bundle serves unless validation chose the
  residual kNN for it; docs/residual_knn.md measures that on the same runs).
Each ratio gets a 95 % interval from DRAWS paired bootstrap draws of the test inputs (the same
draw for both sides and every seed; seeded), and the share of draws in which the contrastive
side is ahead (ratio below 1). The interval says how much the figure could move with another
test set of the same size from the same source; it does not cover the training seeds, whose
per-seed ratios are listed beside it.

On the fresh webcam inputs, supemb's RnC and L1 are also compared, the same three ways and
paired per image, with experiments/plain_reference.py (our plain PyTorch yardstick) trained
with the same seeds, epochs and training split: 6 short trainings, kept in WORK/webcam/ and
reused; --no-reference skips them. Appends the run, with its machine record, to
DOCS/significance.json and writes DOCS/significance.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # experiments/*.py, however this file is loaded
import _common as C  # noqa: E402
import evidence as E  # noqa: E402

TASK_NAMES = ("webcam", "eeg")  # the regression tasks; digits' test set holds two or three errors per seed
BOOTSTRAP_SEED = 0
FRESH_SEED = 7  # the generators' seed for the fresh test inputs (the evidence data: seed 0)
FRESH = {"webcam": 2400, "eeg": 300}  # fresh test inputs: images, recordings
LEVEL = 0.95
REFERENCE_ROWS = {"rnc": ("knn", "ridge"), "l1": ("head", "knn", "ridge")}  # plain_reference.py's predictors
COMPARISONS = {"evidence": "the best row of each side on these inputs (evidence.md's rule)",
               "validation": "chosen on validation, per seed",
               "knn": "kNN against kNN (plain kNN)",
               "served": "what each bundle serves (plain or residual kNN, as each run chose on validation)"}


def seeds_of(task_dir: Path, loss: str) -> list[int]:
    """The training seeds of a task's main-table runs (not the less-data runs, `-f010-s0`)."""
    found = (re.fullmatch(rf"{loss}-s(\d+)", p.name) for p in task_dir.iterdir())
    return sorted(int(m.group(1)) for m in found if m and (task_dir / m.group(0) / "model.json").is_file())


def fresh_data(name: str, work: Path, n: int, kind: str) -> Path:
    """The evidence data with its test split replaced by `n` fresh inputs from the same generator
    (another seed: the same webcam scenes, new frames; new EEG subjects): WORK/TASK-fresh,
    whose labels.csv keeps the train and val rows as they are. Returns what `--data` was."""
    import csv
    import shutil

    from supemb.data.synthetic_eeg import make_eeg_dataset
    from supemb.data.synthetic_webcam import make_webcam_dataset

    out = work / f"{name}-fresh"
    original = work / name / "data" / "labels.csv"
    if (out / "labels.csv").is_file():  # made before: kept if it holds n fresh inputs
        with (out / "labels.csv").open() as f:
            if sum(r["split"] == "test" for r in csv.DictReader(f)) != n:
                shutil.rmtree(out)
    if not (out / "labels.csv").is_file():
        gen = out / "generated"
        if kind == "webcam":
            made = make_webcam_dataset(gen, n, n_cameras=C.WEBCAM["n_cameras"], size=C.WEBCAM["size"],
                                       seed=FRESH_SEED)
        else:
            made = make_eeg_dataset(gen, n, duration_s=C.EEG_DURATION_S, sfreq=C.EEG_SFREQ,
                                    seed=FRESH_SEED) / "labels.csv"
        with original.open() as f:
            kept = [r for r in csv.DictReader(f) if r["split"] in ("train", "val")]
        with made.open() as f:
            new = [{**r, "split": "test"} for r in csv.DictReader(f)]
        for rows, root in ((kept, original.parent), (new, made.parent)):
            for r in rows:
                r["path"] = str((root / r["path"]).resolve())
        with (out / "labels.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(kept[0]))
            writer.writeheader()
            writer.writerows(kept + new)
    return out / "labels.csv" if kind == "webcam" else out  # as evidence.py passes --data


def task_errors(name: str, work: Path, fresh: int = 0, kind: str | None = None) -> dict[str, Any]:
    """Per seed, {"val"|"test"|"fresh": {(side, what): |error| per input}} of every table row,
    with the recomputed test MAEs checked against the trainer's final figures; "fresh": on
    `fresh` new test inputs (`fresh_data`; none when 0). The runs are WORK/NAME/LOSS-sSEED;
    kind: the task in `evidence.TASKS` (default: NAME)."""
    task = E.TASKS[kind or name]
    c_loss, p_loss = task["losses"]
    seeds = [s for s in seeds_of(work / name, c_loss) if s in seeds_of(work / name, p_loss)]
    if not seeds:
        raise SystemExit(f"{work / name}: no finished {c_loss}-sN and {p_loss}-sN runs (run experiments/evidence.py)")
    per_seed, worst = [], 0.0
    for seed in seeds:
        runs = {loss: C.load_run(work / name / f"{loss}-s{seed}") for loss in task["losses"]}
        for split in ("val", "test"):
            if not np.array_equal(runs[c_loss].split(split).targets, runs[p_loss].split(split).targets):
                raise SystemExit(f"{work / name}: seed {seed}: the two runs' {split} splits differ; cannot pair them")
        rows = E.predictors(kind or name, runs)
        for side, loss in (("contrastive", c_loss), ("plain", p_loss)):
            rows[side, "served"] = served_predictor(runs[loss])
        side_loss = {"contrastive": c_loss, "plain": p_loss}
        errors: dict[str, dict[tuple[str, str], np.ndarray]] = {"val": {}, "test": {}}
        for split in errors:
            feats = {loss: run.features(split) for loss, run in runs.items()}
            for row, predict in rows.items():
                run = runs[side_loss[row[0]]]
                errors[split][row] = run.errors(predict(feats[side_loss[row[0]]]), split)
        if fresh:
            data = fresh_data(name, work, fresh, kind or name)
            again = {loss: C.load_run(work / name / f"{loss}-s{seed}", data=data) for loss in task["losses"]}
            for loss in again:  # the same training split: the kNN gallery and the probe do not change
                if not np.array_equal(again[loss].split("train").targets, runs[loss].split("train").targets):
                    raise SystemExit(f"{data}: its train split is not the evidence run's")
            errors["fresh"] = {}
            feats = {loss: run.features("test") for loss, run in again.items()}
            for row, predict in rows.items():
                errors["fresh"][row] = again[side_loss[row[0]]].errors(predict(feats[side_loss[row[0]]]), "test")
        for row, err in errors["test"].items():
            final = json.loads((work / name / f"{side_loss[row[0]]}-s{seed}" / "metrics.jsonl")
                               .read_text().splitlines()[-1])
            ref = final.get(E._key(task, "test", row[1]))
            if ref is not None:
                worst = max(worst, abs(float(err.mean()) - ref))
        per_seed.append(errors)
    if worst > 1e-3:
        print(f"WARNING: {name}: recomputed test MAEs differ from the trainer's by up to {worst:.3g}", file=sys.stderr)
    return {"seeds": seeds, "errors": per_seed, "check_max_abs_diff": worst}


def served_predictor(run: C.LoadedRun) -> Any:
    """What the run's bundle serves for a value, as a function of raw features: the residual kNN
    model.json records (`knn_residual`), or plain kNN (a run that chose it, or one trained before
    the residual kNN: its bundle serves plain kNN)."""
    from supemb.train.selection import residual_predict

    train_feats, y = run.features("train"), run.split("train").targets
    r = run.meta.get("knn_residual")
    if r:
        return lambda feats: residual_predict(r, train_feats, y, feats, run.metric)
    return lambda feats: run.knn_predict(train_feats, feats)


def choose(errors: list[dict], side: str, how: str, test_set: str,
           rows: tuple[tuple[str, str], ...] = E.ROWS + E.SERVED_ROWS) -> list[tuple[str, str]]:
    """Each seed's row for `side` under comparison `how`, judged on `test_set` (the served rows
    take part as in evidence.md, where the errors have them; a tie goes to the first of `rows`)."""
    rows = [row for row in rows if row[0] == side and all(row in e[test_set] for e in errors)]
    if how in ("knn", "served"):
        return [(side, how)] * len(errors)
    if how == "evidence":  # one row for every seed: the lowest MAE on the test inputs averaged over the seeds
        best = min(rows, key=lambda r: np.mean([e[test_set][r].mean() for e in errors]))
        return [best] * len(errors)
    return [min(rows, key=lambda r: e["val"][r].mean()) for e in errors]


def bootstrap(c: np.ndarray, p: np.ndarray, draws: int, rng: np.random.Generator) -> dict[str, Any]:
    """c, p: |errors| [seeds, n] of the two sides on the same n test inputs -> the ratio of
    their MAEs (averaged over seeds), its percentile interval over paired draws of the inputs,
    and the share of draws with the contrastive side ahead."""
    cbar, pbar = c.mean(0), p.mean(0)
    n = len(cbar)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=draws).astype(np.float64)  # [draws, n]
    ratios = (counts @ cbar) / (counts @ pbar)
    lo, hi = np.quantile(ratios, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return {"n_inputs": int(n), "mae_contrastive": float(cbar.mean()), "mae_plain": float(pbar.mean()),
            "ratio": float(cbar.mean() / pbar.mean()), "low": float(lo), "high": float(hi),
            "share_contrastive_ahead": float(np.mean(ratios < 1.0)),
            "per_seed_ratio": [float(a.mean() / b.mean()) for a, b in zip(c, p)]}


def analyse(name: str, work: Path, draws: int, fresh: int, kind: str | None = None,
            reference: bool = False) -> dict[str, Any]:
    """Each comparison on the evidence's test split ("test") and, with `fresh`, on fresh test
    inputs ("fresh"); kind: as for `task_errors`. reference (webcam, with `fresh`): also
    supemb against the plain reference script on the fresh inputs (`against_reference`)."""
    got = task_errors(name, work, fresh, kind)
    errors = got["errors"]
    out: dict[str, Any] = {"seeds": got["seeds"], "check_max_abs_diff": got["check_max_abs_diff"]}
    for test_set in ("test", "fresh") if fresh else ("test",):
        out[test_set] = {}
        for how in COMPARISONS:
            rng = np.random.default_rng([BOOTSTRAP_SEED, zlib.crc32(name.encode())])  # the same draws for each
            picks = {side: choose(errors, side, how, test_set) for side in ("contrastive", "plain")}
            c = np.stack([e[test_set][r] for e, r in zip(errors, picks["contrastive"])])
            p = np.stack([e[test_set][r] for e, r in zip(errors, picks["plain"])])
            out[test_set][how] = {**bootstrap(c, p, draws, rng),
                                  **{f"{side}_rows": [r[1] for r in rows] for side, rows in picks.items()}}
    if reference and fresh:
        out["reference"] = against_reference(work, got, draws)
    return out


def reference_errors(work: Path, seeds: list[int], data: Path, epochs: int) -> list[dict]:
    """Per seed, {"val"|"fresh": {("reference", LOSS_WHAT): |error| per image}} of
    experiments/plain_reference.py trained with that seed on `data` (the evidence's train and
    val rows, the fresh test rows: `fresh_data`) for `epochs`. Its JSON is kept as
    WORK/webcam/reference-fresh-LOSS-sSEED.json and reused."""
    import subprocess

    per_seed = []
    for seed in seeds:
        errors: dict[str, dict[tuple[str, str], np.ndarray]] = {"val": {}, "fresh": {}}
        for loss, whats in REFERENCE_ROWS.items():
            path = work / "webcam" / f"reference-fresh-{loss}-s{seed}.json"
            if not path.is_file():
                print(f"== the plain reference script: {loss}, seed {seed}", flush=True)
                subprocess.run([sys.executable, str(C.ROOT / "experiments" / "plain_reference.py"), str(data),
                                "--target", "temperature", "--loss", loss, "--epochs", str(epochs),
                                "--seed", str(seed), "--json", str(path)], check=True, stdout=subprocess.DEVNULL)
            r = json.loads(path.read_text())
            for what in whats:
                errors["val"]["reference", f"{loss}_{what}"] = np.asarray(r[f"{what}_val_errors"])
                errors["fresh"]["reference", f"{loss}_{what}"] = np.asarray(r[f"{what}_test_errors"])
        per_seed.append(errors)
    return per_seed


def against_reference(work: Path, got: dict[str, Any], draws: int) -> dict[str, Any]:
    """supemb's RnC and L1 (the evidence runs) against the plain reference script's, on the fresh
    webcam inputs, paired per image; ratio = supemb's MAE over the reference's."""
    data = work / "webcam-fresh" / "labels.csv"
    with open(data, newline="") as f:
        fresh_targets = [float(r["temperature"]) for r in csv.DictReader(f) if r["split"] == "test"]
    ours = C.load_run(work / "webcam" / f"rnc-s{got['seeds'][0]}", data=data)
    if not np.allclose(ours.split("test").targets, fresh_targets):
        raise SystemExit(f"{data}: supemb's test rows are not in the CSV's order; cannot pair them")
    ref = reference_errors(work, got["seeds"], data, ours.cfg.epochs)  # the evidence runs' epochs
    return reference_comparisons(got["errors"], ref, draws)


def reference_comparisons(errors: list[dict], ref: list[dict], draws: int) -> dict[str, Any]:
    """errors: `task_errors`' per-seed errors (with "fresh"); ref: `reference_errors`' -> per loss
    (rnc: supemb's contrastive rows, l1: its plain rows) and comparison, supemb over the reference."""
    out: dict[str, Any] = {}
    for loss, side in (("rnc", "contrastive"), ("l1", "plain")):
        rows = tuple(r for r in E.ROWS + E.SERVED_ROWS if r[0] == side) + tuple(
            ("reference", f"{loss}_{w}") for w in REFERENCE_ROWS[loss])
        both = [{split: {**e[split], **r[split]} for split in ("val", "fresh")} for e, r in zip(errors, ref)]
        out[loss] = {}
        for how in ("evidence", "validation", "knn"):
            rng = np.random.default_rng([BOOTSTRAP_SEED, zlib.crc32(f"reference-{loss}".encode())])
            if how == "knn":
                picks = {"ours": [(side, "knn")] * len(both), "reference": [("reference", f"{loss}_knn")] * len(both)}
            else:
                picks = {"ours": choose(both, side, how, "fresh", rows),
                         "reference": choose(both, "reference", how, "fresh", rows)}
            b = bootstrap(*(np.stack([e["fresh"][r] for e, r in zip(both, picks[k])]) for k in picks), draws, rng)
            out[loss][how] = {"n_inputs": b["n_inputs"], "mae_supemb": b["mae_contrastive"],
                              "mae_reference": b["mae_plain"], "ratio": b["ratio"], "low": b["low"],
                              "high": b["high"], "share_supemb_ahead": b["share_contrastive_ahead"],
                              "per_seed_ratio": b["per_seed_ratio"], "supemb_rows": [r[1] for r in picks["ours"]],
                              "reference_rows": [r[1] for r in picks["reference"]]}
    return out


def brief(comparisons: dict[str, dict]) -> str:
    """One line for the console: {comparison: [ratio, low, high]}."""
    return json.dumps({k: [round(c["ratio"], 3), round(c["low"], 3), round(c["high"], 3)]
                       for k, c in comparisons.items()})


SHORT = {("contrastive", "knn"): "kNN", ("contrastive", "linear"): "stage-2 head", ("plain", "head"): "own head",
         ("plain", "linear"): "probe", ("plain", "knn"): "kNN", ("contrastive", "served"): "served",
         ("plain", "served"): "served"}


def _rows_cell(task: dict, side: str, whats: list[str]) -> str:
    """The row a side used: its table label, or the row of each seed where they differ."""
    name = task["names"][0 if side == "contrastive" else 1]
    if whats and set(whats) == {"served"}:
        return f"{name}, as its bundle serves it"
    if len(set(whats)) == 1:
        return E._row_label(task, side, whats[0])
    return f"{name}: " + ", ".join(f"{SHORT[side, w]} (seed {i})" for i, w in enumerate(whats))


def table(task: dict, comparisons: dict, unit: str) -> list[str]:
    lines = [f"| comparison | contrastive | plain | MAE ({task['unit']}) | ratio | {LEVEL:.0%} interval | "
             "draws with contrastive ahead | ratio per seed |", "|---|---|---|---:|---:|---:|---:|---|"]
    for how, c in comparisons.items():
        lines.append(
            f"| {COMPARISONS[how]} | {_rows_cell(task, 'contrastive', c['contrastive_rows'])} | "
            f"{_rows_cell(task, 'plain', c['plain_rows'])} | {c['mae_contrastive']:.2f} vs {c['mae_plain']:.2f} | "
            f"{c['ratio']:.3f} | {c['low']:.3f}–{c['high']:.3f} | {c['share_contrastive_ahead']:.0%} | "
            f"{', '.join(f'{x:.3f}' for x in c['per_seed_ratio'])} |")
    lines.append("")
    for how, c in comparisons.items():
        ahead = "contrastive" if c["high"] < 1 else "plain"
        lines.append(f"- {COMPARISONS[how]}: " + (
            f"the interval holds 1: {c['n_inputs']} test {unit} cannot tell the two apart."
            if c["low"] <= 1.0 <= c["high"] else
            f"the interval excludes 1: {ahead} training is ahead by more than the test sample explains."))
    return lines + [""]


def reference_table(ref: dict[str, dict], inputs: str) -> list[str]:
    names = {"rnc": "RnC", "l1": "L1"}
    shown = {"knn": "kNN", "head": "own head", "ridge": "ridge probe", "served": "as served"}

    def cell(loss: str, whats: list[str]) -> str:  # e.g. "kNN", or "per seed: kNN, ridge probe, kNN"
        linear = "stage-2 head" if loss == "rnc" else "converged probe"
        names = [shown.get(w.split("_")[-1], linear) for w in whats]
        return names[0] if len(set(names)) == 1 else "per seed: " + ", ".join(names)

    lines = [f"**supemb against the plain reference script** (`experiments/plain_reference.py`, trained with the "
             f"same seeds on the same training split) on the {inputs}; ratio = supemb's MAE over the "
             "reference's, paired per image; below 1: supemb ahead. \"kNN against kNN\": supemb's served kNN "
             "(k and temperature chosen on validation) against the script's fixed one (10 neighbours).", "",
             "| loss | comparison | supemb | reference | MAE (°C) | ratio | 95% interval | draws with supemb ahead "
             "| ratio per seed |", "|---|---|---|---|---:|---:|---:|---:|---|"]
    for loss, comparisons in ref.items():
        for how, c in comparisons.items():
            lines.append(f"| {names[loss]} | {COMPARISONS[how]} | {cell(loss, c['supemb_rows'])} | "
                         f"{cell(loss, c['reference_rows'])} | {c['mae_supemb']:.2f} vs {c['mae_reference']:.2f} | "
                         f"{c['ratio']:.3f} | {c['low']:.3f}–{c['high']:.3f} | {c['share_supemb_ahead']:.0%} | "
                         f"{', '.join(f'{x:.3f}' for x in c['per_seed_ratio'])} |")
    lines.append("")
    for loss, comparisons in ref.items():
        for how, c in comparisons.items():
            lines.append(f"- {names[loss]}, {COMPARISONS[how]}: " + (
                "the interval holds 1: supemb and the script are tied on these inputs."
                if c["low"] <= 1.0 <= c["high"] else
                f"the interval excludes 1: {'supemb' if c['high'] < 1 else 'the script'} is ahead."))
    return lines + [""]


def write_markdown(record: dict, docs: Path) -> Path:
    run = record["runs"][-1]
    lines = C.record_header("Can the test sets tell the two apart?", "significance", record)
    lines += [f"From the finished evidence runs in `{run['work']}` (not retrained). Paired bootstrap over "
              f"the test inputs, {run['draws']:,} draws (seed {BOOTSTRAP_SEED}); ratio = the contrastive side's "
              "MAE over the plain side's, each averaged over the training seeds; below 1: contrastive ahead. "
              f"The {LEVEL:.0%} interval is how far the ratio could move on another test set of the same size "
              "from the same source; it leaves out the spread over training seeds, listed beside it.", ""]
    for name in TASK_NAMES:
        if name not in run["tasks"]:
            continue
        task, r = E.TASKS[name], run["tasks"][name]
        unit = "recordings" if task["level"] else "images"
        lines += [f"## {task['title']}", "", *C.kept_line(r),
                  f"Seeds {', '.join(map(str, r['seeds']))}; the recomputed test MAEs "
                  f"match the trainer's to {r['check_max_abs_diff']:.1g} {task['unit']}.", "",
                  f"**The evidence's test split** ({next(iter(r['test'].values()))['n_inputs']} {unit}):", ""]
        lines += table(task, r["test"], unit)
        if "fresh" in r:
            fresh = next(iter(r["fresh"].values()))["n_inputs"]
            what = (f"new frames of the same {C.WEBCAM['n_cameras']} cameras" if name == "webcam" else "new subjects")
            lines += [f"**{fresh:,} fresh test {unit}** from the same generator (seed {FRESH_SEED}: {what}), through "
                      "the same models, galleries and probes:", ""]
            lines += table(task, r["fresh"], unit)
        if "reference" in r:
            lines += reference_table(r["reference"], f"{fresh:,} fresh test {unit}")
    return C.write_doc(docs / "significance.md", lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/evidence-cal", help="an experiments/evidence.py --work directory")
    ap.add_argument("--draws", type=int, default=10_000)
    ap.add_argument("--no-fresh", action="store_true", help="only the evidence's own test splits")
    ap.add_argument("--no-reference", action="store_true",
                    help="skip supemb against the plain reference script (which trains it: 6 runs)")
    ap.add_argument("--docs-dir", default=str(C.ROOT / "docs"))
    ap.add_argument("--keep-others", action="store_true",
                    help="keep the latest recorded figures of the tasks --work has no runs of (evidence.py --only)")
    args = ap.parse_args()
    machine = C.machine()  # at the start: its load average is the other jobs', its date when the run began
    work, docs = Path(args.work), Path(args.docs_dir)
    tasks = {name: analyse(name, work, args.draws, 0 if args.no_fresh else FRESH[name],
                           reference=name == "webcam" and not args.no_reference)
             for name in TASK_NAMES if (work / name).is_dir()}
    if not tasks:
        raise SystemExit(f"{work}: no webcam/ or eeg/ runs (run experiments/evidence.py --work {work})")
    for name, r in tasks.items():
        for test_set in (t for t in ("test", "fresh") if t in r):
            print(name, test_set, brief(r[test_set]), flush=True)
        for loss, comparisons in r.get("reference", {}).items():
            print(name, f"fresh, supemb {loss} / reference {loss}", brief(comparisons), flush=True)
    docs.mkdir(parents=True, exist_ok=True)
    if args.keep_others:  # the tasks this work folder lacks stay, marked with the run they come from
        tasks = C.keep_earlier(docs / "significance.json", "tasks", tasks, TASK_NAMES)
    C.append_run(docs / "significance.json", {"machine": machine, "work": str(work), "draws": args.draws,
                                              "tasks": tasks}, write_markdown)


if __name__ == "__main__":
    main()
