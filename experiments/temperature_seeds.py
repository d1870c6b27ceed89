"""Is a temperature study's pick more than one seed's luck? The same study, more training seeds.

    .venv/bin/python experiments/temperature_seeds.py --study rnc-eeg --temps 1 5 --seeds 1 2 [--work DIR]

experiments/temperature.py trains one seed (0) per temperature. This trains
the temperatures `--temps` of one of its studies (`temperature.STUDIES`: the
same data, split and package defaults) at the training seeds `--seeds`, and
sets them beside seed 0 from DOCS/temperature.json: per temperature, the
validation figure per seed and its mean (min–max). The test figure is
reported, never used to choose. Appends the run to DOCS/temperature-seeds.json
and rewrites DOCS/temperature-seeds.md (DOCS: docs/ unless --docs-dir).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import temperature as T  # noqa: E402


def _figures(p: dict, loss: str) -> dict[str, float]:
    """One study point's figures: validation (and, for SupCon, its tie-break MAP@R) and test."""
    key = "val_knn_acc" if loss == "supcon" else "val_knn_mae"
    out = {"val": p[key], "test": p[key.replace("val", "test")]}
    if loss == "supcon":  # validation accuracy ties are broken by MAP@R (experiments/temperature.py)
        out["map"] = p["val_map_at_r"]
    return out


def seed_rows(study: str, temps: list[float], seeds: list[int], work: Path, seed0: dict) -> dict[str, Any]:
    """{temperature: {seed: {val, test (, map)}}} for `seeds` (trained here) and seed 0 (from `seed0`)."""
    loss = T.STUDIES[study][0]
    rows: dict[str, dict[str, dict[str, float]]] = {f"{t:g}": {} for t in temps}
    for p in seed0.get(study, {}).get("points", []):
        if f"{p['temperature']:g}" in rows:
            rows[f"{p['temperature']:g}"]["0"] = _figures(p, loss)
    data_kw = T._data(study, work, quick=False)
    for seed in seeds:
        r = T.study(loss, work / f"seed{seed}", tuple(temps), None, data_kw, seed=seed)
        for p in r["points"]:
            rows[f"{p['temperature']:g}"][str(seed)] = _figures(p, loss)
    return rows


def merged(record: dict, study: str) -> tuple[dict, list[str], list[dict]]:
    """One study over every recorded run of it: ({temperature: {seed: figures}}, the seeds in order,
    those runs); a seed trained again is the later run's."""
    runs = [r for r in record["runs"] if r["study"] == study]
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for r in runs:
        for t, per_seed in r["rows"].items():
            rows.setdefault(t, {}).update(per_seed)
    seeds = sorted({s for per_seed in rows.values() for s in per_seed}, key=int)
    return rows, seeds, runs


def _mean_range(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def study_section(record: dict, study: str) -> list[str]:
    rows, seeds, runs = merged(record, study)
    supcon = T.STUDIES[study][0] == "supcon"
    figure = ("val kNN accuracy, and val MAP@R, the study's tie-break" if supcon
              else f"val kNN MAE ({T.UNITS[study]})")
    commands = "; ".join(f"`{r['machine']['command']}`" for r in runs)
    lines = [f"## {T.STUDIES[study][1]}", "", f"Reproduce with {commands} (seed 0 from docs/temperature.json, "
             "the study's own run).", *(C.machine_line(r["machine"]) for r in runs), "",
             f"Same data, split and defaults as docs/temperature.md; only the training seed changes. {figure}; "
             "the test column is reported, never used to choose.", "",
             "| τ | " + " | ".join(f"val, seed {s}" for s in seeds) + " | val mean (min–max) | "
             + ("val MAP@R mean (min–max) | " if supcon else "") + "test mean |",
             "|---:|" + "---:|" * (len(seeds) + 2 + supcon)]
    for t, per_seed in rows.items():
        have = [s for s in seeds if s in per_seed]
        cells = [f"{per_seed[s]['val']:.3f}" if s in per_seed else "–" for s in seeds]
        maps = [_mean_range([per_seed[s]["map"] for s in have])] if supcon else []
        lines.append(f"| {t} | " + " | ".join([*cells, _mean_range([per_seed[s]["val"] for s in have]), *maps,
                                               f"{np.mean([per_seed[s]['test'] for s in have]):.3f}"]) + " |")
    return lines + [""]


def write_markdown(record: dict, docs: Path) -> Path:
    studies = list(dict.fromkeys(r["study"] for r in record["runs"]))
    lines = ["# Temperature: the studies' picks over more training seeds", "",
             "Every run is appended to docs/temperature-seeds.json (`experiments/temperature_seeds.py`). A "
             "temperature is clearly ahead only where its validation range does not overlap the other's; "
             "otherwise the difference is within the seed spread.", ""]
    for study in studies:
        lines += study_section(record, study)
    return C.write_doc(docs / "temperature-seeds.md", lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", choices=list(T.STUDIES), required=True)
    ap.add_argument("--temps", type=float, nargs="+", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", required=True, help="training seeds besides 0")
    ap.add_argument("--work", default="runs/temperature-seeds", help="where data and runs go (must be empty or new)")
    ap.add_argument("--docs-dir", default=str(C.ROOT / "docs"))
    args = ap.parse_args()
    docs = Path(args.docs_dir)
    docs.mkdir(parents=True, exist_ok=True)
    seed0 = C.load_json(docs / "temperature.json")
    machine = C.machine()  # at the start: its load average is the other jobs'
    rows = seed_rows(args.study, args.temps, args.seeds, C.fresh_work(Path(args.work)), seed0)
    seeds = [str(s) for s in sorted({0, *args.seeds})]
    C.append_run(docs / "temperature-seeds.json",
                 {"machine": machine, "study": args.study, "seeds": seeds, "rows": rows}, write_markdown)


if __name__ == "__main__":
    main()
