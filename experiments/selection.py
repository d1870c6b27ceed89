"""Which rule should choose the kNN size and temperature: a split-half study inside validation.

    .venv/bin/python experiments/selection.py --runs runs/evidence-cal [--halves 200] [--docs-dir DIR] [--only TASK]

For every main-table run of an experiments/evidence.py work folder (webcam, EEG, digits;
contrastive and plain; each seed), every kNN setting of the grid `supemb.train.selection`
searches (metric, k, temperature) scores each validation input as the trainer scores it
(`Targets.item_scores`: minus the absolute error, or 1/0 for a class; an EEG recording
with its windows pooled). Then, over random halvings of the validation inputs,
each rule chooses on one half and is scored on the other:
- "today": the metric and k of the best mean score, then the broadest temperature within
  one standard error of the best (`choose_knn`);
- "k by one SE": the best's metric, then the largest k and broadest temperature within one
  standard error of the best (fewer, more stable choices?).
Nothing here reads a test split. Appends the run to DOCS/selection.json and writes
DOCS/selection.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # experiments/_common.py, however this file is loaded
import _common as C  # noqa: E402

TASKS = ("webcam", "eeg", "digits")


def score_matrix(t: Any) -> tuple[list[tuple[str, int, float]], np.ndarray]:
    """(settings, scores [settings, val inputs]) of a loaded run's trainer `t`: the grid
    `supemb.train.selection.knn_grid` searches, scored per input as the trainer scores it."""
    from supemb.train.config import METRICS
    from supemb.train.selection import knn_grid

    (gf, gt, _), (vf, vt, vg) = t.frozen_split("train"), t.frozen_split("val")
    grid = knn_grid(gf, gt, vf, lambda pred: t.targets.item_scores(pred, vt, vg), task=t.cfg.task,
                    n_classes=t.n_classes, metrics_tried=[t.cfg.served_metric] if t.cfg.served_metric else METRICS)
    return [(m, k, temp) for m, k, temp, _ in grid], np.array([items for *_, items in grid])


def pick(settings: list[tuple[str, int, float]], scores: np.ndarray, rule: str) -> int:
    """The setting `rule` chooses from per-input `scores` [settings, inputs]."""
    from supemb.train.selection import within_one_se

    best = int(np.argmax(scores.mean(axis=1)))  # ties keep the earlier, as choose_knn does
    metric, k, _ = settings[best]
    same_k = rule == "today"
    near = [i for i, (m, kk, _) in enumerate(settings)
            if m == metric and (kk == k or not same_k) and within_one_se(scores[best], scores[i])]
    widest_k = max(settings[i][1] for i in near)
    return max((i for i in near if settings[i][1] == widest_k), key=lambda i: settings[i][2])


RULES = ("today", "k by one SE")


def study(run_dir: Path, halves: int) -> dict[str, Any]:
    settings, scores = score_matrix(C.load_run(run_dir).trainer)
    n = scores.shape[1]
    rng = np.random.default_rng(0)
    held: dict[str, list[float]] = {rule: [] for rule in RULES}
    for _ in range(halves):
        order = rng.permutation(n)
        choose, judge = order[: n // 2], order[n // 2:]
        for rule in RULES:
            held[rule].append(float(scores[pick(settings, scores[:, choose], rule), judge].mean()))
    diff = np.array(held["k by one SE"]) - np.array(held["today"])
    return {"inputs": n, **{rule: float(np.mean(v)) for rule, v in held.items()},
            "difference": float(diff.mean()), "difference_se": float(diff.std(ddof=1) / np.sqrt(len(diff))),
            "chosen_on_all": {rule: list(settings[pick(settings, scores, rule)]) for rule in RULES}}


def write_markdown(record: dict, docs: Path) -> Path:
    last = record["runs"][-1]
    lines = C.record_header("Selection: which rule chooses the kNN size and temperature", "selection", record) + [
        f"Runs: {_runs_line(last)} (experiments/evidence.py's main tables). Each rule chooses on one random half "
        f"of a run's validation inputs and is scored on the other half, over {last['halves']} halvings; no test "
        "split is read. Scores: minus the mean absolute error (values; EEG per recording) or accuracy (classes); "
        "higher is better. *today*: the best k, then the broadest temperature within one standard error "
        "(`supemb.train.selection`). *k by one SE*: the largest k, then the broadest temperature, within one "
        "standard error of the best.", "",
        "| task | loss | mean difference, k by one SE − today (over seeds) |", "|---|---|---:|"]
    better = []
    for task, runs in last["tasks"].items():
        for loss in sorted({name.rsplit("-s", 1)[0] for name in runs}):
            diff = float(np.mean([r["difference"] for name, r in runs.items() if name.rsplit("-s", 1)[0] == loss]))
            lines.append(f"| {task} | {loss} | {diff:+.4f} |")
            if diff > 0:
                better.append(f"{task} {loss}")
    verdict = (f"k by one SE scored better on average for {', '.join(better)}; today's rule for the rest."
               if better else "Today's rule scored at least as well everywhere.")
    lines += [
        "", f"Above 0: choosing k by one standard error as well scored better on the held-back half. {verdict} "
        "Per run:", "",
        "| task | run | validation inputs | today | k by one SE | difference (SE of its mean over the "
        "overlapping halvings) "
        "| chosen on all of validation: today | k by one SE |",
        "|---|---|---:|---:|---:|---:|---|---|"]
    for task, runs in last["tasks"].items():
        for name, r in runs.items():
            chosen = [f"{m}, k {k}, t {t:.3g}" for m, k, t in (r["chosen_on_all"][rule] for rule in RULES)]
            lines.append(f"| {task} | {name} | {r['inputs']} | {r['today']:.4f} | {r['k by one SE']:.4f} | "
                         f"{r['difference']:+.4f} ({r['difference_se']:.4f}) | {chosen[0]} | {chosen[1]} |")
    out = docs / "selection.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def kept_rows(prev: dict, only: list[str]) -> dict[str, Any]:
    """The rows of the tasks not in `only` from the recorded run `prev`: {"tasks", "task_runs", "kept"}
    (where each task's runs were, and the date of the run that studied them, carried across later --only runs)."""
    out: dict[str, Any] = {"tasks": {}, "task_runs": {}, "kept": {}}
    for task, rows in prev.get("tasks", {}).items():
        if task not in only:
            out["tasks"][task] = rows
            out["task_runs"][task] = prev.get("task_runs", {}).get(task, prev["runs"])
            out["kept"][task] = prev.get("kept", {}).get(task, prev["machine"]["date"])
    return out


def _runs_line(run: dict) -> str:
    """Which evidence work folder each task's runs came from (records before --only have one for all)."""
    where = run.get("task_runs") or {task: run["runs"] for task in run["tasks"]}
    folders = sorted(set(where.values()))
    if len(folders) == 1:
        return f"`{folders[0]}`"
    kept = run.get("kept", {})
    return "; ".join(f"`{f}` ({', '.join(t for t in where if where[t] == f)})" for f in folders) + "".join(
        f"; the {t} rows are kept from the run of {d}" for t, d in kept.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="an experiments/evidence.py --work folder")
    ap.add_argument("--halves", type=int, default=200)
    ap.add_argument("--docs-dir", default=str(C.ROOT / "docs"))
    ap.add_argument("--only", choices=TASKS, action="append",
                    help="study only these tasks' runs (repeatable); the others are kept from the latest recorded run")
    args = ap.parse_args()
    root = Path(args.runs)
    Path(args.docs_dir).mkdir(parents=True, exist_ok=True)
    run: dict[str, Any] = {"machine": C.machine(), "runs": str(root), "halves": args.halves, "tasks": {},
                           "task_runs": {}}
    if args.only:  # the other tasks' rows (and where they came from) stay those of the latest run
        prev = (C.load_json(Path(args.docs_dir) / "selection.json").get("runs") or [{}])[-1]
        run.update(kept_rows(prev, args.only))
    for task in TASKS:
        if args.only and task not in args.only:
            continue
        for run_dir in sorted((root / task).glob("*-s[0-9]*")):
            if run_dir.is_dir() and "-f0" not in run_dir.name:  # the main table's runs, not the data fractions
                r = run["tasks"].setdefault(task, {})[run_dir.name] = study(run_dir, args.halves)
                print(f"{task:7s} {run_dir.name:10s} today {r['today']:.4f}  k by one SE {r['k by one SE']:.4f}",
                      flush=True)
        if task in run["tasks"]:
            run["task_runs"][task] = str(root)
        elif args.only:
            sys.exit(f"{root / task}: no evidence runs (<loss>-s<seed> folders) to study")
    if not run["tasks"]:
        sys.exit(f"{root}: no evidence runs (<task>/<loss>-s<seed> folders) to study")
    C.append_run(Path(args.docs_dir) / "selection.json", run, write_markdown)


if __name__ == "__main__":
    main()
