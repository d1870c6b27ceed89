"""Helpers shared by experiments/evidence.py and experiments/temperature.py.

- the data sets both use, each with ONE fixed split whatever the training seed
  (the webcam and EEG generators write a `split` column; the digits are
  written as `train|val|test/<class>/` folders);
- `fresh_work` (refuse a non-empty work folder), `timed_train`;
- `machine` (the record written beside every figure);
- `LoadedRun`: a finished run's encoder, data and heads, to embed inputs that
  the trainer never saw (corrupted test items, augmented views) and to
  predict from them with kNN (the served geometry and kNN temperature of
  model.json) or the run's linear head (model.safetensors `linear.*`).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from supemb.preprocess.eeg_augment import as_window

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # benchmarks/_machine.py
from _machine import cpu_model  # noqa: E402  (one definition, shared with the benchmarks)

ROOT = Path(__file__).resolve().parents[1]

# Data shapes (not recipe settings): the same in every experiment that uses the data.
WEBCAM = {"n_images": 2400, "n_cameras": 8, "size": 32, "seed": 0}
EEG_RECORDINGS, EEG_DURATION_S, EEG_SFREQ = 200, 30.0, 100.0
EEG_SPEC = {"window_s": 10.0, "stride_s": 5.0, "scaling": "robust"}
DIGITS_SIZE = 16
SPLIT_SEED = 0  # the digits split (webcam and EEG: their generators' seed 0)


# ------------------------------------------------------------------ plumbing


def fresh_work(work: Path) -> Path:
    """`work`, created; SystemExit when it already holds something."""
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"{work} is not empty: remove it or pass another --work")
    work.mkdir(parents=True, exist_ok=True)
    return work


def timed_train(out: Path, **kw: Any) -> tuple[dict, float]:
    """`supemb.train.trainer.train(TrainConfig(out=out, **kw))` and its wall-clock seconds."""
    from supemb.train.config import TrainConfig
    from supemb.train.trainer import train

    t0 = time.perf_counter()
    final = train(TrainConfig(out=str(out), **kw))
    return final, time.perf_counter() - t0


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg_1_5_15_min": [round(v, 2) for v in os.getloadavg()],  # other jobs on the machine, at the start
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": ".venv/bin/python " + shlex.join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        "taken": "start",  # the load and date; records of heldout, significance and residual_knn before 2026-12-08
        # were taken when the run had finished, and say "end"
    }


def machine_line(m: dict[str, Any]) -> str:
    load = m.get("load_avg_1_5_15_min")  # records written before 2026-12 have none
    at_end = m.get("taken") == "end"
    load_text = (("load average {:g} when the run had finished (its own and other jobs'; times are wall-clock)"
                  if at_end else "load average {:g} at the start (other jobs; times are wall-clock)").format(load[0])
                 if load else "load not recorded (times are wall-clock on a shared machine)")
    return (f"Machine: {m['platform']}, CPU {m['cpu']} ({m['cpu_count']} cores), {m['torch_threads']} torch "
            f"threads, torch {m['torch']}, Python {m['python']}, {load_text}. "
            f"Date{' (the end)' if at_end else ''}: {m['date']}.")


# ---------------------------------------------------------------------- data


def webcam_data(out: Path, n_images: int = WEBCAM["n_images"]) -> Path:
    """The synthetic webcam frames (fixed seeded split); returns labels.csv."""
    from supemb.data.synthetic_webcam import make_webcam_dataset

    return make_webcam_dataset(out, n_images, n_cameras=WEBCAM["n_cameras"], size=WEBCAM["size"],
                               seed=WEBCAM["seed"])


def eeg_data(out: Path, n_recordings: int = EEG_RECORDINGS) -> Path:
    """The synthetic resting EEG (fixed seeded 70/15/15 split over recordings); returns the folder."""
    from supemb.data.synthetic_eeg import make_eeg_dataset

    return make_eeg_dataset(out, n_recordings, duration_s=EEG_DURATION_S, sfreq=EEG_SFREQ, seed=0)


def digits_data(out: Path, n: int | None = None) -> Path:
    """scikit-learn's bundled digits as `out/<train|val|test>/<class>/<i>.png`, 16x16 RGB.

    The split is fixed here (stratified 80/10/10, seed SPLIT_SEED), so it does
    not change with the training seed. n: a seeded subset of n digits (smoke runs)."""
    from sklearn.datasets import load_digits

    from supemb.data.splits import split_labels

    digits = load_digits()
    keep = np.arange(len(digits.target))
    if n is not None and n < len(keep):
        keep = np.sort(np.random.default_rng(SPLIT_SEED).choice(len(keep), size=n, replace=False))
    for k, label in enumerate(sorted(set(int(t) for t in digits.target[keep]))):
        idx = keep[digits.target[keep] == label]
        for i, split in zip(idx, split_labels(len(idx), val_frac=0.1, test_frac=0.1, seed=SPLIT_SEED + k)):
            folder = out / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            px = (digits.images[i] / 16.0 * 255).astype(np.uint8)
            Image.fromarray(px).resize((DIGITS_SIZE, DIGITS_SIZE), Image.NEAREST).convert("RGB").save(
                folder / f"{i:04d}.png")
    return out


# ------------------------------------------------------------ finished runs


Corrupt = Callable[[Any, int, int], Any]  # (raw item, item index, group id) -> raw item


@dataclass
class LoadedRun:
    """A finished run, rebuilt as `supemb.train.embedding.embed_run` does."""

    path: Path
    trainer: Any  # supemb.train.trainer.Trainer, set up, final encoder weights loaded
    meta: dict[str, Any]  # model.json
    linear: tuple[np.ndarray, np.ndarray] | None  # linear.fc (weight [out, D], bias [out]), if any
    _clean: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # features(split), embedded once

    @property
    def cfg(self):
        return self.trainer.cfg

    @property
    def data(self):
        return self.trainer.data

    @property
    def metric(self) -> str:
        return self.meta.get("metric", "cosine")

    def split(self, name: str):
        return self.trainer.data.splits[name]

    @torch.no_grad()
    def encode(self, xs: list[torch.Tensor], batch: int = 128) -> np.ndarray:
        """Model inputs (already transformed) -> raw encoder features [N, D]."""
        enc = self.trainer.model.encoder
        enc.eval()
        out = [enc(torch.stack(xs[i:i + batch]).to(self.trainer.device)).float().cpu()
               for i in range(0, len(xs), batch)]
        return torch.cat(out).numpy()

    def features(self, split: str, corrupt: Corrupt | None = None) -> np.ndarray:
        """Raw encoder features [N, D] of a split's items, each passed through `corrupt` first
        (on the raw item: a PIL image, or an EEG window [C, W] in model units) and then the
        evaluation transform. Without `corrupt` a split is embedded once (the encoder is final)."""
        if corrupt is None and split in self._clean:
            return self._clean[split]
        s = self.split(split)
        xs = []
        for i in range(len(s)):
            raw = s.load(i)
            if corrupt is not None:  # on the item itself (an EEG window, not the stretch around it)
                raw = corrupt(as_window(raw), i, int(s.groups[i]))
            xs.append(self.data.eval_transform(raw))
        feats = self.encode(xs)
        if corrupt is None:
            feats.setflags(write=False)  # shared by every caller from here on
            self._clean[split] = feats
        return feats

    def views(self, split: str, seed: int) -> np.ndarray:
        """Raw encoder features of one augmented view per item (the training augmentation),
        item i's drawn with `torch.Generator().manual_seed(seed * 1_000_003 + i)`."""
        s = self.split(split)
        xs = [self.data.augment(s.load(i), torch.Generator().manual_seed(seed * 1_000_003 + i))
              for i in range(len(s))]
        return self.encode(xs)

    def knn_predict(self, train_feats: np.ndarray, feats: np.ndarray) -> np.ndarray:
        """kNN regression in the served geometry, with the run's k and kNN temperature (model.json)."""
        from supemb.predict.neighbours import embedding_array, nearest_neighbours, neighbour_regress

        g, q = embedding_array(train_feats, self.metric), embedding_array(feats, self.metric)
        k = min(int(self.meta.get("knn_k") or self.cfg.knn_k or 10), len(g))
        idx, sim = nearest_neighbours(q, g, k, metric=self.metric)
        pred, _ = neighbour_regress(sim, self.split("train").targets[idx],
                                    temperature=float(self.meta["knn_temperature"]))
        return pred

    def head_predict(self, feats: np.ndarray) -> np.ndarray:
        """The run's linear head (stage 2, or a baseline's end-to-end head) -> target units."""
        if self.linear is None:
            raise ValueError(f"{self.path}: no linear head in model.safetensors")
        w, b = self.linear
        out = feats.astype(np.float64) @ w.T.astype(np.float64) + b.astype(np.float64)
        return out[:, 0] * float(self.meta["target_std"]) + float(self.meta["target_mean"])

    def errors(self, pred: np.ndarray, split: str) -> np.ndarray:
        """|error| of each input of the split: an image, or an EEG recording (its window
        predictions averaged), in the order of the recordings' group ids."""
        from supemb.predict.neighbours import aggregate_by_group

        s = self.split(split)
        if self.data.modality == "eeg":
            _, p = aggregate_by_group(pred, s.groups)
            _, t = aggregate_by_group(s.targets, s.groups)
            return np.abs(p - t)
        return np.abs(pred - s.targets)

    def mae(self, pred: np.ndarray, split: str) -> float:
        """MAE of item predictions; EEG: of the window predictions averaged per recording."""
        return float(np.mean(self.errors(pred, split)))


def load_run(run_dir: Path, data: Path | None = None) -> LoadedRun:
    """A finished run's trainer (data and encoder), model.json and linear head; `data`: other
    data in its place (e.g. the same training split with another test split)."""
    import dataclasses

    from safetensors.torch import load_file

    from supemb.train.rundir import load_run_config
    from supemb.train.trainer import Trainer

    cfg = load_run_config(run_dir)
    if data is not None:
        cfg = dataclasses.replace(cfg, data=str(data))
    t = Trainer(cfg, resume=True)
    t._setup()
    weights = load_file(str(Path(run_dir) / "model.safetensors"))
    t.model.encoder.load_state_dict({k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")})
    t.ema = None  # the saved weights are the ones evaluated (EMA ones where the run kept an EMA)
    t.model.eval()
    linear = None
    if "linear.fc.weight" in weights:
        linear = (weights["linear.fc.weight"].float().numpy(), weights["linear.fc.bias"].float().numpy())
    meta = json.loads((Path(run_dir) / "model.json").read_text())
    return LoadedRun(Path(run_dir), t, meta, linear)


def load_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def docs_dir_arg(doc: str) -> Path:
    """The --docs-dir of a study over the default bundles (default docs/), from the command line."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0].replace("\n", " "))  # the first paragraph
    ap.add_argument("--docs-dir", default=str(ROOT / "docs"))
    return Path(ap.parse_args().docs_dir)


def record_header(title: str, study: str, record: dict) -> list[str]:
    """The first lines of DOCS/<study>.md: title, the script that made it, the latest run's machine."""
    machine = record["runs"][-1]["machine"]
    command = machine.get("command") or f".venv/bin/python experiments/{study}.py"  # the latest run's own
    return [f"# {title}", "", f"Made by `{command}`; every run is appended to `docs/{study}.json`. The figures "
            "are from the latest run.", machine_line(machine), ""]


def temperature_overrides() -> list[str]:
    """The modality recipes that train a loss at another temperature than its LOSSES default
    (`recipe["temperatures"]`), as "rnc at 5 on eeg"."""
    from supemb import modalities

    return [f"{loss} at {t:g} on {name}" for name in modalities.names()
            for loss, t in modalities.get(name).recipe.get("temperatures", {}).items()]


def write_doc(path: Path, lines: list[str]) -> Path:
    """Write a study's markdown `lines` to `path`; returns the path."""
    path.write_text("\n".join(lines))
    return path


def keep_earlier(path: Path, key: str, fresh: dict[str, dict], order: Iterable[str]) -> dict[str, dict]:
    """`fresh` ({name: result}, this run's) with the entries under `key` of the latest run recorded in
    `path` that it lacks, each marked `kept_from` (the machine record of the run that made it), in `order`:
    a rerun of some sets or tasks keeps the others' figures and says where they come from."""
    runs = load_json(path).get("runs", [])
    last = runs[-1] if runs else {}
    kept = {n: {**r, "kept_from": r.get("kept_from", last.get("machine"))} for n, r in last.get(key, {}).items()}
    merged = {**kept, **fresh}
    return {n: merged[n] for n in order if n in merged}


def kept_line(result: dict) -> list[str]:
    """The line that says a kept result's run (empty for this run's own)."""
    m = result.get("kept_from")
    return [f"Kept from an earlier run (`{m['command']}`). {machine_line(m)}", ""] if m else []


def append_run(path: Path, run: dict, write_markdown: Callable[[dict, Path], Path]) -> None:
    """Append `run` to the record `path` (DOCS/<study>.json, {"runs": [...]}) and rewrite its markdown."""
    record = load_json(path) or {"runs": []}
    record["runs"].append(run)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {write_markdown(record, path.parent)} and {path}")
