"""What the trainer sees of a dataset, whatever its modality.

`prepare_data(cfg)` asks the modality plug-in of `--data`
(`supemb.modalities.detect`) for a `PreparedData`: per split an indexable
`Split` (raw item loader + targets + group ids), the augmentation and the
evaluation transform, the recorded preprocessing (saved with the model;
export and serving run the same steps), and the augmentation used
(`augment_spec`: a preset of the plug-in's, chosen by `--augment` or, when
unset, the plug-in's `default_augment` for the task).

Randomness is a pure function of (seed, epoch, index): `SeededDataset` gives
every item its own generator and `epoch_order` the batch order, so a run
resumed mid-epoch sees exactly the data an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from supemb import modalities
from supemb.errors import UsageError, UserError
from supemb.modalities.base import Modality
from supemb.train.config import TrainConfig

SPLITS = ("train", "val", "test")


def resolve_augment(value: str | Mapping[str, Any] | None, modality: str | Modality,
                    task: str, contrastive: bool = False) -> tuple[Any, dict[str, Any]]:
    """`TrainConfig.augment` for this modality and task -> (augmentation, record).

    value: None (the plug-in's default for the task: `contrastive_augment`'s for a
    contrastive loss where it has one, else `default_augment`'s), a preset name,
    or a mapping `{"preset": NAME, **field overrides}`. record: the resolved
    augmentation, `{"preset": NAME or "custom", **every field}` (JSON-friendly;
    resolving it again gives the same augmentation). A name or field the
    modality lacks is a one-line `UsageError` naming the allowed presets.
    """
    plugin = modalities.get(modality) if isinstance(modality, str) else modality
    presets, resolve = plugin.augments()
    if value is None and contrastive:
        value = plugin.contrastive_augment.get(task)
    if value is None:
        try:
            value = plugin.default_augment[task]
        except KeyError:
            raise UsageError(f"no default augmentation for {plugin.title} {task}; set --augment "
                             f"({', '.join(presets)})") from None
    name = value.get("preset") if isinstance(value, Mapping) else value
    if isinstance(name, str) and name not in presets:
        for other in modalities.names():
            there = modalities.get(other)
            if there is not plugin and name in there.augments()[0]:
                raise UsageError(f"augmentation {name!r} is an {there.title} preset, but --data is {plugin.title} "
                                 f"data; {plugin.title} presets: {', '.join(presets)}")
    name, spec = resolve(value)
    return spec, {"preset": name, **spec.to_dict()}


@dataclass
class Split:
    """One split: `load(i)` gives raw item i (a decoded image, or an EEG window `[C, W]`)."""

    load: Callable[[int], Any]
    targets: np.ndarray  # [N] float32 (regression) or int64 (class index)
    groups: np.ndarray  # [N] recording index (EEG windows) or item index (images)
    names: list[str] = field(default_factory=list)  # per group: file path, for reports

    def __len__(self) -> int:
        return len(self.targets)


@dataclass
class PreparedData:
    modality: str  # the plug-in's name (supemb.modalities)
    task: str
    target_name: str
    classes: tuple[str, ...]
    splits: dict[str, Split]
    preprocessing: dict[str, Any]  # the recorded steps (supemb.preprocess.steps); export and serving run them
    augment: Callable[[Any, torch.Generator], torch.Tensor]  # one augmented view (contrastive and baselines)
    eval_transform: Callable[[Any], torch.Tensor]
    encoder_kwargs: dict[str, Any]
    summary: dict[str, Any]  # includes "augment": augment_spec
    # The augmentation used, fully resolved: {"preset": NAME or "custom", **every field} (see resolve_augment).
    augment_spec: dict[str, Any] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)  # what the user should know about the data (printed once)

    @property
    def plugin(self) -> Modality:
        return modalities.get(self.modality)


def _seed_for(*parts: int) -> int:
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h * 0x100000001B3 ^ (p & 0xFFFFFFFFFFFF)) & 0x7FFFFFFFFFFFFFFF
    return h


class SeededDataset(torch.utils.data.Dataset):
    """Items (x, target, group) with x = V augmented views `[V, ...]`, or one view `[...]`
    when views == 1. Keys are (epoch, index) pairs (`EpochBatches` yields them), and the
    augmentation is seeded by (seed, epoch, index): the same in any worker process, on
    any rank, before and after a resume."""

    def __init__(self, split: Split, augment: Callable[[Any, torch.Generator], torch.Tensor],
                 views: int, seed: int) -> None:
        self.split, self.augment, self.views, self.seed = split, augment, views, seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        g = torch.Generator().manual_seed(_seed_for(self.seed, epoch, i))
        raw = self.split.load(i)
        views = [self.augment(raw, g) for _ in range(self.views)]
        x = views[0] if self.views == 1 else torch.stack(views)
        return x, torch.as_tensor(self.split.targets[i]), int(self.split.groups[i])


class EpochBatches(torch.utils.data.Sampler):
    """A batch sampler over epochs: `set_epoch(epoch, skip)` chooses the epoch (and how many of
    its batches are already done); iterating yields this rank's batches of (epoch, index) keys.

    One object for the whole run, so a DataLoader with persistent workers keeps them across
    epochs. Batches: `batches_of(order)`, e.g. `distributed.rank_batches` (this rank's slice of
    each global batch of the seeded epoch order)."""

    def __init__(self, n: int, seed: int, batches_of: Callable[[list[int]], list[list[int]]]) -> None:
        self.n, self.seed, self.batches_of = n, seed, batches_of
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _batches(self) -> list[list[int]]:
        return self.batches_of(epoch_order(self.n, self.seed, self.epoch))[self.skip:]

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self):
        for batch in self._batches():
            yield [(self.epoch, i) for i in batch]


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


@contextlib.contextmanager
def worker_errors() -> Iterator[None]:
    """A UserError raised in a DataLoader worker process reaches the trainer as the worker's
    whole traceback in one message; give it back as the one line it was (naming the file)."""
    try:
        yield
    except UserError as err:
        lines = str(err).strip().splitlines()
        if len(lines) < 2:
            raise
        last = lines[-1]  # "supemb.errors.UserError: data/x.png: corrupt image (...)"
        if last.startswith("supemb.errors.") and ": " in last:
            last = last.split(": ", 1)[1]
        raise type(err)(last) from None


def prepare_data(cfg: TrainConfig) -> PreparedData:
    """`--data` through its modality plug-in (see the module docstring)."""
    data = Path(cfg.data)
    if not data.exists():
        raise UserError(f"{data}: no such file or folder (--data)")
    prepared = modalities.detect(data, cfg.format).training_data(cfg, data)
    check_classes_are_classes(prepared, cfg, data)
    return prepared


def check_classes_are_classes(prepared: PreparedData, cfg: TrainConfig, data: Path) -> None:
    """A class loss on a numeric column with more distinct values than half the training items
    (each value its own class, most with one or two items) is a value target given the wrong
    loss: one line saying so, before anything trains."""
    names, n_train = prepared.classes or (), len(prepared.splits["train"])
    if prepared.task != "classification" or len(names) <= max(20, n_train // 2):
        return
    try:
        [float(name) for name in names]
    except ValueError:
        return
    raise UserError(f"{data}: target {prepared.target_name!r} has {len(names)} distinct numbers over {n_train} "
                    f"training items, which --loss {cfg.loss} would take as {len(names)} classes; values are "
                    "learned with --loss rnc (or l1)")


def splits_of(split_of: Callable[[str], Split | None], data: Path) -> dict[str, Split]:
    """{name: split_of(name)} over train/val/test (a None split is absent); train and val must hold items."""
    splits = {name: s for name in SPLITS if (s := split_of(name)) is not None}
    for name in ("train", "val"):
        if name not in splits or len(splits[name]) == 0:
            raise UserError(f"{data}: the {name} split is empty; add more data or a 'split' column")
    return splits
