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
    val_from_train: bool = True,
) -> list[R]:
    """Give every record without a split one; records with a split keep it.

    The draw sorts the unsplit records by path first, so it does not depend on
    the order of the list. stratify: split each class (target value) on its
    own, so rare classes reach val and test. Returns records in input order.

    Where that leaves no val item at all, val comes from the training items instead
    (`_val_from_train`; val_from_train=False: not): fixed splits with only train and test (a
    published split), or classes each too small for a per-class draw (five or fewer at 10 %).
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
    if val_from_train and val_frac > 0 and not any(r.split == "val" for r in out):
        # drawn training rows may become val or test; fixed ones (all given) only val
        pool = [i for i in todo if out[i].split == "train"] or [i for i, r in enumerate(out) if r.split == "train"]
        no_test = not any(out[i].split == "test" for i in todo)
        out = _val_from_train(out, pool, val_frac, test_frac if todo and no_test else 0.0, seed, stratify)
    return out


def _val_from_train(records: list[R], pool: list[int], val_frac: float, test_frac: float, seed: int,
                    stratify: bool) -> list[R]:
    """round(n * val_frac) of the n training records `pool` (at least one) become val, and, with
    test_frac > 0, the next round(n * test_frac) become test. Seeded; with stratify the classes
    take turns (in a seeded order), each keeping one item in train, so small classes are spread
    over val and test rather than each rounding to none."""
    train = sorted(pool, key=lambda i: str(records[i].path))
    groups: dict[str, list[int]] = {}
    for i in train:
        groups.setdefault(str(records[i].target) if stratify else "", []).append(i)
    rng = np.random.default_rng(seed + 7_777_777)
    queues = [[g[j] for j in rng.permutation(len(g))][1 if stratify else 0:] for _, g in sorted(groups.items())]
    queues = [queues[j] for j in rng.permutation(len(queues))]
    order = [q[j] for j in range(max(map(len, queues), default=0)) for q in queues if j < len(q)]  # turns
    spare = len(order) - (0 if stratify else 1)  # at least one item stays in train (stratify: one per class)
    n_val = min(max(1, round(len(train) * val_frac)), spare)
    n_test = min(round(len(train) * test_frac), spare - n_val)
    out = list(records)
    for rank, i in enumerate(order[: n_val + n_test]):
        out[i] = replace(records[i], split="val" if rank < n_val else "test")  # type: ignore[type-var]
    return out
