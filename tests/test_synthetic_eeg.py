"""The synthetic EEG set: EDF round trip, TUH conventions, determinism, and an
age signal that survives writing and re-reading."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import welch

from supemb.data.eeg_files import age_from_header, list_recordings, read_patient_field, read_recording
from supemb.data.synthetic_eeg import TUH_FILE_CHANNELS, make_eeg_dataset, write_edf
from supemb.preprocess.eeg import EEGSpec, preprocess_recording


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _labels(folder: Path) -> list[dict[str, str]]:
    with open(folder / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_eeg_dataset(tmp_path_factory.mktemp("syn"), 30, duration_s=30.0, sfreq=250.0, seed=0)


def test_write_edf_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 30, (3, 1030)) + np.array([[0.0], [500.0], [-2000.0]])
    f = write_edf(tmp_path / "w.edf", x, 100.0, ["EEG O1-REF", "B", "C"], patient="P Age:9")
    raw = read_recording(f)
    assert raw.n_times == 1000  # cut to whole 1 s records
    tol = (np.abs(x).max(axis=1, keepdims=True) + 2) * 2 / 65535
    assert np.all(np.abs(raw.get_data() * 1e6 - x[:, :1000]) <= tol)
    assert read_patient_field(f) == "P Age:9"
    with pytest.raises(ValueError):
        write_edf(tmp_path / "bad.edf", x, 100.5, ["A", "B", "C"])


def test_files_follow_tuh_conventions(synth: Path) -> None:
    rows = _labels(synth)
    assert len(rows) == 30 and set(rows[0]) == {"path", "age", "split"}
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    raw = read_recording(synth / rows[0]["path"])
    assert raw.ch_names == [f"EEG {c}-REF" for c in TUH_FILE_CHANNELS] + ["EEG EKG1-REF"]
    assert raw.info["sfreq"] == 250.0 and raw.n_times == 30 * 250
    assert "Age:" in read_patient_field(synth / rows[0]["path"])
    for r in rows:
        assert age_from_header(synth / r["path"]) == float(r["age"])
    ages = [float(r["age"]) for r in rows]
    assert min(ages) >= 18 and max(ages) <= 85 and np.std(ages) > 10


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = make_eeg_dataset(tmp_path / "a", 4, duration_s=5.0, sfreq=128.0, seed=3)
    b = make_eeg_dataset(tmp_path / "b", 4, duration_s=5.0, sfreq=128.0, seed=3)
    c = make_eeg_dataset(tmp_path / "c", 4, duration_s=5.0, sfreq=128.0, seed=4)
    assert _digest(a) == _digest(b)
    da, dc = _digest(a), _digest(c)
    assert all(da[k] != dc[k] for k in da if k.endswith(".edf"))
    # recording i depends only on (seed, i), not on how many are made
    d = make_eeg_dataset(tmp_path / "d", 2, duration_s=5.0, sfreq=128.0, seed=3)
    assert _digest(d)["rec_001.edf"] == da["rec_001.edf"]


def _alpha_peak(x: np.ndarray, sfreq: float) -> tuple[float, float]:
    """x [C, T] -> (peak frequency in 7-13 Hz of the mean PSD, alpha band power)."""
    f, p = welch(x, fs=sfreq, nperseg=int(4 * sfreq))
    p = p.mean(axis=0)
    band = (f >= 7) & (f <= 13)
    return float(f[band][np.argmax(p[band])]), float(p[band].mean())


def test_age_is_in_the_spectrum_after_reading_back(synth: Path) -> None:
    spec = EEGSpec()  # the model's pipeline: pick, 100 Hz, 1-40 Hz, scale
    recs = list_recordings(synth, "age")
    occ = [spec.channels.index(c) for c in ("O1", "O2")]
    front = [spec.channels.index(c) for c in ("FP1", "FP2")]
    ages, peaks, ratios = [], [], []
    for r in recs:
        x = preprocess_recording(r.path, spec)
        peak, occ_power = _alpha_peak(x[occ], spec.sfreq)
        _, front_power = _alpha_peak(x[front], spec.sfreq)
        ages.append(r.target)
        peaks.append(peak)
        ratios.append(occ_power / front_power)
    r_peak = np.corrcoef(ages, peaks)[0, 1]
    assert r_peak < -0.5, r_peak  # alpha slows with age
    assert np.median(ratios) > 3  # posterior-dominant alpha
