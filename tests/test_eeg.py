"""The EEG pipeline: channel names, reading, picking, errors, windows, targets,
splits, the window dataset and augmentations."""

from __future__ import annotations

import json
from pathlib import Path

import mne
import numpy as np
import pytest
import torch

from supemb.data.eeg_files import (
    EEG_TEST_FRAC,
    EEG_VAL_FRAC,
    EEGRecord,
    age_from_header,
    list_recordings,
    normalize_channel_name,
    read_recording,
    read_targets_csv,
)
from supemb.data.splits import assign_splits, split_labels
from supemb.data.synthetic_eeg import make_eeg_dataset, write_edf
from supemb.errors import UserError
from supemb.preprocess import eeg_augment as aug
from supemb.preprocess.eeg import (
    EEGSpec,
    make_windows,
    preprocess_raw,
    preprocess_recording,
    recording_windows,
    slice_windows,
)
from supemb.train.eeg_windows import EEGWindowDataset, split_datasets

RAW_SPEC = dict(l_freq=None, h_freq=None, scaling="fixed", unit_uv=1.0)  # output == microvolts


def _write(path: Path, names: list[str], data_uv: np.ndarray, sfreq: float = 100.0, patient: str = "X X X X") -> Path:
    return write_edf(path, data_uv, sfreq, names, patient=patient)


def _distinct(n_ch: int, n_times: int, seed: int = 0) -> np.ndarray:
    """[C, T] microvolts, every channel different (random walk + channel offset)."""
    rng = np.random.default_rng(seed)
    return rng.normal(0, 10, (n_ch, n_times)) + 50.0 * np.arange(n_ch)[:, None]


# ------------------------------------------------------------ channel names


@pytest.mark.parametrize(
    "label, expected",
    [
        ("EEG FP1-REF", "FP1"),
        ("EEG Fp1-LE", "FP1"),
        ("  eeg t3-ref ", "T3"),
        ("EEG T3-REF", "T3"),
        ("T7", "T3"),
        ("EEG T8-REF", "T4"),
        ("P7", "T5"),
        ("EEG P8-LE", "T6"),
        ("Cz", "CZ"),
        ("O2-AVG", "O2"),
        ("FP1-F7", "FP1-F7"),  # bipolar: not a reference suffix
        ("EEG EKG1-REF", "EKG1"),
    ],
)
def test_normalize_channel_name(label: str, expected: str) -> None:
    assert normalize_channel_name(label) == expected


def test_spec_normalises_and_round_trips_json() -> None:
    spec = EEGSpec(channels=("Fp1", "T7", "EEG O1-REF"), sfreq=128, window_s=2.0, stride_s=0.5)
    assert spec.channels == ("FP1", "T3", "O1")
    assert (spec.window_samples, spec.stride_samples) == (256, 64)
    back = EEGSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec
    assert len(EEGSpec().channels) == 19


@pytest.mark.parametrize(
    "kw",
    [dict(h_freq=60.0), dict(l_freq=45.0, h_freq=40.0), dict(scaling="zscore"), dict(channels=("T3", "T7")), dict(window_s=0.001)],
)
def test_spec_rejects_bad_values(kw: dict) -> None:
    with pytest.raises(UserError):
        EEGSpec(**kw)


def test_spec_from_dict_refuses_unknown_fields() -> None:
    d = EEGSpec().to_dict() | {"notch": 60}
    with pytest.raises(UserError, match="notch"):
        EEGSpec.from_dict(d)


# ----------------------------------------------------------------- reading


def test_read_edf_we_wrote(tmp_path: Path) -> None:
    names = ["EEG FP1-REF", "EEG O1-REF", "EEG CZ-REF"]
    x = _distinct(3, 500)
    f = _write(tmp_path / "a.edf", names, x, sfreq=100)
    raw = read_recording(f)
    assert raw.ch_names == names
    assert raw.info["sfreq"] == 100
    # mne stores volts; 16-bit quantisation over each channel's range
    tol = 2 * np.abs(x).max() / 65535 + 1e-9
    np.testing.assert_allclose(raw.get_data() * 1e6, x, atol=tol)


def test_pick_and_order_channels(tmp_path: Path) -> None:
    names = ["EEG C3-REF", "EEG FP1-LE", "EEG O1-REF", "EEG T7-REF", "EEG EKG1-REF"]
    x = _distinct(5, 400)
    f = _write(tmp_path / "order.edf", names, x)
    spec = EEGSpec(channels=("O1", "FP1", "T3"), sfreq=100, window_s=2, stride_s=2, clip_uv=1e4, **RAW_SPEC)
    out = preprocess_recording(f, spec)
    assert out.dtype == np.float32 and out.shape == (3, 400)
    tol = 2 * np.abs(x).max() / 65535 + 1e-3
    np.testing.assert_allclose(out, x[[2, 1, 3]], atol=tol)


def test_clip_is_in_microvolts(tmp_path: Path) -> None:
    x = np.zeros((2, 300))
    x[0, 10], x[1, 20] = 2000.0, -1500.0
    f = _write(tmp_path / "spike.edf", ["EEG O1-REF", "EEG O2-REF"], x)
    spec = EEGSpec(channels=("O1", "O2"), sfreq=100, window_s=1, stride_s=1, clip_uv=800, **RAW_SPEC)
    out = preprocess_recording(f, spec)
    assert out[0, 10] == pytest.approx(800.0) and out[1, 20] == pytest.approx(-800.0)


def test_resample_and_bandpass(tmp_path: Path) -> None:
    sf = 250.0
    t = np.arange(int(20 * sf)) / sf
    x = (40 * np.sin(2 * np.pi * 10 * t) + 30 * np.sin(2 * np.pi * 60 * t) + 100.0)[None]
    raw = mne.io.RawArray(x * 1e-6, mne.create_info(["EEG O1-REF"], sf, "eeg"), verbose="error")
    spec = EEGSpec(channels=("O1",), sfreq=100, l_freq=1, h_freq=40, scaling="fixed", unit_uv=1.0, window_s=4, stride_s=4)
    out = preprocess_raw(raw, spec, source="sine")[0]
    assert out.shape == (2000,)
    mid = out[300:-300]  # away from filter edges
    assert abs(mid.mean()) < 1.0  # the 100 uV offset is gone
    spec_amp = 2 * np.abs(np.fft.rfft(mid)) / len(mid)
    freqs = np.fft.rfftfreq(len(mid), 1 / 100)
    assert spec_amp[np.argmin(abs(freqs - 10))] == pytest.approx(40, rel=0.05)
    # 60 Hz is above the new Nyquist (50 Hz): it must not fold back to 40 Hz
    assert spec_amp[np.argmin(abs(freqs - 40))] < 1.0


def test_robust_scaling(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(30, 5, 2000), rng.normal(-10, 40, 2000), np.zeros(2000)])
    raw = mne.io.RawArray(x * 1e-6, mne.create_info(["A", "B", "C"], 100.0, "eeg"), verbose="error")
    spec = EEGSpec(channels=("A", "B", "C"), sfreq=100, l_freq=None, h_freq=None, scaling="robust", window_s=5, stride_s=5)
    from supemb.preprocess.eeg import FlatChannelWarning

    with pytest.warns(FlatChannelWarning, match="<recording>: C flat"):
        out = preprocess_raw(raw, spec)
    q75, q25 = np.percentile(out[:2], [75, 25], axis=1)
    np.testing.assert_allclose(np.median(out[:2], axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(q75 - q25, 1.349, rtol=1e-3)
    assert np.all(out[2] == 0)  # flat channel not blown up


def test_missing_channels_error_names_file_and_channels(tmp_path: Path) -> None:
    names = [f"EEG {c}-REF" for c in EEGSpec().channels if c not in ("T4", "O2")] + ["EEG A1-REF", "EEG A2-REF"]
    f = _write(tmp_path / "nine.edf", names, _distinct(len(names), 1500))
    with pytest.raises(UserError) as e:
        preprocess_recording(f, EEGSpec())
    msg = str(e.value)
    assert "nine.edf" in msg and "T4" in msg and "O2" in msg and "missing" in msg
    assert "\n" not in msg


def test_too_few_channels(tmp_path: Path) -> None:
    f = _write(tmp_path / "few.edf", ["EEG O1-REF", "EEG O2-REF"], _distinct(2, 1500))
    with pytest.raises(UserError, match=r"few\.edf: too few channels.*has 2 channels"):
        preprocess_recording(f, EEGSpec())


def test_too_short_error_says_how_long(tmp_path: Path) -> None:
    names = [f"EEG {c}-REF" for c in EEGSpec().channels]
    f = _write(tmp_path / "short.edf", names, _distinct(19, 500), sfreq=100)  # 5 s
    with pytest.raises(UserError) as e:
        preprocess_recording(f, EEGSpec(window_s=10))
    msg = str(e.value)
    assert "short.edf" in msg and "5.00 s" in msg and "10.00 s" in msg


def test_unreadable_and_absent_files(tmp_path: Path) -> None:
    bad = tmp_path / "junk.edf"
    bad.write_bytes(b"this is not an EDF file at all" * 20)
    with pytest.raises(UserError) as e:
        read_recording(bad)
    assert "junk.edf" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="nowhere.edf"):
        read_recording(tmp_path / "nowhere.edf")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(UserError, match="not an EEG file"):
        read_recording(tmp_path / "x.txt")


@pytest.mark.parametrize("keep, reason", [
    (3000, "the header is incomplete: the file has 3000 bytes, its header of 22 signals needs 5888"),
    (100, "the header is incomplete: the file has 100 bytes, a header needs at least 256"),
    (5888, "the file ends before its data does: it has 5888 bytes, its header promises 115888"),
    (0, "the file is empty"),
], ids=["mid-header", "first-256-bytes", "no-data", "empty"])
def test_a_truncated_edf_says_so(tmp_path: Path, keep: int, reason: str) -> None:
    whole = make_eeg_dataset(tmp_path / "data", 1, duration_s=10) / "rec_000.edf"
    cut = tmp_path / "trunc.edf"
    cut.write_bytes(whole.read_bytes()[:keep])
    with pytest.raises(UserError) as e:
        read_recording(cut)
    assert str(e.value) == f"{cut}: truncated or corrupt EDF ({reason})"


def test_recording_windows_accepts_raw() -> None:
    x = _distinct(3, 1050, seed=3)
    raw = mne.io.RawArray(x * 1e-6, mne.create_info(["EEG C3-REF", "EEG C4-REF", "EEG CZ-REF"], 100.0, "eeg"), verbose="error")
    spec = EEGSpec(channels=("CZ", "C3"), sfreq=100, window_s=2, stride_s=1.5, clip_uv=1e4, **RAW_SPEC)
    w = recording_windows(raw, spec)
    assert w.shape == (6, 2, 200) and w.dtype == np.float32  # floor((1050-200)/150)+1
    np.testing.assert_allclose(w[3], x[[2, 0], 450:650], atol=1e-3)


# ---------------------------------------------------------------- windowing


@pytest.mark.parametrize(
    "n_times, sfreq, window_s, stride_s, offset_s, starts",
    [
        (99, 100, 1.0, 1.0, 0.0, []),  # T < W
        (100, 100, 1.0, 1.0, 0.0, [0]),  # T == W
        (199, 100, 1.0, 1.0, 0.0, [0]),  # tail shorter than a stride dropped
        (200, 100, 1.0, 1.0, 0.0, [0, 100]),
        (250, 100, 1.0, 0.5, 0.0, [0, 50, 100, 150]),
        (250, 100, 1.0, 0.5, 0.3, [30, 80, 130]),
        (129, 100, 1.0, 0.5, 0.3, []),  # offset leaves 99 < 100
        (130, 100, 1.0, 0.5, 0.3, [30]),
        (1000, 256, 2.0, 0.25, 0.0, [0, 64, 128, 192, 256, 320, 384, 448]),
    ],
)
def test_make_windows_exact(n_times, sfreq, window_s, stride_s, offset_s, starts) -> None:
    got = make_windows(n_times, sfreq, window_s, stride_s, offset_s)
    assert got.dtype == np.int64
    assert got.tolist() == starts


def test_make_windows_count_formula_against_brute_force() -> None:
    for t in range(0, 60):
        for w in (1, 5, 10):
            for s in (1, 3, 10, 17):
                for o in (0, 4):
                    got = make_windows(t, 10.0, w / 10, s / 10, o / 10)
                    brute = [st for st in range(o, t) if (st - o) % s == 0 and st + w <= t]
                    assert got.tolist() == brute
                    span = t - o
                    assert len(got) == ((span - w) // s + 1 if span >= w else 0)


def test_slice_windows() -> None:
    x = np.arange(3 * 20, dtype=np.float32).reshape(3, 20)
    starts = make_windows(20, 1.0, 6, 4)
    out = slice_windows(x, starts, 6)
    assert out.shape == (4, 3, 6)
    for i, s in enumerate(starts):
        np.testing.assert_array_equal(out[i], x[:, s : s + 6])
    assert slice_windows(x, np.zeros(0, np.int64), 6).shape == (0, 3, 6)


# ------------------------------------------------------------------ dataset


def _tagged(lengths: list[int], c: int = 2) -> list[np.ndarray]:
    """x[r][ch, t] = 1000 r + t: a window's first value tells its recording and start."""
    return [np.tile(1000.0 * r + np.arange(n), (c, 1)).astype(np.float32) for r, n in enumerate(lengths)]


def test_dataset_windows_targets_and_indices() -> None:
    spec = EEGSpec(channels=("C3", "C4"), sfreq=10, l_freq=None, h_freq=None, window_s=2.0, stride_s=1.0, offset_s=0.5)
    arrays = _tagged([25, 20, 26])  # W=20, S=10, O=5 -> 1, 0 (15 < 20), 1 windows
    ds = EEGWindowDataset(arrays, [30.0, 50.0, 70.0], spec)
    assert len(ds) == 2
    assert ds.recording_index.tolist() == [0, 2] and ds.starts.tolist() == [5, 5]
    np.testing.assert_array_equal(ds.window_targets, [30.0, 70.0])
    x, y, r = ds[1]
    assert x.shape == (2, 20) and x.dtype == torch.float32
    assert x[0, 0].item() == 2005 and x[1, -1].item() == 2024
    assert y.dtype == torch.float32 and y.item() == 70.0 and r == 2

    spec2 = EEGSpec(channels=("C3", "C4"), sfreq=10, l_freq=None, h_freq=None, window_s=1.0, stride_s=0.5)
    ds2 = EEGWindowDataset(_tagged([30, 14]), ["b", "a"], spec2)
    assert ds2.classes == ["a", "b"]
    assert len(ds2) == 5 + 1
    assert [ds2[i][1].item() for i in range(len(ds2))] == [1] * 5 + [0]
    assert ds2[0][1].dtype == torch.int64
    starts = [int(ds2[i][0][0, 0].item()) % 1000 for i in range(5)]
    assert starts == [0, 5, 10, 15, 20]


def test_dataset_transform_two_views() -> None:
    spec = EEGSpec(channels=("C3", "C4"), sfreq=10, l_freq=None, h_freq=None, window_s=2.0, stride_s=2.0)
    ds = EEGWindowDataset(_tagged([40]), [1.0], spec, transform=lambda w: torch.stack([w, -w]))
    x, _, _ = ds[0]
    assert x.shape == (2, 2, 20) and torch.equal(x[1], -x[0])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch[0].shape == (2, 2, 2, 20) and batch[2].tolist() == [0, 0]


# ------------------------------------------------------------------- splits


def test_split_labels_counts_and_determinism() -> None:
    a = split_labels(20, val_frac=EEG_VAL_FRAC, test_frac=EEG_TEST_FRAC, seed=3)
    assert (a.count("val"), a.count("test"), a.count("train")) == (3, 3, 14)
    assert a == split_labels(20, val_frac=EEG_VAL_FRAC, test_frac=EEG_TEST_FRAC, seed=3)
    assert a != split_labels(20, val_frac=EEG_VAL_FRAC, test_frac=EEG_TEST_FRAC, seed=4)
    assert split_labels(2, val_frac=0.4, test_frac=0.4).count("train") >= 1


def test_assign_splits_by_recording_deterministic_and_order_free() -> None:
    recs = [EEGRecord(Path(f"r{i:02d}.edf"), float(i)) for i in range(30)]
    recs[5] = EEGRecord(Path("r05.edf"), 5.0, "test")
    a = assign_splits(recs, val_frac=EEG_VAL_FRAC, test_frac=EEG_TEST_FRAC, seed=1)
    b = assign_splits(list(reversed(recs)), val_frac=EEG_VAL_FRAC, test_frac=EEG_TEST_FRAC, seed=1)
    by_path = {r.path: r.split for r in b}
    assert [r.split for r in a] == [by_path[r.path] for r in a]
    assert a[5].split == "test"
    assert all(r.split in ("train", "val", "test") for r in a)
    assert [r.split for r in a] != [
        r.split for r in assign_splits(recs, val_frac=EEG_VAL_FRAC, test_frac=EEG_TEST_FRAC, seed=2)
    ]


def test_windows_of_a_recording_stay_in_one_split(tmp_path: Path) -> None:
    names = ["EEG O1-REF", "EEG O2-REF"]
    recs = []
    for i in range(10):
        f = _write(tmp_path / f"r{i}.edf", names, _distinct(2, 600, seed=i))
        recs.append(EEGRecord(f, float(20 + i)))
    recs = assign_splits(recs, val_frac=0.2, test_frac=0.2, seed=0)
    spec = EEGSpec(channels=("O1", "O2"), sfreq=100, window_s=2, stride_s=1)
    dss = split_datasets(recs, spec)
    assert set(dss) == {"train", "val", "test"}
    seen: dict[Path, str] = {}
    for sp, ds in dss.items():
        assert len(ds) == 5 * len(ds.arrays)  # floor((600-200)/100)+1
        for r in np.unique(ds.recording_index):
            p = ds.paths[r]
            assert seen.setdefault(p, sp) == sp
            assert next(x.split for x in recs if x.path == p) == sp
    assert len(seen) == 10


# ------------------------------------------------------------------ targets


def test_age_from_header(tmp_path: Path) -> None:
    f = _write(tmp_path / "aged.edf", ["EEG O1-REF"], _distinct(1, 200), patient="00000258 M 01-JAN-1978 00000258 Age:42")
    assert age_from_header(f) == 42.0
    g = _write(tmp_path / "noage.edf", ["EEG O1-REF"], _distinct(1, 200), patient="00000259 F 01-JAN-1978 00000259")
    with pytest.raises(UserError, match=r"noage\.edf: no age"):
        age_from_header(g)
    (tmp_path / "only").mkdir()
    _write(tmp_path / "only" / "b.edf", ["EEG O1-REF"], _distinct(1, 200), patient="x M x x Age:7")
    _write(tmp_path / "only" / "a.edf", ["EEG O1-REF"], _distinct(1, 200), patient="x M x x age: 61")
    recs = list_recordings(tmp_path / "only", "age")
    assert [(r.path.name, r.target, r.split) for r in recs] == [("a.edf", 61.0, None), ("b.edf", 7.0, None)]


def test_age_from_fif_his_id(tmp_path: Path) -> None:
    raw = mne.io.RawArray(np.zeros((1, 100)), mne.create_info(["O1"], 100.0, "eeg"), verbose="error")
    raw.info["subject_info"] = {"his_id": "s1 Age:33"}
    f = tmp_path / "s1_raw.fif"
    raw.save(f, verbose="error")
    assert age_from_header(f) == 33.0
    raw.info["subject_info"] = {"his_id": "s2"}
    raw.save(tmp_path / "s2_raw.fif", verbose="error")
    with pytest.raises(UserError, match=r"s2_raw\.fif: no age in the header \(expected 'Age:NN', NN at most 130, "
                                        r"in subject_info's his_id, found 's2'\)"):
        age_from_header(tmp_path / "s2_raw.fif")


@pytest.mark.parametrize("text, age", [("Age:45", 45.0), ("age: 045", 45.0), ("Age:450", None), ("Age:130", 130.0),
                                       ("45Y", None), ("Age:", None)])
def test_header_ages_above_any_lifespan_are_not_ages(text: str, age) -> None:
    from supemb.data.eeg_files import parse_age

    assert parse_age(text) == age


def test_mne_reads_hold_the_lock_only_while_mne_would_log(tmp_path: Path, monkeypatch) -> None:
    """mne's verbose= sets a process-wide log level; decode threads reading at once would let one thread's
    restore print another's INFO lines on stdout (into --json). Below ERROR each read holds the lock; at ERROR
    (what the command line sets) setting and restoring ERROR lets nothing through, and reads run in parallel."""
    import logging

    from supemb.data.eeg_files import MNE_LOCK, read_recording

    f = _write(tmp_path / "a.edf", ["EEG O1-REF"], _distinct(1, 200), patient="x M x x Age:7")
    held: list[bool] = []
    original = mne.io.read_raw_edf
    monkeypatch.setattr(mne.io, "read_raw_edf", lambda *a, **kw: held.append(MNE_LOCK.locked()) or original(*a, **kw))
    level = logging.getLogger("mne").level
    try:
        for mne_level in ("INFO", "ERROR"):
            mne.set_log_level(mne_level)
            read_recording(f)
    finally:
        logging.getLogger("mne").setLevel(level)
    assert held == [True, False] and not MNE_LOCK.locked()


def test_the_command_line_keeps_mne_at_error_unless_told_otherwise(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    code = "import logging; from supemb.cli import main; main(['train', '--resume']); import mne; " \
           "print(logging.getLogger('mne').level)"  # any command: the level is set before it runs
    env = {k: v for k, v in os.environ.items() if k != "MNE_LOGGING_LEVEL"}
    for preset, want in ((None, "40"), ("INFO", "20")):
        run_env = env if preset is None else {**env, "MNE_LOGGING_LEVEL": preset}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=run_env, timeout=120)
        assert out.stdout.strip().splitlines()[-1] == want, (preset, out.stdout, out.stderr)


def test_targets_from_csv(tmp_path: Path) -> None:
    (tmp_path / "recs").mkdir()
    for n in ("a.edf", "b.edf"):
        _write(tmp_path / "recs" / n, ["EEG O1-REF"], _distinct(1, 200))
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,age,group,split\nrecs/a.edf,31.5,ctl,train\nrecs/b.edf,64,pat,\n")
    recs = read_targets_csv(csv_path, "age")
    assert [(r.path, r.target, r.split) for r in recs] == [
        (tmp_path / "recs" / "a.edf", 31.5, "train"),
        (tmp_path / "recs" / "b.edf", 64.0, None),
    ]
    assert [r.target for r in list_recordings(tmp_path, "group")] == ["ctl", "pat"]
    assert list_recordings(csv_path, "age") == recs
    with pytest.raises(UserError, match="no column 'sex'"):
        read_targets_csv(csv_path, "sex")
    with pytest.raises(UserError, match="no labels.csv with a 'sex' column"):
        list_recordings(tmp_path, "sex")
    (tmp_path / "bad.csv").write_text("path,age\nrecs/missing.edf,3\n")
    with pytest.raises(UserError, match="line 2: no such file"):
        read_targets_csv(tmp_path / "bad.csv", "age")


# ------------------------------------------------------------ augmentations


def _x(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype) + 1.0


@pytest.mark.parametrize("shape", [(5, 64), (3, 5, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "fn",
    [
        lambda x, g: aug.time_shift(x, 20, g),
        lambda x, g: aug.amplitude_scale(x, 0.8, 1.2, g),
        lambda x, g: aug.gaussian_noise(x, 0.1, g),
        lambda x, g: aug.channel_dropout(x, 0.3, g),
        lambda x, g: aug.EEGAugment()(x, g),
    ],
    ids=["shift", "scale", "noise", "dropout", "all"],
)
def test_augment_shape_dtype_determinism(shape, dtype, fn) -> None:
    x = _x(shape, dtype)
    a = fn(x, torch.Generator().manual_seed(7))
    b = fn(x, torch.Generator().manual_seed(7))
    c = fn(x, torch.Generator().manual_seed(8))
    assert a.shape == x.shape and a.dtype == dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_random_crop_is_a_contiguous_slice() -> None:
    x = torch.arange(2 * 3 * 50, dtype=torch.float32).reshape(2, 3, 50)
    out = aug.random_crop(x, 30, torch.Generator().manual_seed(1))
    assert out.shape == (2, 3, 30)
    for b in range(2):
        s = int(out[b, 0, 0] - x[b, 0, 0])
        assert torch.equal(out[b], x[b, :, s : s + 30])
    assert aug.random_crop(x[0], 50).shape == (3, 50)


def test_time_shift_is_a_roll_of_all_channels() -> None:
    x = _x((4, 40))
    out = aug.time_shift(x, 10, torch.Generator().manual_seed(3))
    shifts = [k for k in range(-10, 11) if torch.equal(out, torch.roll(x, k, dims=-1))]
    assert len(shifts) == 1
    assert torch.equal(aug.time_shift(x, 0), x)


def test_amplitude_scale_and_noise_levels() -> None:
    x = _x((8, 4, 500))
    y = aug.amplitude_scale(x, 0.8, 1.2, torch.Generator().manual_seed(0))
    ratio = (y / x).reshape(8, -1)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-5)
    assert ((ratio[:, 0] >= 0.8) & (ratio[:, 0] <= 1.2)).all() and ratio[:, 0].std() > 0
    z = aug.gaussian_noise(x * 100, 0.1, torch.Generator().manual_seed(0))
    rel = ((z - x * 100).std() / (x * 100).std()).item()
    assert 0.08 < rel < 0.12


def test_channel_dropout_zeros_whole_channels() -> None:
    x = _x((16, 10, 32))
    y = aug.channel_dropout(x, 0.5, torch.Generator().manual_seed(2))
    zero = (y == 0).all(dim=-1)  # [B, C]
    same = (y == x).all(dim=-1)
    assert (zero ^ same).all()  # each channel either dropped whole or untouched
    assert 0.3 < zero.float().mean() < 0.7
    all_gone = aug.channel_dropout(x, 1.0, torch.Generator().manual_seed(2))
    assert ((all_gone != 0).any(dim=-1).sum(dim=1) == 1).all()  # one channel survives
    assert torch.equal(aug.channel_dropout(x, 0.0), x)


def test_time_shift_needs_channels() -> None:
    with pytest.raises(ValueError):
        aug.time_shift(torch.zeros(64), 3)


def test_a_flat_channel_is_served_with_a_warning_naming_it(tmp_path: Path, capsys) -> None:
    """A disconnected electrode (all zeros) moves the value without the input looking unfamiliar: say so,
    in Python as a FlatChannelWarning and on the command line as one "warning:" line."""
    import warnings

    from supemb.cli import main as cli
    from supemb.data.synthetic_eeg import TUH_FILE_CHANNELS, synth_recording
    from supemb.predict.api import default_bundle_path
    from supemb.preprocess.eeg import EEGSpec, FlatChannelWarning, preprocess_recording

    x = synth_recording(50, 20.0, 100.0, np.random.default_rng(0))
    names = [f"EEG {c}-REF" for c in TUH_FILE_CHANNELS]
    whole = write_edf(tmp_path / "whole.edf", x, 100.0, names, patient="X X X X Age:50")
    x[list(TUH_FILE_CHANNELS).index("O1")] = 0.0
    flat = write_edf(tmp_path / "flat.edf", x, 100.0, names, patient="X X X X Age:50")
    with pytest.warns(FlatChannelWarning, match=r"flat\.edf: O1 flat \(no signal\)"):
        preprocess_recording(flat, EEGSpec())
    with warnings.catch_warnings():
        warnings.simplefilter("error", FlatChannelWarning)
        preprocess_recording(whole, EEGSpec())  # nothing to say
    assert cli(["predict", str(default_bundle_path("brain_age")), str(flat), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert f"supemb predict: warning: {flat}: O1 flat (no signal)" in err and "FlatChannelWarning" not in err
