"""Labelled image records and the table a dataset layout becomes.

`ImageRecord` (path, target, split), `ImageTable` (the records of one
dataset, its task and classes), and the shared row handling of every layout
reader: `RawRow` (a row with its target still text), `RowProblems` (bad rows
raise or are skipped and listed) and `make_table` (type the targets: floats
for regression, class names for classification). `verify_images` decodes
every record once, so truncated files surface before training starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from supemb.data.image_files import DEFAULT_MAX_PIXELS, load_image
from supemb.data.splits import SPLITS, assign_splits
from supemb.errors import UserError

TASKS: tuple[str, ...] = ("auto", "regression", "classification")
ON_ERROR: tuple[str, ...] = ("raise", "skip")

Task = Literal["regression", "classification"]


@dataclass(frozen=True)
class ImageRecord:
    """One labelled image.

    target: a float for regression, the class name (str) for classification.
    split: "train" / "val" / "test", or None until `assign_splits` draws one.
    """

    path: Path
    target: float | str
    split: str | None = None


@dataclass(frozen=True)
class SkippedRow:
    """A row (or file) left out with on_error="skip". where: "<csv>: line N" or a file path."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(frozen=True)
class ImageTable:
    """The labelled images of one dataset.

    task: "regression" (targets are floats) or "classification" (targets are
    class names, `classes` lists them sorted; a class index is a position in
    `classes`). skipped: the rows left out with on_error="skip".
    """

    records: tuple[ImageRecord, ...]
    target: str
    task: Task
    classes: tuple[str, ...] = ()
    layout: str = "csv"
    source: Path | None = None
    skipped: tuple[SkippedRow, ...] = ()

    def __post_init__(self) -> None:
        if self.task not in ("regression", "classification"):
            raise ValueError(f"task must be 'regression' or 'classification', not {self.task!r}")
        if self.task == "classification":
            known = set(self.classes)
            missing = {r.target for r in self.records} - known
            if missing:
                raise ValueError(f"targets not in classes: {sorted(map(str, missing))[:5]}")
        elif self.classes:
            raise ValueError("a regression table has no classes")

    def __len__(self) -> int:
        return len(self.records)

    def split(self, name: str) -> tuple[ImageRecord, ...]:
        """The records of split `name` ("train", "val" or "test")."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {name!r}")
        return tuple(r for r in self.records if r.split == name)

    def encode(self, target: float | str) -> float | int:
        """A record's target as a model sees it: the float, or the class index."""
        if self.task == "regression":
            return float(target)
        return self.classes.index(str(target))

    def targets(self, records: Sequence[ImageRecord] | None = None) -> np.ndarray:
        """Targets [N]: float32 for regression, int64 class indices for classification."""
        recs = self.records if records is None else records
        if self.task == "regression":
            return np.array([float(r.target) for r in recs], dtype=np.float32)
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[str(r.target)] for r in recs], dtype=np.int64)

    def with_splits(
        self, *, val_frac: float = 0.1, test_frac: float = 0.1, seed: int = 0, stratify: bool | None = None
    ) -> ImageTable:
        """Draw a split for every record that has none (see `assign_splits`).

        stratify: per class; None means "when the task is classification".
        """
        strat = self.task == "classification" if stratify is None else stratify
        recs = assign_splits(self.records, val_frac=val_frac, test_frac=test_frac, seed=seed, stratify=strat)
        return replace(self, records=tuple(recs))

    def summary(self) -> dict[str, Any]:
        """JSON-friendly counts for logs and the training run."""
        counts = {s: sum(r.split == s for r in self.records) for s in SPLITS}
        counts["unsplit"] = sum(r.split is None for r in self.records)
        return {
            "source": str(self.source) if self.source is not None else None,
            "layout": self.layout,
            "target": self.target,
            "task": self.task,
            "classes": list(self.classes),
            "n_records": len(self.records),
            "splits": counts,
            "n_skipped": len(self.skipped),
            "skipped": [str(s) for s in self.skipped],
        }


@dataclass(frozen=True)
class RawRow:
    """A row before its target is typed: target is the text from the CSV or file name."""

    where: str
    path: Path
    target: str
    split: str | None
    problem: str | None = None  # found while reading; reported in row order by make_table


class RowProblems:
    """Collects bad rows: raises on the first with on_error="raise". Files that are no
    error but not used either (`leave_out`) are listed whatever on_error says."""

    def __init__(self, on_error: str) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")
        self.raise_ = on_error == "raise"
        self.skipped: list[SkippedRow] = []

    def bad(self, where: str, reason: str) -> None:
        if self.raise_:
            raise UserError(f"{where}: {reason}")
        self.skipped.append(SkippedRow(where, reason))

    def leave_out(self, where: str, reason: str) -> None:
        """A file that is not used, not an error (e.g. an image beside the class folders)."""
        self.skipped.append(SkippedRow(where, reason))


def make_table(
    rows: Sequence[RawRow], target: str, task: str, problems: RowProblems, *, layout: str, source: Path
) -> ImageTable:
    """Type the targets: floats for regression, class names for classification."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    if task == "auto":
        filled = [r.target for r in rows if r.target]
        numeric = sum(_parse_number(t) is not None for t in filled)
        # A mostly numeric column is a regression target with a few typos
        # (reported as bad rows), not a classification with 80 classes.
        task = "regression" if filled and numeric * 2 > len(filled) else "classification"
    records: list[ImageRecord] = []
    for r in rows:
        if r.problem is not None:
            problems.bad(r.where, r.problem)
            continue
        if not r.target:
            problems.bad(r.where, f"empty {target!r}")
            continue
        if task == "regression":
            v = _parse_number(r.target)
            if v is None:
                problems.bad(r.where, f"{target!r} value {r.target!r} is not a number")
                continue
            if not math.isfinite(v):
                problems.bad(r.where, f"{target!r} value {r.target!r} is {'NaN' if math.isnan(v) else 'not finite'}")
                continue
            records.append(ImageRecord(r.path, v, r.split))
        else:
            records.append(ImageRecord(r.path, r.target, r.split))
    if not records:
        detail = f"; first problem: {problems.skipped[0]}" if problems.skipped else ""
        raise UserError(f"{source}: no usable images ({len(problems.skipped)} skipped{detail})")
    classes = _sorted_classes({str(r.target) for r in records}) if task == "classification" else ()
    return ImageTable(
        records=tuple(records),
        target=target,
        task=task,  # type: ignore[arg-type]
        classes=classes,
        layout=layout,
        source=source,
        skipped=tuple(problems.skipped),
    )


def _parse_number(s: str) -> float | None:
    """float(s), or None when it is not a number ("nan" and "inf" are numbers here)."""
    try:
        return float(s)
    except ValueError:
        return None


def _sorted_classes(names: set[str]) -> tuple[str, ...]:
    """Numeric class names in numeric order ("2" before "10"), else text order."""
    if all(_parse_number(n) is not None and math.isfinite(float(n)) for n in names):
        return tuple(sorted(names, key=lambda n: (float(n), n)))
    return tuple(sorted(names))


def verify_images(
    records: Sequence[ImageRecord], *, on_error: str = "raise", max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> tuple[list[ImageRecord], list[SkippedRow]]:
    """Decode every image once (catches truncated files before training starts).

    Returns (the records that decode, the ones that did not).
    """
    problems = RowProblems(on_error)
    good: list[ImageRecord] = []
    for r in records:
        try:
            load_image(r.path, max_pixels=max_pixels)
        except UserError as e:
            problems.bad(str(r.path), str(e).removeprefix(f"{r.path}: "))
            continue
        good.append(r)
    return good, problems.skipped
