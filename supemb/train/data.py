"""What the trainer sees of a dataset, for images and EEG alike.

`prepare_data(cfg)` reads `--data` (an image layout or a folder/CSV of EEG
recordings), splits it, and returns a `PreparedData`: per split an indexable
`Split` (raw item loader + targets + group ids), the train and eval
transforms, the preprocessing spec that is saved with the model, and the
augmentation used (`augment_spec`: a preset of `IMAGE_AUGMENTS` or
`EEG_AUGMENTS`, chosen by `--augment` or, when unset, `DEFAULT_AUGMENT`).

Randomness is a pure function of (seed, epoch, index): `SeededDataset` gives
every item its own generator and `epoch_order` the batch order, so a run
resumed mid-epoch sees exactly the data an uninterrupted run would.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from supemb.data.eeg_files import EEG_SUFFIXES, EEG_TEST_FRAC, EEG_VAL_FRAC, list_recordings
from supemb.preprocess.eeg_augment import EEG_AUGMENTS, EEGAugment, eeg_augment
from supemb.data.image_files import load_image
from supemb.data.image_layouts import load_image_table
from supemb.data.image_table import ImageRecord
from supemb.data.splits import assign_splits
from supemb.preprocess.eeg import EEGSpec
from supemb.preprocess.image import PreprocessSpec
from supemb.preprocess.image_augment import (
    IMAGE_AUGMENTS,
    AugmentSpec,
    ContrastiveAugment,
    EvalTransform,
    image_augment,
)
from supemb.errors import UsageError, UserError
from supemb.train.config import TrainConfig
from supemb.train.eeg_windows import EEGWindowDataset, split_datasets

SPLITS = ("train", "val", "test")

# The augmentation preset of a run that sets none, by (modality, task). Image
# presets: supemb.preprocess.image_augment.IMAGE_AUGMENTS; EEG: supemb.preprocess.eeg_augment.EEG_AUGMENTS.
DEFAULT_AUGMENT: dict[tuple[str, str], str] = {
    ("image", "classification"): "light",
    ("image", "regression"): "colour",
    ("eeg", "regression"): "eeg",
}


def resolve_augment(value: str | Mapping[str, Any] | None, modality: str,
                    task: str) -> tuple[AugmentSpec | EEGAugment, dict[str, Any]]:
    """`TrainConfig.augment` for this modality and task -> (spec, record).

    value: None (the task's default, `DEFAULT_AUGMENT`), a preset name, or a
    mapping `{"preset": NAME, **field overrides}`. record: the resolved
    augmentation, `{"preset": NAME or "custom", **every field}` (JSON-friendly;
    resolving it again gives the same spec). A name or field the modality
    lacks is a one-line `UsageError` naming the allowed presets.
    """
    presets, other, resolve = {
        "image": (IMAGE_AUGMENTS, EEG_AUGMENTS, image_augment),
        "eeg": (EEG_AUGMENTS, IMAGE_AUGMENTS, eeg_augment),
    }[modality]
    if value is None:
        try:
            value = DEFAULT_AUGMENT[(modality, task)]
        except KeyError:
            raise UsageError(f"no default augmentation for {modality} {task}; set --augment "
                             f"({', '.join(presets)})") from None
    name = value.get("preset") if isinstance(value, Mapping) else value
    if isinstance(name, str) and name not in presets and name in other:
        here, there = ("image", "EEG") if modality == "image" else ("EEG", "image")
        raise UsageError(f"augmentation {name!r} is an {there} preset, but --data is {here} data; "
                         f"{here} presets: {', '.join(presets)}")
    name, spec = resolve(value)
    return spec, {"preset": name, **spec.to_dict()}


@dataclass
class Split:
    """One split: `load(i)` gives raw item i (a PIL image, or an EEG window `[C, W]`)."""

    load: Callable[[int], Any]
    targets: np.ndarray  # [N] float32 (regression) or int64 (class index)
    groups: np.ndarray  # [N] recording index (EEG windows) or item index (images)
    names: list[str] = field(default_factory=list)  # per group: file path, for reports

    def __len__(self) -> int:
        return len(self.targets)


@dataclass
class PreparedData:
    modality: str  # "image" | "eeg"
    task: str
    target_name: str
    classes: tuple[str, ...]
    splits: dict[str, Split]
    preprocessing: dict[str, Any]  # saved with the model; serving rebuilds eval_transform from it
    augment: Callable[[Any, torch.Generator], torch.Tensor]  # one augmented view (contrastive and baselines)
    eval_transform: Callable[[Any], torch.Tensor]
    encoder_kwargs: dict[str, Any]
    summary: dict[str, Any]  # includes "augment": augment_spec
    # The augmentation used, fully resolved: {"preset": NAME or "custom", **every field} (see resolve_augment).
    augment_spec: dict[str, Any] = field(default_factory=dict)


def _seed_for(*parts: int) -> int:
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h * 0x100000001B3 ^ (p & 0xFFFFFFFFFFFF)) & 0x7FFFFFFFFFFFFFFF
    return h


class SeededDataset(torch.utils.data.Dataset):
    """Items (x, target, group) with x = V augmented views `[V, ...]`, or one
    view `[...]` when views == 1; augmentation seeded by (seed, epoch, index)."""

    def __init__(self, split: Split, augment: Callable[[Any, torch.Generator], torch.Tensor],
                 views: int, seed: int) -> None:
        self.split, self.augment, self.views, self.seed = split, augment, views, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(_seed_for(self.seed, self.epoch, i))
        raw = self.split.load(i)
        views = [self.augment(raw, g) for _ in range(self.views)]
        x = views[0] if self.views == 1 else torch.stack(views)
        return x, torch.as_tensor(self.split.targets[i]), int(self.split.groups[i])


class EvalDataset(torch.utils.data.Dataset):
    def __init__(self, split: Split, transform: Callable[[Any], torch.Tensor]) -> None:
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.transform(self.split.load(i)), torch.as_tensor(self.split.targets[i]), int(self.split.groups[i])


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled item order of one epoch."""
    g = torch.Generator().manual_seed(_seed_for(seed, epoch, -1))
    return torch.randperm(n, generator=g).tolist()


# ----------------------------------------------------------------- modality

def is_eeg_data(data: Path, fmt: str) -> bool:
    if fmt == "eeg":
        return True
    if fmt != "auto":
        return False
    suffixes = tuple(EEG_SUFFIXES)
    if data.is_dir():
        labels = data / "labels.csv"
        if labels.is_file():
            return _csv_points_to_eeg(labels, suffixes)
        return any(p.name.lower().endswith(suffixes) for p in data.rglob("*") if p.is_file())
    if data.suffix.lower() == ".csv" and data.is_file():
        return _csv_points_to_eeg(data, suffixes)
    return False


def _csv_points_to_eeg(path: Path, suffixes: tuple[str, ...]) -> bool:
    try:
        with open(path, newline="") as f:
            row = next(csv.DictReader(f), None)
    except (OSError, UnicodeDecodeError):
        return False  # the image reader reports the problem properly
    return bool(row) and str(row.get("path", "")).lower().endswith(suffixes)


def prepare_data(cfg: TrainConfig) -> PreparedData:
    data = Path(cfg.data)
    if not data.exists():
        raise UserError(f"{data}: no such file or folder (--data)")
    if is_eeg_data(data, cfg.format):
        return _prepare_eeg(cfg, data)
    return _prepare_images(cfg, data)


def _prepare_images(cfg: TrainConfig, data: Path) -> PreparedData:
    aug, aug_record = resolve_augment(cfg.augment, "image", cfg.task)  # before reading data: fail fast
    table = load_image_table(
        data, cfg.target, format=cfg.format, task=cfg.task, seed=cfg.seed,
        on_error="raise" if cfg.on_error == "fail" else "skip",
    )
    if table.task != cfg.task:
        raise UserError(f"{data}: target {cfg.target!r} is {table.task} data, but --loss {cfg.loss} "
                        f"is for {cfg.task}")
    spec = PreprocessSpec.square(cfg.image_size, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    contrastive = ContrastiveAugment(spec, aug)
    evaluate = EvalTransform(spec)

    def split_of(records: tuple[ImageRecord, ...]) -> Split:
        paths = [r.path for r in records]
        return Split(
            load=lambda i: load_image(paths[i]),
            targets=table.targets(records),
            groups=np.arange(len(records)),
            names=[str(p) for p in paths],
        )

    splits = {name: split_of(table.split(name)) for name in SPLITS}
    _require_train_val(splits, data)
    return PreparedData(
        modality="image", task=table.task, target_name=table.target, classes=table.classes,
        splits=splits, preprocessing={"modality": "image", **spec.to_dict()},
        augment=lambda img, g: contrastive(img, generator=g),
        eval_transform=lambda img: evaluate(img),
        encoder_kwargs={}, summary={**table.summary(), "augment": aug_record}, augment_spec=aug_record,
    )


def _prepare_eeg(cfg: TrainConfig, data: Path) -> PreparedData:
    if cfg.task != "regression":
        raise UserError("EEG training supports continuous targets (e.g. --target age) in this version")
    augment, aug_record = resolve_augment(cfg.augment, "eeg", cfg.task)
    spec = EEGSpec.from_dict(cfg.eeg) if cfg.eeg else EEGSpec()
    records = assign_splits(
        list_recordings(data, cfg.target), val_frac=EEG_VAL_FRAC, test_frac=EEG_TEST_FRAC, seed=cfg.seed
    )
    datasets = split_datasets(records, spec)

    def split_of(ds: EEGWindowDataset) -> Split:
        return Split(
            load=lambda i: ds[i][0],
            targets=np.asarray(ds.window_targets, dtype=np.float32),
            groups=np.asarray(ds.recording_index),
            names=[str(p) for p in (ds.paths or [])],
        )

    splits = {name: split_of(datasets[name]) for name in SPLITS if name in datasets}
    _require_train_val(splits, data)
    counts = {name: {"recordings": len(datasets[name].arrays), "windows": len(datasets[name])} for name in datasets}
    return PreparedData(
        modality="eeg", task="regression", target_name=cfg.target, classes=(),
        splits=splits, preprocessing={"modality": "eeg", **spec.to_dict()},
        augment=lambda x, g: augment(x, g),
        eval_transform=lambda x: x,
        encoder_kwargs={"n_chans": spec.n_channels, "n_times": spec.window_samples, "sfreq": spec.sfreq},
        summary={"source": str(data), "target": cfg.target, "task": "regression", "splits": counts,
                 "augment": aug_record},
        augment_spec=aug_record,
    )


def _require_train_val(splits: dict[str, Split], data: Path) -> None:
    for name in ("train", "val"):
        if name not in splits or len(splits[name]) == 0:
            raise UserError(f"{data}: the {name} split is empty; add more data or a 'split' column")
