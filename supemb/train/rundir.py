"""What a training run directory holds: the trainer writes it through `RunDir`, and export,
`supemb viz` and `--resume` read it through `RunDir`.

    config.json           the resolved configuration (`TrainConfig`)
    preprocessing.json    what serving must do to an input: the recorded steps (supemb.preprocess.steps)
    model.json            format_version, encoder name/kwargs, embed_dim, modality, task, loss,
                          classes, target stats, metric and embedding, kNN k and temperature, ...
    model.safetensors     final weights: encoder.*, head.* (projection), linear.* (linear head)
    checkpoints/last.pt   resume point (atomic; also written on Ctrl-C)
    checkpoints/best.pt   the best validation epoch of stage 1 / the baseline
    metrics.jsonl         one JSON line per epoch and stage, then the "final" line
    embeddings.png        2-D map of the validation embeddings, coloured by target

Runs written by earlier versions still load: a config.json without "augment"
gets the settings those runs used, a model.json without "metric" is cosine,
one without "format_version" is read as today's. A model.json with a newer
format_version than `MODEL_FORMAT_VERSION` is refused with one clear line.

Importing this module does not import torch; the writers and the encoder
loader import it when called.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supemb.errors import UserError
from supemb.train.config import METRICS, TrainConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

    from supemb.encoders.heads import EmbeddingModel

# model.json's layout; bump it when a reader of the old layout would misread the new one.
# 2: may hold "knn_residual" (an older supemb would export plain kNN and serve other values: it must refuse)
MODEL_FORMAT_VERSION = 2
PLAIN_KNN_MODEL_FORMAT_VERSION = 1  # what a run without knn_residual writes: older readers use it right
# What model.json's "embedding" says per metric: what `EmbeddingModel` computes.
EMBEDDINGS = {"cosine": "l2-normalised encoder output", "l2": "encoder output"}
# The kNN temperature of a run whose model.json has none (as the trainer's evaluation then).
KNN_TEMPERATURE = {"regression": 0.1, "classification": 0.07}


def run_metric(meta: dict[str, Any], where: Path | str = "model.json") -> str:
    """The served geometry of a run from its model.json: "cosine" or "l2".

    No "metric" (runs written before it was recorded) means cosine. The
    "embedding" string, when present, must be the one the trainer records
    for that metric; anything else is refused (an embedding this supemb
    cannot rebuild)."""
    metric = meta.get("metric", "cosine")
    if metric not in METRICS:
        raise UserError(f"{where}: metric {metric!r} is not one this supemb serves ({', '.join(METRICS)})")
    embedding = meta.get("embedding", EMBEDDINGS[metric])
    if embedding != EMBEDDINGS[metric]:
        raise UserError(f"{where}: the embedding is {embedding!r}, which this supemb cannot export "
                        f"for metric {metric!r} (it exports the {EMBEDDINGS[metric]})")
    return metric


def run_knn_temperature(meta: dict[str, Any], task: str, where: Path | str = "model.json") -> float:
    """model.json's knn_temperature (in its metric's similarity units), else the cosine defaults."""
    t = meta.get("knn_temperature")
    if t is None:
        return KNN_TEMPERATURE[task]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (float(t) > 0 and math.isfinite(float(t))):
        raise UserError(f"{where}: knn_temperature must be a positive number, got {t!r}")
    return float(t)


class RunDir:
    """One run directory: its paths, what the trainer writes, and what readers load back."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_json = self.path / "config.json"
        self.preprocessing_json = self.path / "preprocessing.json"
        self.model_json = self.path / "model.json"
        self.weights = self.path / "model.safetensors"
        self.checkpoints = self.path / "checkpoints"
        self.last = self.checkpoints / "last.pt"
        self.best = self.checkpoints / "best.pt"
        self.metrics_jsonl = self.path / "metrics.jsonl"
        self.embedding_map = self.path / "embeddings.png"

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------- writing

    def check_out(self, resume: bool) -> None:
        """Before any work, creating nothing: the run directory can be this run's (new, empty, or for
        `resume` the run itself) and its nearest existing folder is writable."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.path}: is a file, not a run directory; choose another --out")
        others = self.path.is_dir() and any(p.name != ".lock" for p in self.path.iterdir())
        if not resume and others and not self.config_json.is_file():
            raise UserError(f"{self.path}: the folder holds other files and no training run; "
                            "choose a new or empty --out")
        existing = next(p for p in (self.path, *self.path.absolute().parents) if p.exists())
        if not os.access(existing, os.W_OK):
            raise UserError(f"{self.path}: cannot write the run there ({existing} is not writable)")

    def lock(self) -> Any:
        """Create the run directory and hold its lock (an open file; closing it lets go): a second
        `supemb train` into it is refused until this run ends (POSIX; elsewhere no lock)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            held = open(self.path / ".lock", "a")
        except OSError as err:
            raise UserError(f"{self.path}: cannot write the run there ({err.strerror or err})") from None
        try:
            import fcntl

            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        except OSError:
            held.close()
            raise UserError(f"{self.path}: another supemb train is writing this run; "
                            "wait for it or choose another --out") from None
        return held

    def start(self, cfg: TrainConfig, preprocessing: dict[str, Any]) -> None:
        """A new run: config.json, preprocessing.json and an empty metrics.jsonl."""
        self.path.mkdir(parents=True, exist_ok=True)
        # the data as an absolute path: --resume and export work from any folder
        settings = {**cfg.to_dict(), "data": os.path.abspath(cfg.data)}
        self.config_json.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        self.preprocessing_json.write_text(json.dumps(preprocessing, indent=2) + "\n")
        self.metrics_jsonl.write_text("")

    def log(self, metrics: dict[str, Any]) -> None:
        """Append one line to metrics.jsonl."""
        with open(self.metrics_jsonl, "a") as f:
            f.write(json.dumps(metrics, sort_keys=True) + "\n")

    def write_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """model.safetensors: `weights` (names as `encoder.*`, `head.*`, `linear.*`), on the CPU."""
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(self.weights))

    def write_model(self, meta: dict[str, Any]) -> dict[str, Any]:
        """model.json: `meta` (with "metric") plus its format_version and embedding; returns what was written."""
        version = MODEL_FORMAT_VERSION if meta.get("knn_residual") else PLAIN_KNN_MODEL_FORMAT_VERSION
        meta = {"format_version": version, **meta, "embedding": EMBEDDINGS[meta["metric"]]}
        self.model_json.write_text(json.dumps(meta, indent=2) + "\n")
        return meta

    # ------------------------------------------------------------- reading

    def read_json(self, path: Path) -> dict[str, Any]:
        """One of the run's JSON files as a dict; a missing or broken file is a one-line UserError."""
        if not path.is_file():
            finished = "a finished" if path == self.model_json else "a"  # model.json comes last
            raise UserError(f"{path}: not found; is {self.path} {finished} supemb training run?")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(d, dict):
            raise UserError(f"{path}: expected a JSON object, got {type(d).__name__}")
        return d

    def config(self) -> TrainConfig:
        """config.json as a `TrainConfig`, with what older runs did where they recorded nothing.
        `out` is this directory, wherever the run was started (a run copied or moved elsewhere
        resumes, exports and embeds where it is now)."""
        d = self.read_json(self.config_json)
        d["out"] = str(self.path)
        data = d.get("data")  # absolute since 2026-12-08; named from here when below here, as when it was given
        if isinstance(data, str) and os.path.isabs(data) and Path(data).is_relative_to(Path.cwd()) \
                and os.path.exists(data):  # missing data keeps its absolute name, for the message that says so
            d["data"] = os.path.relpath(data)
        if "augment" not in d:
            # Runs from before the presets: what the modality used then (images: the SimCLR recipe).
            if self.preprocessing_json.is_file():
                from supemb import modalities

                old = modalities.get(self.preprocessing().get("modality", ""), str(self.preprocessing_json))
                if old.legacy_augment:
                    d["augment"] = old.legacy_augment
            for key, old in (("head_fit", "sgd"), ("metric", "cosine")):
                d.setdefault(key, old)  # what those runs did (stage-2 SGD, cosine everywhere)
        return TrainConfig.from_dict(d, source=str(self.config_json))

    def preprocessing(self) -> dict[str, Any]:
        return self.read_json(self.preprocessing_json)

    def model(self) -> dict[str, Any]:
        """model.json, refused when written by a newer supemb (a format_version above ours)."""
        meta = self.read_json(self.model_json)
        version = meta.get("format_version", MODEL_FORMAT_VERSION)  # runs before the field: today's layout
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise UserError(f"{self.model_json}: format_version must be a positive integer, got {version!r}")
        if version > MODEL_FORMAT_VERSION:
            raise UserError(f"{self.model_json}: format_version {version} is newer than this supemb reads "
                            f"(up to {MODEL_FORMAT_VERSION}); upgrade supemb to use this run")
        return meta

    def metric(self, meta: dict[str, Any] | None = None) -> str:
        """The served geometry (`run_metric` of model.json)."""
        return run_metric(self.model() if meta is None else meta, self.model_json)

    def uncertainty_scale(self, meta: dict[str, Any] | None = None) -> float:
        """model.json's knn_uncertainty_scale (`supemb.predict.calibration`); 1 for runs written before."""
        meta = self.model() if meta is None else meta
        s = meta.get("knn_uncertainty_scale", 1.0)
        if type(s) not in (int, float) or not math.isfinite(s) or s <= 0:
            raise UserError(f"{self.model_json}: knn_uncertainty_scale must be a positive number, got {s!r}")
        return float(s)

    def knn_residual(self, meta: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """model.json's knn_residual (`supemb.train.selection.choose_residual`), checked; None where
        validation kept plain kNN or the run was written before."""
        from supemb.predict.manifest import check_residual

        meta = self.model() if meta is None else meta
        r = meta.get("knn_residual")
        if r is not None:
            dim = meta.get("embed_dim")
            if type(dim) is not int or dim < 1:
                raise UserError(f"{self.model_json}: embed_dim must be a positive integer, got {dim!r}")
            check_residual(f"{self.model_json}: knn_residual", r, dim, keys=("k", "temperature", "weight", "bias"))
        return r

    def knn_temperature(self, meta: dict[str, Any] | None = None) -> float:
        """The kNN temperature (`run_knn_temperature` of model.json)."""
        meta = self.model() if meta is None else meta
        return run_knn_temperature(meta, meta["task"], self.model_json)

    def final_metrics(self) -> dict[str, float]:
        """The test figures of metrics.jsonl's last "final" line ({} when there is none)."""
        if not self.metrics_jsonl.is_file():
            return {}
        last: dict[str, Any] = {}
        for line in self.metrics_jsonl.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("stage") == "final":
                last = rec
        return {k: v for k, v in last.items() if k.startswith("test_") and isinstance(v, (int, float))}

    def load_encoder(self, encoder: nn.Module | None = None, meta: dict[str, Any] | None = None) -> nn.Module:
        """The final encoder: model.safetensors' `encoder.*` weights loaded into `encoder`, or
        into one built from model.json (`meta`, read when not given) when `encoder` is None."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not self.weights.is_file():
            raise UserError(f"{self.weights}: not found; has the run in {self.path} finished?")
        if encoder is None:
            from supemb.encoders.registry import build_encoder

            meta = self.model() if meta is None else meta
            if not isinstance(meta.get("encoder"), str):
                raise UserError(f"{self.model_json}: no encoder name; is {self.path} a finished supemb training run?")
            encoder = build_encoder(meta["encoder"], **meta.get("encoder_kwargs", {}))
        try:
            weights = load_file(str(self.weights))
        except (SafetensorError, OSError) as err:
            raise UserError(f"{self.weights}: cannot read the weights ({err})") from None
        try:
            encoder.load_state_dict({k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")})
        except RuntimeError as err:
            name = meta["encoder"] if meta is not None else type(encoder).__name__
            raise UserError(f"{self.weights}: the weights do not fit encoder {name!r} "
                            f"({str(err).splitlines()[0]})") from None
        return encoder

    def embedding_model(self) -> tuple[EmbeddingModel, dict[str, Any], dict[str, Any]]:
        """(inputs -> embeddings in the run's metric, in eval mode; model.json; preprocessing.json).

        Only the encoder's weights are needed; heads stay behind."""
        from supemb.encoders.heads import EmbeddingModel

        meta = self.model()
        prep = self.preprocessing()
        metric = self.metric(meta)
        return EmbeddingModel(self.load_encoder(meta=meta), metric).eval(), meta, prep


def summary_line(metrics: dict[str, Any]) -> str:
    """One line of metrics.jsonl for the terminal: stage, epoch, loss and the headline figures."""
    keys = [k for k in metrics if any(s in k for s in ("_mae", "_acc", "ordinality", "map_at_r"))]
    body = "  ".join(f"{k}={metrics[k]:.4g}" for k in sorted(keys) if isinstance(metrics[k], (int, float)))
    epoch = f" epoch {metrics['epoch']}" if metrics.get("epoch") is not None else ""  # stage 2's convex fit: none
    head = f"stage {metrics.get('stage')}{epoch}"
    loss = f"  loss={metrics['loss']:.4f}" if "loss" in metrics else ""
    served = f"  served: {metrics['served']}" if "served" in metrics else ""  # kNN or residual kNN (final line)
    return f"{head}{loss}  {body}{served}"


def load_run_config(out: str | Path) -> TrainConfig:
    """The `TrainConfig` a run in `out` was trained with (`RunDir(out).config()`)."""
    return RunDir(out).config()
