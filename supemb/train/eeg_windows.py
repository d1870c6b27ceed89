"""EEG recordings -> torch datasets of windows, for training.

`EEGWindowDataset` holds each recording's preprocessed signal [C, T] once
(`supemb.preprocess.eeg.preprocess_recording`) and serves its windows
(`make_windows`); `split_datasets` builds one per split, so a recording's
windows never straddle two splits. Serving does not need this module (it
uses `supemb.preprocess.eeg.recording_windows`), so torch stays out of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from supemb.data.eeg_files import EEGRecord
from supemb.data.splits import SPLITS
from supemb.errors import UserError
from supemb.preprocess.eeg import EEGSpec, make_windows, preprocess_recording
from supemb.preprocess.eeg_augment import WindowInContext


class EEGWindowDataset(Dataset):
    """Windows of preprocessed recordings.

    Item i = (x float32 [C, W] (or whatever `transform(x)` returns, e.g.
    two views [2, C, W]), target, recording index). target is a float32
    scalar tensor for numeric targets, an int64 class index (into
    `self.classes`) for string targets. Build one dataset per split from
    records of that split, so a recording's windows stay in one split.

    Attributes: arrays (list of [C, T]), targets ([R] per recording),
    starts ([N] window starts), recording_index ([N]), classes (list or None).
    """

    def __init__(
        self,
        arrays: Sequence[np.ndarray],
        targets: Sequence[float | str],
        spec: EEGSpec,
        *,
        transform: Callable[[torch.Tensor], Any] | None = None,
        classes: Sequence[str] | None = None,
        paths: Sequence[Path] | None = None,
    ) -> None:
        if len(arrays) != len(targets):
            raise ValueError(f"{len(arrays)} arrays but {len(targets)} targets")
        self.spec = spec
        self.arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]
        self.paths = list(paths) if paths is not None else None
        self.transform = transform
        is_class = any(isinstance(t, str) for t in targets)
        if is_class:
            self.classes: list[str] | None = sorted({str(t) for t in targets}) if classes is None else list(classes)
            pos = {c: i for i, c in enumerate(self.classes)}
            unknown = sorted({str(t) for t in targets} - set(pos))
            if unknown:
                raise UserError(f"EEG targets: classes {unknown} are not among {self.classes}")
            self.targets = np.array([pos[str(t)] for t in targets], dtype=np.int64)
        else:
            self.classes = None
            self.targets = np.asarray(targets, dtype=np.float32)
        starts, rec = [], []
        for r, a in enumerate(self.arrays):
            if a.ndim != 2 or a.shape[0] != spec.n_channels:
                raise ValueError(f"recording {r}: shape {a.shape}, expected [{spec.n_channels}, T]")
            s = make_windows(a.shape[1], spec.sfreq, spec.window_s, spec.stride_s, spec.offset_s)
            starts.append(s)
            rec.append(np.full(len(s), r, dtype=np.int64))
        self.starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self.recording_index = np.concatenate(rec) if rec else np.zeros(0, np.int64)

    @classmethod
    def from_records(
        cls,
        records: Sequence[EEGRecord],
        spec: EEGSpec,
        *,
        transform: Callable[[torch.Tensor], Any] | None = None,
        classes: Sequence[str] | None = None,
    ) -> "EEGWindowDataset":
        """Read and preprocess each recording once; hold the [C, T] arrays in memory."""
        arrays = [preprocess_recording(r.path, spec) for r in records]
        return cls(
            arrays, [r.target for r in records], spec,
            transform=transform, classes=classes, paths=[r.path for r in records],
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def window_targets(self) -> np.ndarray:
        """[N] the target of every window (its recording's)."""
        return self.targets[self.recording_index]

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor, int]:
        r, s = int(self.recording_index[i]), int(self.starts[i])
        x = torch.from_numpy(self.arrays[r][:, s : s + self.spec.window_samples].copy())
        if self.transform is not None:
            x = self.transform(x)
        return x, torch.tensor(self.targets[r]), r

    def in_context(self, i: int, margin: int) -> WindowInContext:
        """Window i with up to `margin` samples of its recording on each side (fewer at its ends)."""
        r, s, w = int(self.recording_index[i]), int(self.starts[i]), self.spec.window_samples
        lo, hi = max(0, s - margin), min(self.arrays[r].shape[1], s + w + margin)
        return WindowInContext(torch.from_numpy(self.arrays[r][:, lo:hi]), s - lo, w)


def split_datasets(
    records: Sequence[EEGRecord], spec: EEGSpec, **kwargs: Any
) -> dict[str, EEGWindowDataset]:
    """One dataset per split present in `records` (every record must have a split).

    String targets share one class list (sorted over all records) across splits.
    kwargs go to `EEGWindowDataset.from_records` (e.g. transform, for "train"
    only pass it yourself).
    """
    if any(r.split is None for r in records):
        raise ValueError("assign splits first (supemb.data.splits.assign_splits)")
    classes = kwargs.pop("classes", None)
    if classes is None and any(isinstance(r.target, str) for r in records):
        classes = sorted({str(r.target) for r in records})
    return {
        sp: EEGWindowDataset.from_records([r for r in records if r.split == sp], spec, classes=classes, **kwargs)
        for sp in SPLITS
        if any(r.split == sp for r in records)
    }
