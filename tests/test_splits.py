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
