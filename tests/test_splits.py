"""The one split assignment (supemb.data.splits) for images and EEG.

The pinned strings were computed with the code before the split was shared
(supemb.data.images.split_labels / assign_splits and supemb.data.eeg.
split_indices / assign_splits): the same inputs and seed must keep giving
the same assignments, or every saved run's split would silently change.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from supemb.data.eeg_files import EEG_TEST_FRAC, EEG_VAL_FRAC, EEGRecord
from supemb.data.image_table import ImageRecord
from supemb.data.splits import assign_splits, split_labels
from supemb.errors import UserError

_CODE = {"train": ".", "val": "v", "test": "T", None: "-"}


def _code(splits) -> str:  # type: ignore[no-untyped-def]
    return "".join(_CODE[s] for s in splits)


def test_split_labels_pinned() -> None:
    assert _code(split_labels(20, val_frac=0.1, test_frac=0.2, seed=7)) == "...v....v...TTT.T..."
    assert _code(split_labels(3, val_frac=0.4, test_frac=0.4, seed=0)) == "T.v"
    # The former EEG split_indices(20, 0.15, 0.15, seed=3) and split_indices(13).
    assert _code(split_labels(20, val_frac=0.15, test_frac=0.15, seed=3)) == "...T....T...vT..v.v."
    assert _code(split_labels(13, val_frac=EEG_VAL_FRAC, test_frac=EEG_TEST_FRAC)) == "..v.T..T..v.."


def test_assign_splits_images_pinned() -> None:
    recs = [ImageRecord(Path(f"img{i:02d}.png"), "abc"[i % 3], "test" if i == 5 else None) for i in range(15)]
    assert _code(r.split for r in assign_splits(recs, seed=4)) == ".T...T.......v."
    strat = assign_splits(recs, val_frac=0.2, test_frac=0.2, seed=4, stratify=True)
    assert _code(r.split for r in strat) == "..v..Tv...TTTv."
    assert all(isinstance(r, ImageRecord) for r in strat)


def test_assign_splits_eeg_pinned() -> None:
    recs = [EEGRecord(Path(f"rec{i:02d}.edf"), float(i), "val" if i == 2 else None) for i in range(12)]
    out = assign_splits(recs, val_frac=EEG_VAL_FRAC, test_frac=EEG_TEST_FRAC, seed=5)
    assert _code(r.split for r in out) == ".Tv.T...v..v"
    assert _code(r.split for r in assign_splits(recs, val_frac=0.2, test_frac=0.1, seed=5)) == ".Tv.....v..v"
    assert all(isinstance(r, EEGRecord) for r in out)


def test_split_fractions_checked() -> None:
    with pytest.raises(UserError, match="sum to < 1"):
        split_labels(10, val_frac=0.5, test_frac=0.5)


def test_classes_too_small_for_a_per_class_draw_still_give_val_and_test() -> None:
    """Ten classes of five: each class alone rounds 10 % to none; the classes take turns instead."""
    recs = [ImageRecord(Path(f"{c}/{i}.png"), str(c), None) for c in range(10) for i in range(5)]
    out = assign_splits(recs, stratify=True)
    held = {s: sorted(r.target for r in out if r.split == s) for s in ("val", "test")}
    assert len(held["val"]) == len(held["test"]) == 5
    assert len(set(held["val"] + held["test"])) == 10  # one item of every class, each keeps four in train
    assert out == assign_splits(recs, stratify=True)  # seeded


def test_fixed_train_and_test_only_draw_val_from_train_and_keep_test() -> None:
    recs = [EEGRecord(Path(f"r{i:02d}.edf"), float(i), "test" if i >= 40 else "train") for i in range(50)]
    out = assign_splits(recs)
    assert [r.split for r in out[40:]] == ["test"] * 10  # the given test split is untouched
    val = [r for r in out[:40] if r.split == "val"]
    assert len(val) == 4 and all(r.split in ("train", "val") for r in out[:40])


def test_a_draw_that_gives_val_items_is_left_as_it_was() -> None:
    recs = [ImageRecord(Path(f"img{i:02d}.png"), "abc"[i % 3], None) for i in range(30)]
    strat = assign_splits(recs, seed=2, stratify=True)
    per_class = [split_labels(10, seed=2 + 1_000_003 * k) for k in range(3)]  # each class's own draw, as before
    for k, labels in enumerate(per_class):
        mine = sorted((r for r in strat if r.target == "abc"[k]), key=lambda r: str(r.path))
        assert [r.split for r in mine] == labels
