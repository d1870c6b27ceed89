"""EEG views cut from around the item's window in its recording (`context_frac`,
the "eeg-context" presets): where the views come from, that evaluation still
sees the window itself, and that records of the other presets read as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from supemb.errors import UserError
from supemb.preprocess.eeg import EEGSpec
from supemb.preprocess.eeg_augment import (
    EEG_AUGMENTS,
    EEGAugment,
    WindowInContext,
    as_window,
    context_crop,
)
from supemb.train.eeg_windows import EEGWindowDataset
from test_eeg import _tagged  # x[r][ch, t] = 1000 r + t: a view's first value tells its recording and start

# Every step but the crop off, so a view's values tell where it was cut from.
CROP_ONLY = EEGAugment(max_shift_frac=0.0, scale_low=1.0, scale_high=1.0, noise_rel_std=0.0, channel_drop_p=0.0,
                       context_frac=1.0)
SPEC = EEGSpec(channels=("C3", "C4"), sfreq=10, l_freq=None, h_freq=None, window_s=2.0, stride_s=1.0)


def test_views_start_within_one_window_of_the_item_and_inside_its_recording() -> None:
    ds = EEGWindowDataset(_tagged([30, 100]), [20.0, 60.0], SPEC)  # W = 20, stride 10
    w = SPEC.window_samples
    for i in range(len(ds)):
        r, s = int(ds.recording_index[i]), int(ds.starts[i])
        item = ds.in_context(i, w)
        assert torch.equal(as_window(item), ds[i][0])  # evaluation sees the window itself
        starts = set()
        for seed in range(800):
            v = CROP_ONLY(item, torch.Generator().manual_seed(seed))
            assert v.shape == (2, w)
            first = int(v[0, 0].item())
            assert first // 1000 == r  # the item's own recording, never another
            torch.testing.assert_close(v[:, 1:] - v[:, :-1], torch.ones(2, w - 1))  # one contiguous stretch
            starts.add(first % 1000)
        lo, hi = max(0, s - w), min(len(_tagged([30, 100])[r][0]) - w, s + w)
        assert starts == set(range(lo, hi + 1)), (i, sorted(starts))  # every start in reach is drawn


def test_a_view_is_seeded_and_the_crop_draws_first() -> None:
    ds = EEGWindowDataset(_tagged([100]), [20.0], SPEC)
    item = ds.in_context(3, 20)
    aug = EEG_AUGMENTS["eeg-context"]
    a, b = aug(item, torch.Generator().manual_seed(5)), aug(item, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    views = {int(aug(item, torch.Generator().manual_seed(s))[0].abs().argmax()) for s in range(20)}
    assert len(views) > 1
    # After the crop's one number, the rest is the plain preset's augmentation of the cropped window.
    g = torch.Generator().manual_seed(7)
    crop = context_crop(item, 1.0, g)
    torch.testing.assert_close(EEG_AUGMENTS["eeg"](crop, g), aug(item, torch.Generator().manual_seed(7)))


def test_a_plain_window_is_not_cropped() -> None:
    x = torch.randn(2, 20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(CROP_ONLY(x, torch.Generator().manual_seed(1)), x)
    assert as_window(x) is x
    # With no context held (margin 0) the view is the window.
    item = EEGWindowDataset(_tagged([40]), [1.0], SPEC).in_context(1, 0)
    assert torch.equal(CROP_ONLY(item, torch.Generator().manual_seed(2)), item.window())


def test_records_without_context_read_as_before() -> None:
    assert "context_frac" not in EEG_AUGMENTS["eeg-light"].to_dict()  # the records of runs written before
    assert EEGAugment.from_dict(EEG_AUGMENTS["eeg-light"].to_dict()) == EEG_AUGMENTS["eeg-light"]
    d = EEG_AUGMENTS["eeg-light-context"].to_dict()
    assert d["context_frac"] == 1.0 and EEGAugment.from_dict(d) == EEG_AUGMENTS["eeg-light-context"]
    with pytest.raises(UserError, match="context_frac"):
        EEGAugment(context_frac=-1.0)


def test_training_items_carry_their_context_and_evaluation_the_window(tmp_path: Path) -> None:
    from supemb.data.synthetic_eeg import make_eeg_dataset
    from supemb.train.config import TrainConfig
    from supemb.train.data import prepare_data

    make_eeg_dataset(tmp_path / "eeg", 12, duration_s=30.0, sfreq=100.0, seed=3)
    common = {"data": str(tmp_path / "eeg"), "target": "age", "out": str(tmp_path / "r"), "loss": "rnc"}
    plain = prepare_data(TrainConfig(**common, augment="eeg-light"))
    ctx = prepare_data(TrainConfig(**common, augment="eeg-light-context"))
    assert ctx.augment_spec["preset"] == "eeg-light-context" and ctx.augment_spec["context_frac"] == 1.0
    for name, split in plain.splits.items():
        other = ctx.splits[name]
        np.testing.assert_array_equal(split.targets, other.targets)
        for i in range(len(split)):
            item = other.load(i)
            assert isinstance(item, WindowInContext) and item.signal.shape[1] > item.length
            assert torch.equal(ctx.eval_transform(item), plain.eval_transform(split.load(i)))
            v = ctx.augment(item, torch.Generator().manual_seed(i))
            assert v.shape == plain.eval_transform(split.load(i)).shape
