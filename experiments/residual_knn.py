"""What the bundles serve for values: plain kNN, or kNN on the residuals of a linear head
(`supemb.train.selection.choose_residual`), measured on the finished evidence runs.

    .venv/bin/python experiments/residual_knn.py [--work runs/evidence-cal] [--heldout runs/heldout]
        [--halves 100] [--only NAME ...] [--docs-dir DIR]

For every main-table run of an experiments/evidence.py work folder (webcam and EEG; RnC and
L1; each seed), in the geometry the run serves (`model.json` "metric"), predictors that need
nothing but what a bundle holds (the gallery's embeddings and targets):
- "kNN": plain kNN with the run's k and temperature;
- "ridge": a ridge head fitted on the gallery's served embeddings (strength chosen on
  validation, `supemb.train.probe.fit_ridge`);
- "residual kNN": that head plus kNN on the gallery's residuals (target minus the head's
  value; `fit_residual`, k and temperature chosen by the trainer's rule);
- "served": the residual kNN where `choose_residual` prefers it on validation, else kNN:
  what a run trained today records in model.json and its bundle serves.
Each is measured on validation, the evidence's test split and the fresh test inputs of
`experiments/significance.py` (WORK/TASK-fresh; made there, or here when missing). EEG
figures are per recording (window predictions averaged). The same, on validation and test,
for the runs of `experiments/heldout.py` (sets the defaults were not chosen on). And, inside
validation only, which rule should choose between the two (`rule_study`). Nothing is
retrained. `--only` analyses only the named tasks and held-out sets; the others keep the latest
recorded run's figures, each marked with the run that made them. Appends the run to
DOCS/residual_knn.json and writes DOCS/residual_knn.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # experiments/*.py, however this file is loaded
import _common as C  # noqa: E402
import evidence as E  # noqa: E402
import significance as S  # noqa: E402

PREDICTORS = ("knn", "ridge", "residual", "served")
LABELS = {"knn": "kNN", "ridge": "ridge head on the served embedding",
          "residual": "ridge head + kNN on its residuals",
          "served": "served: residual kNN where validation prefers it, else kNN"}
SETS = ("val", "test", "fresh")
NAMES = {"rnc": "RnC", "l1": "L1"}


def run_figures(run: C.LoadedRun, fresh: C.LoadedRun | None) -> dict[str, dict[str, float]]:
    """{predictor: {set: MAE}} of one finished run (`fresh`: the same run on the fresh data, or None)."""
    from supemb.predict.neighbours import embedding_array
    from supemb.train import probe
    from supemb.train.selection import choose_residual, fit_residual, residual_predict

    feats = {s: run.features(s) for s in ("train", "val", "test")}
    sets = SETS if fresh is not None else SETS[:2]
    if fresh is not None:
        feats["fresh"] = fresh.features("test")
    owner = {"val": (run, "val"), "test": (run, "test"), "fresh": (fresh, "test")}
    mae = lambda pred, s: owner[s][0].mae(pred, owner[s][1])  # noqa: E731
    y = run.split("train").targets
    val = run.split("val")

    def item_scores(pred: np.ndarray) -> np.ndarray:
        return run.trainer.targets.item_scores(pred, val.targets, val.groups)

    served = {s: embedding_array(f, run.metric) for s, f in feats.items()}
    fit = probe.fit_ridge(served["train"], y, served["val"], lambda pred: float(item_scores(pred).mean()))
    r = fit_residual(feats["train"], y, feats["val"], item_scores, metric=run.metric)
    preds = {"knn": {s: run.knn_predict(feats["train"], feats[s]) for s in sets},
             "ridge": {s: (served[s] @ fit.weight.T + fit.bias)[:, 0] for s in sets},
             "residual": {s: residual_predict(r, feats["train"], y, feats[s], run.metric) for s in sets}}
    chosen = choose_residual(feats["train"], y, feats["val"], item_scores, metric=run.metric,
                             k=int(run.meta["knn_k"]), temperature=float(run.meta["knn_temperature"]))
    if "knn_residual" in run.meta and (run.meta["knn_residual"] is None) != (chosen is None):
        raise SystemExit(f"{run.path}: model.json's knn_residual disagrees with choose_residual on the same inputs")
    preds["served"] = preds["residual" if chosen else "knn"]
    figures: dict[str, Any] = {p: {s: mae(pred, s) for s, pred in by_set.items()} for p, by_set in preds.items()}
    figures["served"]["which"] = "residual" if chosen else "knn"
    return figures


RULES = ("mean", "one SE", "always", "never")  # how validation picks residual over plain kNN


def rule_study(run: C.LoadedRun, halves: int) -> dict[str, float]:
    """Which rule should pick the residual kNN over plain kNN, judged inside validation: over
    `halves` random halvings of the validation inputs (EEG: recordings), the residual kNN is
    fitted and each rule chooses on one half, and the choice is scored on the other (MAE;
    no test split is read). "mean": the residual where its mean score is higher (today's
    `choose_residual`); "one SE": only where plain kNN is not within one standard error of
    it; "always" / "never". Plain kNN's k and temperature are chosen on the choosing half too
    (`choose_knn`, the run's metric), as the residual's are. Returns {rule: mean MAE on the
    held-back halves}."""
    from supemb.predict.neighbours import embedding_array, nearest_neighbours, neighbour_regress
    from supemb.train.selection import KNN_KS, choose_knn, fit_residual, residual_predict, within_one_se

    feats = {s: run.features(s) for s in ("train", "val")}
    y, val = run.split("train").targets, run.split("val")
    g, q = embedding_array(feats["train"], run.metric), embedding_array(feats["val"], run.metric)
    near, sim = nearest_neighbours(q, g, min(max(KNN_KS), len(g)), metric=run.metric)
    units = np.unique(val.groups) if run.data.plugin.grouped else np.arange(len(val))
    unit_of = val.groups if run.data.plugin.grouped else np.arange(len(val))
    rng = np.random.default_rng(0)
    held: dict[str, list[float]] = {rule: [] for rule in RULES}
    for _ in range(halves):
        order = rng.permutation(units)
        rows = {h: np.flatnonzero(np.isin(unit_of, part)) for h, part in
                (("choose", order[: len(units) // 2]), ("judge", order[len(units) // 2:]))}

        def scores(pred: np.ndarray, h: str) -> np.ndarray:
            return run.trainer.targets.item_scores(pred, val.targets[rows[h]], val.groups[rows[h]])

        r = fit_residual(feats["train"], y, feats["val"][rows["choose"]], lambda p: scores(p, "choose"),
                         metric=run.metric)
        _, k, t = choose_knn(feats["train"], y, feats["val"][rows["choose"]], lambda p: scores(p, "choose"),
                             task="regression", n_classes=0, metrics_tried=[run.metric])
        plain, _ = neighbour_regress(sim[:, :k], y[near[:, :k]], temperature=t)
        resid = residual_predict(r, feats["train"], y, feats["val"], run.metric)
        a_res, a_plain = scores(resid[rows["choose"]], "choose"), scores(plain[rows["choose"]], "choose")
        better = a_res.mean() > a_plain.mean() + 1e-12
        pick = {"mean": better, "one SE": better and not within_one_se(a_res, a_plain), "always": True,
                "never": False}
        for rule, use in pick.items():
            held[rule].append(-float(scores((resid if use else plain)[rows["judge"]], "judge").mean()))
    return {rule: float(np.mean(v)) for rule, v in held.items()}


def analyse(name: str, work: Path, kind: str | None = None, fresh: bool = True, halves: int = 0) -> dict[str, Any]:
    """Every seed's figures of WORK/NAME's runs; kind: the task in `evidence.TASKS` (default NAME);
    fresh: also on `significance.fresh_data`'s fresh inputs."""
    task = E.TASKS[kind or name]
    data = S.fresh_data(name, work, S.FRESH[name], name) if fresh else None
    sets = SETS if fresh else SETS[:2]
    out: dict[str, Any] = {"kind": kind or name, "sides": {}}
    for loss in task["losses"]:
        seeds = S.seeds_of(work / name, loss)
        per_seed = []
        for seed in seeds:
            path = work / name / f"{loss}-s{seed}"
            run = C.load_run(path)
            per_seed.append(run_figures(run, C.load_run(path, data=data) if fresh else None))
            if halves:
                per_seed[-1]["rules"] = rule_study(run, halves)
            print(name, loss, seed, {p: round(per_seed[-1][p][sets[-1]], 3) for p in PREDICTORS},
                  {rule: round(v, 3) for rule, v in per_seed[-1].get("rules", {}).items()}, flush=True)
        out["sides"][loss] = {"seeds": seeds, "per_seed": per_seed,
                              "mean": {p: {s: float(np.mean([r[p][s] for r in per_seed])) for s in sets}
                                       for p in PREDICTORS}}
    return out


def change(side: dict, test_set: str) -> float:
    """The served predictor's MAE relative to plain kNN's on `test_set`, minus 1 (below 0: better)."""
    return side["mean"]["served"][test_set] / side["mean"]["knn"][test_set] - 1


def section(title: str, kind: str, r: dict) -> list[str]:
    """One set's table: each side's predictors, mean MAE over the seeds per split."""
    task = E.TASKS[kind]
    sets = [s for s in SETS if s in next(iter(r["sides"].values()))["mean"]["knn"]]
    lines = [f"## {title}", "", *C.kept_line(r), f"| embedding | predictor | {' | '.join(sets)} | served, per seed |",
             f"|---|---|{'---:|' * len(sets)}---|"]
    for loss, side in r["sides"].items():
        for p in PREDICTORS:
            m = side["mean"][p]
            which = ", ".join(s["served"]["which"] for s in side["per_seed"]) if p == "served" else ""
            lines.append(f"| {NAMES[loss]} | {LABELS[p]} | {' | '.join(f'{m[s]:.2f}' for s in sets)} | {which} |")
    sides = r["sides"]
    if all("rules" in seed for side in sides.values() for seed in side["per_seed"]):
        n = len(next(iter(sides.values()))["per_seed"])
        def rules(side: dict) -> str:
            return ", ".join(f"{rule} {np.mean([x['rules'][rule] for x in side['per_seed']]):.3f}" for rule in RULES)

        lines += ["", f"Which rule should choose, judged inside validation (MAE on the held-back half, mean over "
                  f"{n} seeds; `rule_study`): "
                  + "; ".join(f"{NAMES[loss]} {rules(side)}" for loss, side in sides.items()) + "."]
    c, p = (sides[loss]["mean"]["served"][sets[-1]] for loss in task["losses"])
    return lines + ["", f"MAE in {task['unit']}{', per recording' if kind == 'eeg' else ''}. On the {sets[-1]} "
                    "inputs, what is served against plain kNN: " + "; ".join(
                        f"{NAMES[loss]} {change(side, sets[-1]):+.1%}" for loss, side in sides.items())
                    + f"; served against served, RnC over L1: {c / p:.3f}.", ""]


def write_markdown(record: dict, docs: Path) -> Path:
    run = record["runs"][-1]
    lines = C.record_header("What bundles serve: kNN, or kNN on the residuals of a linear head", "residual_knn",
                            record)
    lines += [f"From the finished evidence runs in `{run['work']}` (not retrained); MAE averaged over the seeds, "
              f"on validation, the evidence's test split and the fresh test inputs of docs/significance.md. "
              "The served row is what `choose_residual` picks on validation; where a run's model.json records "
              "its choice (`knn_residual`, runs trained since the residual kNN), the two are checked to agree.", ""]
    ratios = {rule: [seed["rules"][rule] / seed["rules"]["never"] for group in ("tasks", "heldout")
                     for r in run.get(group, {}).values() for side in r["sides"].values()
                     for seed in side["per_seed"] if "rules" in seed] for rule in RULES}
    if ratios["never"]:
        lines += [f"**Which rule chooses, inside validation** (`rule_study`, {run.get('halves', '')} halvings of "
                  f"each run's validation inputs; no test split read): the held-back half's MAE over plain kNN's "
                  f"(\"never\"), mean over all {len(ratios['never'])} runs below: " + ", ".join(
                      f"{rule} {np.mean(v):.3f} (better in {sum(x < 1 for x in v)})" for rule, v in ratios.items()
                      if rule != "never") + ". The trainer uses \"mean\" (`choose_residual`).", ""]
    for name, r in run["tasks"].items():
        lines += section(E.TASKS[name]["title"], name, r)
    if run.get("heldout"):
        lines += ["# The held-out sets of docs/heldout.md", "",
                  f"The runs in `{run['heldout_work']}`, trained with every default (`experiments/heldout.py`); "
                  "validation and test splits only.", ""]
        for name, r in run["heldout"].items():
            lines += section(name, r["kind"], r)
    return C.write_doc(docs / "residual_knn.md", lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/evidence-cal", help="an experiments/evidence.py --work directory")
    ap.add_argument("--heldout", default="runs/heldout",
                    help="an experiments/heldout.py --work directory (skipped when absent)")
    ap.add_argument("--halves", type=int, default=100, help="validation halvings of `rule_study` (0: skip it)")
    import heldout as H

    ap.add_argument("--only", action="append", choices=[*S.TASK_NAMES, *H.SETS],
                    help="analyse only this task or held-out set (repeatable); the others keep the latest "
                    "run's figures")
    ap.add_argument("--docs-dir", default=str(C.ROOT / "docs"))
    args = ap.parse_args()
    machine = C.machine()  # at the start: its load average is the other jobs', its date when the run began
    work, heldout, docs = Path(args.work), Path(args.heldout), Path(args.docs_dir)
    wanted = lambda name: not args.only or name in args.only  # noqa: E731
    tasks = {name: analyse(name, work, halves=args.halves) for name in S.TASK_NAMES
             if wanted(name) and (work / name).is_dir()}
    if not tasks and any(wanted(n) for n in S.TASK_NAMES):  # `--only` a held-out set needs no evidence runs
        raise SystemExit(f"{work}: no {'/ or '.join(n for n in S.TASK_NAMES if wanted(n))}/ runs "
                         f"(run experiments/evidence.py --work {work})")
    held = {name: analyse(name, heldout, kind=kind, fresh=False, halves=args.halves)
            for name, (kind, _, _) in H.SETS.items() if wanted(name) and (heldout / name).is_dir()}
    if not tasks and not held:
        raise SystemExit(f"{heldout}: none of {', '.join(args.only or [])} there (run experiments/heldout.py)")
    if args.only:  # the other tasks' and sets' figures stay, marked with the run they come from
        tasks = C.keep_earlier(docs / "residual_knn.json", "tasks", tasks, S.TASK_NAMES)
        held = C.keep_earlier(docs / "residual_knn.json", "heldout", held, H.SETS)
    docs.mkdir(parents=True, exist_ok=True)
    C.append_run(docs / "residual_knn.json", {"machine": machine, "work": str(work), "halves": args.halves,
                                              "tasks": tasks,
                                              **({"heldout_work": str(heldout), "heldout": held} if held else {})},
                 write_markdown)


if __name__ == "__main__":
    main()
