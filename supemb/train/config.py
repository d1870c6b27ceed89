"""Training configuration: one frozen dataclass, YAML only at the CLI edge.

`load_config(yaml_path, overrides)` merges a YAML file with command-line
flags (flags win), validates every field and returns a `TrainConfig`. The
resolved config is written into the run directory as `config.json`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from supemb.errors import UsageError, UserError

LOSSES = ("supcon", "rnc", "tsc", "ce", "l1")
CONTRASTIVE = ("supcon", "rnc", "tsc")
# Where the contrastive loss is applied, following each loss's paper: SupCon
# and targeted SupCon on an MLP projection of the encoder output (dropped after
# stage 1); Rank-N-Contrast directly on the encoder output, no projection head
# (Zha et al. 2023, and their reference code). Either way the embedding is the
# L2-normalised encoder output; with "none" it is the space the loss orders.
PROJECTIONS = ("mlp", "none")
PROJECTION_OF_LOSS = {"supcon": "mlp", "tsc": "mlp", "rnc": "none"}
# The geometry an embedding is served in: "cosine" compares L2-normalised
# encoder outputs by their dot product, "l2" compares raw encoder outputs by
# negative Euclidean distance. A contrastive run serves the geometry its loss
# shaped (SupCon/TSC: cosine; RnC: its `similarity`); a baseline's is chosen
# on validation unless `metric` says.
METRICS = ("cosine", "l2")
SIMILARITIES = ("l2", "cosine")  # RnC's feature similarity (its paper's default: l2)
HEAD_FITS = ("convex", "sgd")
TASK_OF_LOSS = {"supcon": "classification", "tsc": "classification", "ce": "classification",
                "rnc": "regression", "l1": "regression"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; defaults follow the seeds' two-stage recipe."""

    data: str
    target: str
    out: str
    loss: str = "rnc"
    task: str | None = None  # "classification" | "regression"; None: from the loss
    format: str = "auto"  # image layouts: auto | csv | folder | utkface | agedb; or "eeg"
    encoder: str | None = None  # None: small_cnn for images, shallow for EEG
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 20
    linear_epochs: int = 10  # stage 2 (frozen encoder, linear head); contrastive losses only
    batch_size: int | None = None  # None: the recipe's for the modality (supemb.train.trainer.RECIPE)
    lr: float | None = None  # peak learning rate; None: the recipe's
    linear_lr: float = 1e-2  # head_fit "sgd" only
    head_fit: str = "convex"  # stage 2: "convex" (ridge / logistic regression, regularisation chosen on val) | "sgd"
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    temperature: float | None = None  # None: supemb.train.trainer.DEFAULT_TEMPERATURE (chosen on validation)
    projection: str | None = None  # stage-1 head: "mlp" | "none"; None: the loss's paper (see PROJECTION_OF_LOSS)
    projection_dim: int = 128
    similarity: str | None = None  # RnC's feature similarity "l2" | "cosine"; None: l2 (its paper's)
    metric: str | None = None  # served geometry "cosine" | "l2"; None: the loss's (baselines: chosen on val)
    label_smoothing: float = 0.1
    grad_clip: float = 5.0  # max gradient norm; 0 = off
    ema_decay: float = 0.0  # 0 = off; e.g. 0.999
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    image_size: int = 64
    eeg: dict[str, Any] = field(default_factory=dict)  # EEGSpec fields (channels, sfreq, window_s, ...)
    # Augmentation preset ("colour"), or {"preset": NAME, field: value, ...}; None: the task's default
    # (supemb.train.data.DEFAULT_AUGMENT). Names and fields are checked once the modality is known.
    augment: str | dict[str, Any] | None = None
    knn_k: int | None = None  # None: chosen on validation from KNN_KS (with the kNN temperature)
    on_error: str = "fail"  # bad data rows: fail | skip
    viz: bool = True

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise UsageError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        task = self.task or TASK_OF_LOSS[self.loss]
        if task not in ("classification", "regression"):
            raise UsageError(f"--task must be classification or regression, got {task!r}")
        if TASK_OF_LOSS[self.loss] != task:
            raise UsageError(f"--loss {self.loss} is for {TASK_OF_LOSS[self.loss]}, but the task is {task}")
        object.__setattr__(self, "task", task)
        positive = {"epochs": self.epochs, "batch_size": 2 if self.batch_size is None else self.batch_size,
                    "lr": 1.0 if self.lr is None else self.lr,
                    "knn_k": 1 if self.knn_k is None else self.knn_k, "image_size": self.image_size, "projection_dim": self.projection_dim}
        for name, value in positive.items():
            if value <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if self.batch_size is not None and self.batch_size < 2 and self.loss in CONTRASTIVE:
            raise UsageError("--batch-size must be at least 2 for a contrastive loss")
        if self.linear_epochs < 0 or self.warmup_epochs < 0 or self.grad_clip < 0:
            raise UsageError("--linear-epochs, --warmup-epochs and --grad-clip must be >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise UsageError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UsageError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.temperature is not None and self.temperature <= 0:
            raise UsageError(f"--temperature must be > 0, got {self.temperature}")
        if self.projection is not None and self.projection not in PROJECTIONS:
            raise UsageError(f"projection must be one of {', '.join(PROJECTIONS)}, got {self.projection!r}")
        if self.projection == "none" and self.loss == "tsc":
            raise UsageError("loss tsc needs its projection head (its class targets live in the projection space)")
        for name, allowed in (("similarity", SIMILARITIES), ("metric", METRICS), ("head_fit", HEAD_FITS)):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise UsageError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.similarity is not None and self.loss != "rnc":
            raise UsageError(f"--similarity applies to --loss rnc only, not {self.loss}")
        if self.augment is not None and not isinstance(self.augment, (str, dict)):
            raise UsageError(f"--augment must be a preset name or a mapping {{preset: NAME, field: value}}, "
                             f"got {type(self.augment).__name__}")
        if isinstance(self.augment, dict) and not isinstance(self.augment.get("preset"), str):
            raise UsageError(f"augment: a mapping needs 'preset: NAME' to start from, got {self.augment!r}")
        if self.on_error not in ("fail", "skip"):
            raise UsageError(f"--on-error must be fail or skip, got {self.on_error!r}")

    @property
    def contrastive(self) -> bool:
        return self.loss in CONTRASTIVE

    @property
    def projection_head(self) -> str:
        """Stage 1's head between encoder and loss: "mlp" or "none" ("none" for the end-to-end baselines)."""
        if not self.contrastive:
            return "none"
        return self.projection or PROJECTION_OF_LOSS[self.loss]

    @property
    def served_metric(self) -> str | None:
        """The geometry served: fixed by `metric` or the contrastive loss; None = choose on validation."""
        if self.metric is not None:
            return self.metric
        if self.loss == "rnc":
            return "cosine" if self.similarity == "cosine" else "l2"
        if self.loss in ("supcon", "tsc"):
            return "cosine"
        return None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"{source}: unknown setting(s) {', '.join(unknown)}")
        missing = [name for name in ("data", "target", "out") if d.get(name) in (None, "")]
        if missing:
            raise UsageError(f"{source}: missing required setting(s) {', '.join(missing)} "
                            "(--data, --target, --out)")
        try:
            return cls(**d)
        except TypeError as err:
            raise UsageError(f"{source}: {err}") from None


def load_config(yaml_path: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """YAML file (optional) + flags that were given (None values are ignored)."""
    merged: dict[str, Any] = {}
    source = "command line"
    if yaml_path is not None:
        path = Path(yaml_path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise UserError(f"{path}: config file not found") from None
        except yaml.YAMLError as err:
            raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(f"{path}: expected a mapping of settings at the top level")
        merged.update({k.replace("-", "_"): v for k, v in loaded.items()})
        source = str(path)
    merged.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(merged, source=source)


def save_config(cfg: TrainConfig, path: Path) -> None:
    path.write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
