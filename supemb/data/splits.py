"""Seeded train/val/test assignment, one implementation for images and EEG.

`split_labels(n)` draws a split for n items; `assign_splits(records)` gives
every record without a split one (images: `ImageRecord`; EEG: `EEGRecord`,
drawn over recordings, never windows). Same inputs and seed, same answer.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Protocol, Sequence, TypeVar

import numpy as np

from supemb.errors import UserError

SPLITS: tuple[str, ...] = ("train", "val", "test")


class Splittable(Protocol):
    """A frozen dataclass with a path, a target and a split (None: not drawn yet)."""

    @property
    def path(self) -> Path: ...
    @property
    def target(self) -> float | str: ...
    @property
    def split(self) -> str | None: ...


R = TypeVar("R", bound=Splittable)


def split_labels(n: int, *, val_frac: float = 0.1, test_frac: float = 0.1, seed: int = 0) -> list[str]:
    """A seeded split of n items: "train"/"val"/"test" per item.

    round(n * frac) items go to val and to test, keeping at least one train
    item; the same (n, fractions, seed) always gives the same answer.
    """
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise UserError(f"split fractions val={val_frac}, test={test_frac} must each be in [0, 1) and sum to < 1")
    n_val, n_test = round(n * val_frac), round(n * test_frac)
    while n > 0 and n_val + n_test >= n:  # tiny n: keep one training item
        if n_test >= n_val and n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    order = np.random.default_rng(seed).permutation(n)
    out = ["train"] * n
    for i in order[:n_val]:
        out[i] = "val"
    for i in order[n_val : n_val + n_test]:
        out[i] = "test"
    return out


def assign_splits(
    records: Sequence[R],
    *,
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    seed: int = 0,
    stratify: bool = False,
) -> list[R]:
    """Give every record without a split one; records with a split keep it.

    The draw sorts the unsplit records by path first, so it does not depend on
    the order of the list. stratify: split each class (target value) on its
    own, so rare classes reach val and test. Returns records in input order.
    """
    todo = sorted((i for i, r in enumerate(records) if r.split is None), key=lambda i: str(records[i].path))
    if stratify:
        groups: dict[str, list[int]] = {}
        for i in todo:
            groups.setdefault(str(records[i].target), []).append(i)
        parts = [groups[k] for k in sorted(groups)]
    else:
        parts = [todo]
    out = list(records)
    for k, idx in enumerate(parts):
        # One seed stream per group, so adding a class does not reshuffle the others.
        labels = split_labels(len(idx), val_frac=val_frac, test_frac=test_frac, seed=seed + 1_000_003 * k)
        for i, lab in zip(idx, labels):
            out[i] = replace(records[i], split=lab)  # type: ignore[type-var]
    return out
