"""Training configuration: one frozen dataclass and its command-line flags, YAML only at the CLI edge.

`TRAIN_FLAGS` declares every `supemb train` flag once (field, help, type,
choices); `load_config(yaml_path, overrides)` merges a YAML file with the
flags given (flags win), validates every field and returns a `TrainConfig`.
The resolved config is written into the run directory as `config.json`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from supemb.errors import ON_ERROR_FLAGS, UsageError, UserError
from supemb.losses.registry import LOSSES

# Every loss, its task, projection head, temperature and geometry: `supemb.losses.registry.LOSSES`.
# Where the contrastive loss is applied follows each loss's paper: SupCon and targeted
# SupCon on an MLP projection of the encoder output (dropped after stage 1); Rank-N-Contrast
# directly on the encoder output, no projection head (Zha et al. 2023, and their reference code).
PROJECTIONS = ("mlp", "none")
# The geometry an embedding is served in: "cosine" compares L2-normalised
# encoder outputs by their dot product, "l2" compares raw encoder outputs by
# negative Euclidean distance. A contrastive run serves the geometry its loss
# shaped (SupCon/TSC: cosine; RnC: its `similarity`); a baseline's is chosen
# on validation unless `metric` says.
METRICS = ("cosine", "l2")
SIMILARITIES = ("l2", "cosine")  # RnC's feature similarity (its paper's default: l2)
HEAD_FITS = ("convex", "sgd")
TASKS = ("classification", "regression")


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
    # Published weights to start from (supemb.encoders.pretrained): a torchvision ResNet state-dict
    # file (safetensors or torch) for resnet18/34/50[_small], or "timm" for a timm:<name> encoder.
    pretrained: str | None = None
    epochs: int = 20
    linear_epochs: int = 10  # stage 2 (frozen encoder, linear head); contrastive losses only
    batch_size: int | None = None  # None: the modality plug-in's recipe
    lr: float | None = None  # peak learning rate; None: the recipe's
    linear_lr: float = 1e-2  # head_fit "sgd" only
    head_fit: str = "convex"  # stage 2: "convex" (ridge / logistic regression, regularisation chosen on val) | "sgd"
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    temperature: float | None = None  # None: the loss's (supemb.losses.registry, chosen on validation)
    projection: str | None = None  # stage-1 head: "mlp" | "none"; None: the loss's paper (LossSpec.projection)
    projection_dim: int = 128
    similarity: str | None = None  # RnC's feature similarity "l2" | "cosine"; None: l2 (its paper's)
    metric: str | None = None  # served geometry "cosine" | "l2"; None: the loss's (baselines: chosen on val)
    label_smoothing: float = 0.1
    grad_clip: float = 5.0  # max gradient norm; 0 = off
    ema_decay: float = 0.0  # 0 = off; e.g. 0.999
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    seed: int = 0
    device: str = "auto"
    num_workers: int | None = None  # DataLoader workers per process; None: from the machine's cores
    sync_bn: bool = True  # several GPUs: BatchNorm over the global batch (SyncBatchNorm)
    dist_timeout: float = 1800.0  # seconds a collective may wait for a rank before the run stops
    image_size: int = 64
    faces: bool = False  # images: crop every photo to its largest face (a face-detection step) first
    eeg: dict[str, Any] = field(default_factory=dict)  # EEGSpec fields (channels, sfreq, window_s, ...)
    # Augmentation preset ("colour"), or {"preset": NAME, field: value, ...}; None: the task's default
    # (the plug-in's default_augment). Names and fields are checked once the modality is known.
    augment: str | dict[str, Any] | None = None
    knn_k: int | None = None  # None: chosen on validation from KNN_KS (with the kNN temperature)
    on_error: str = "fail"  # bad data rows: fail | skip
    viz: bool = True

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise UsageError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        loss_task = LOSSES[self.loss].task
        task = self.task or loss_task
        if task not in TASKS:
            raise UsageError(f"--task must be classification or regression, got {task!r}")
        if loss_task != task:
            raise UsageError(f"--loss {self.loss} is for {loss_task}, but the task is {task}")
        object.__setattr__(self, "task", task)
        positive = {"epochs": self.epochs, "batch_size": 2 if self.batch_size is None else self.batch_size,
                    "lr": 1.0 if self.lr is None else self.lr,
                    "knn_k": 1 if self.knn_k is None else self.knn_k, "image_size": self.image_size, "projection_dim": self.projection_dim}
        for name, value in positive.items():
            if value <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if self.batch_size is not None and self.batch_size < 2 and self.contrastive:
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
        if self.num_workers is not None and self.num_workers < 0:
            raise UsageError(f"--num-workers must be >= 0, got {self.num_workers}")
        if not self.dist_timeout > 0:
            raise UsageError(f"--dist-timeout must be > 0 seconds, got {self.dist_timeout}")
        if self.pretrained is not None:
            self._check_pretrained()
        if self.on_error not in ON_ERROR_FLAGS:
            raise UsageError(f"--on-error must be fail or skip, got {self.on_error!r}")

    def _check_pretrained(self) -> None:
        """--pretrained names the weights of a chosen encoder: a file for our ResNets, "timm" for timm."""
        if not isinstance(self.pretrained, str) or not self.pretrained:
            raise UsageError(f"--pretrained must be a file or 'timm', got {self.pretrained!r}")
        if self.encoder is None:
            raise UsageError("--pretrained needs --encoder: resnet18/34/50 (or their _small variants) for a "
                             "torchvision weights file, or timm:<name> with --pretrained timm")
        timm_encoder = str(self.encoder).startswith("timm:")  # supemb.encoders.registry.TIMM_PREFIX (no torch here)
        if (self.pretrained == "timm") != timm_encoder:
            raise UsageError(f"--pretrained {self.pretrained} does not go with --encoder {self.encoder}: "
                             "'timm' loads timm's weights into a timm:<name> encoder, a file loads "
                             "torchvision ResNet weights into resnet18/34/50[_small]")

    @property
    def contrastive(self) -> bool:
        return LOSSES[self.loss].contrastive

    @property
    def projection_head(self) -> str:
        """Stage 1's head between encoder and loss: "mlp" or "none" ("none" for the end-to-end baselines)."""
        if not self.contrastive:
            return "none"
        return self.projection or LOSSES[self.loss].projection

    @property
    def served_metric(self) -> str | None:
        """The geometry served: fixed by `metric` or the contrastive loss; None = choose on validation."""
        # `similarity` (RnC only) is the geometry the loss compares features in
        return self.metric or self.similarity or LOSSES[self.loss].metric

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
        types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        d = {name: _typed(name, value, types[name], source) for name, value in d.items()}
        try:
            return cls(**d)
        except TypeError as err:
            raise UsageError(f"{source}: {err}") from None


def _typed(name: str, value: Any, annotation: str, source: str) -> Any:
    """A setting's value as its field's type says (`int`, `float | None`, `str | dict[...]`, ...):
    a YAML value of another type is refused in one line, and a number YAML 1.1 read as text
    (`lr: 3e-3`, `seed: '3'`) is taken as the number."""
    kinds = {k.strip().split("[")[0] for k in annotation.split("|")}
    if value is None and "None" in kinds or not kinds <= {"int", "float", "bool", "str", "dict", "None"}:
        return value
    if isinstance(value, bool):
        ok = "bool" in kinds
    elif isinstance(value, int):
        ok, value = bool(kinds & {"int", "float"}), (float(value) if "float" in kinds and "int" not in kinds else value)
    elif isinstance(value, float):
        ok = "float" in kinds or ("int" in kinds and value.is_integer())
        value = int(value) if ok and "float" not in kinds else value
    elif isinstance(value, str) and "str" not in kinds and kinds & {"int", "float"}:
        try:
            return _typed(name, float(value) if "float" in kinds else int(value), annotation, source)
        except ValueError:
            ok = False
    else:
        ok = isinstance(value, str) and "str" in kinds or isinstance(value, dict) and "dict" in kinds
    if not ok:
        want = " or ".join({"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text",
                            "dict": "a mapping"}[k] for k in sorted(kinds - {"None"}))
        raise UsageError(f"{source}: {name} must be {want}, got {value!r}")
    return value


def resolve_defaults(cfg: TrainConfig, recipe: Mapping[str, Any], augment: dict[str, Any] | None) -> TrainConfig:
    """`cfg` with what its unset values become: the modality plug-in's `recipe` (encoder and its
    settings, batch size, lr; chosen on validation, docs/recipe.md), the loss's temperature (the recipe's
    `temperatures` entry for the loss where it has one, else LOSSES'), and `augment` (the data's resolved
    augmentation). config.json records the result."""
    temperature = recipe.get("temperatures", {}).get(cfg.loss, LOSSES[cfg.loss].temperature)
    kwargs = {**(recipe["encoder_kwargs"] if cfg.encoder is None else {}), **cfg.encoder_kwargs}
    return dataclasses.replace(
        cfg, encoder=cfg.encoder or recipe["encoder"], encoder_kwargs=kwargs, augment=augment or cfg.augment,
        batch_size=cfg.batch_size or recipe["batch_size"], lr=cfg.lr or recipe["lr"],
        temperature=cfg.temperature if cfg.temperature is not None else temperature)


# ------------------------------------------------------------------ CLI flags


# The names of supemb.preprocess.image_augment.IMAGE_AUGMENTS and supemb.preprocess.eeg_augment.EEG_AUGMENTS and
# the plug-ins' default_augment (supemb.modalities), spelled out so `supemb --help` imports none of them
# (torch); tests/test_augment_presets.py keeps them in step.
AUGMENT_HELP = ("augmentation preset; images: simclr (SupCon recipe: crops, flips, colour jitter with hue, "
                "greyscale), colour (crops, flips, brightness/contrast only: keeps colour), light (colour "
                "without flips: digits, text), none; EEG: eeg, eeg-light, eeg-context, eeg-light-context (views cut "
                "from up to a window around the item in its recording), none. Default: by task (image classes: "
                "light, image values: colour, EEG: eeg-light-context; EEG with a contrastive loss: eeg-light). "
                "A YAML config may give {preset: NAME, field: value, ...}")


@dataclass(frozen=True)
class Flag:
    """One `supemb train` flag, setting the `TrainConfig` field `name`.

    Unset flags parse to None, so a YAML config's value (or the field's default) stands.
    `off` / `on`: a boolean field set by a flag that turns it off (`--no-viz` -> viz=False)
    or on (`--faces` -> faces=True)."""

    name: str  # the TrainConfig field
    help: str
    type: Callable[[str], Any] | None = None  # None: the string as given
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    off: str | None = None
    on: str | None = None

    @property
    def option(self) -> str:
        return self.off or self.on or "--" + self.name.replace("_", "-")


# The training flags, in `supemb train --help` order; `supemb.cli` builds the parser and the
# overrides from this list alone (`--config` and `--resume` are the CLI's own).
TRAIN_FLAGS: tuple[Flag, ...] = (
    Flag("data", "images (CSV, folder with labels.csv, class folders, UTKFace/AgeDB names) "
         "or EEG recordings (folder or CSV of EDF/BDF/FIF)"),
    Flag("target", "target column (or 'age' from EDF headers / file names; 'class' for folders)"),
    Flag("out", "run directory to create (or to continue with --resume)"),
    Flag("loss", "supcon|tsc (classes), rnc (values; the default); ce|l1: end-to-end baselines",
         choices=tuple(LOSSES)),
    Flag("task", "default: from the loss", choices=TASKS),
    Flag("format", "auto | csv | folder | utkface | agedb | eeg (default auto)"),
    Flag("encoder", "encoder name (default: the recipe's, small_cnn with 2 convolutions per block "
         "for images, shallow for EEG)"),
    Flag("pretrained", "start from published weights: a torchvision ResNet state-dict file (.safetensors, "
         "or a torch file read with weights_only) for resnet18/34/50[_small], or 'timm' for a timm:<name> "
         "encoder; preprocessing then uses the weights' mean/std (default: random initialisation)",
         metavar="FILE"),
    Flag("epochs", "stage-1 (or baseline) epochs (default 20)", int),
    Flag("linear_epochs", "0 skips stage 2 (the linear head); with --head-fit sgd, its epochs (default 10)", int),
    Flag("head_fit", "stage 2: convex (ridge / logistic regression to convergence, regularisation chosen "
         "on validation; default) or sgd (AdamW epochs)", choices=HEAD_FITS),
    Flag("similarity", "RnC's feature similarity (default l2, as in its paper); the run serves the same "
         "geometry", choices=SIMILARITIES),
    Flag("metric", "served geometry (default: the loss's; a baseline's is chosen on validation)",
         choices=METRICS),
    Flag("knn_k", "neighbours of the kNN (default: chosen on validation from 5-40)", int),
    Flag("batch_size", "samples per batch, the global batch over all processes under torchrun "
         "(default: 128 for images, 64 for EEG)", int),
    Flag("lr", "peak learning rate, AdamW with warm-up + cosine (default: 3e-3 for images, 1e-3 for EEG)",
         float),
    Flag("temperature", "loss temperature (default: the loss's own; RnC on EEG: 5)", float),
    Flag("image_size", "square input size for images (default 64)", int),
    Flag("faces", "images: find the face in every photo (YuNet) and train on its crop; the step is "
         "recorded, so export and serving crop the same way", on="--faces"),
    Flag("faces", "train on the whole photos (overrides a YAML faces: true)", off="--no-faces"),
    Flag("ema_decay", "EMA of weights, e.g. 0.999 (default off)", float),
    Flag("grad_clip", "max gradient norm, 0 = off (default 5)", float),
    Flag("augment", AUGMENT_HELP, metavar="NAME"),
    Flag("seed", "seed of splits, initialisation and augmentation (default 0)", int),
    Flag("device", "auto | cpu | cuda (default auto)"),
    Flag("num_workers", "data-loading worker processes per training process (default: from the "
         "machine's cores, up to 8)", int),
    Flag("sync_bn", "under torchrun on GPUs, keep per-GPU BatchNorm statistics instead of SyncBatchNorm",
         off="--no-sync-bn"),
    Flag("sync_bn", "under torchrun on GPUs, SyncBatchNorm (the default; overrides a YAML sync_bn: false)",
         on="--sync-bn"),
    Flag("dist_timeout", "under torchrun, seconds a rank may wait for the others before the run stops "
         "(default 1800)", float),
    Flag("on_error", "bad data rows: stop (default) or skip", choices=ON_ERROR_FLAGS),
    Flag("viz", "skip the embedding map", off="--no-viz"),
    Flag("viz", "draw the embedding map (the default; overrides a YAML viz: false)", on="--viz"),
)


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
        except OSError as err:
            raise UserError(f"{path}: cannot read the config file ({err.strerror or err})") from None
        except yaml.YAMLError as err:  # a bad setting, like an unknown key or a wrong type: exit 2 (a missing file: 1)
            raise UsageError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UsageError(f"{path}: expected a mapping of settings at the top level")
        if bad := [k for k in loaded if not isinstance(k, str)]:
            raise UsageError(f"{path}: setting names must be text, got {bad[0]!r}")
        merged.update({k.replace("-", "_"): v for k, v in loaded.items()})
        source = str(path)
    merged.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(merged, source=source)

