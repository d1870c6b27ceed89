"""SYNTHETIC resting-state EEG whose spectrum changes with age, written as EDF.

This is not real EEG and says nothing about real brains: it is a
deterministic stand-in with the shape of the brain-age task, so the EEG
pipeline, training and serving can be exercised without downloading data.
What it models (loosely after published resting-EEG ageing trends):

- alpha peak frequency falls with age (~10.5 Hz at 18 -> ~8.5 Hz at 85),
- the aperiodic 1/f^beta exponent flattens with age (beta ~1.9 -> ~1.3),
- alpha power falls with age,
- alpha is strongest over posterior channels (O1/O2, then P3/P4/PZ/T5/T6),

and per-subject variation that is larger than the age effects (overall
amplitude, per-electrode gain, individual alpha frequency and power, sensor
noise, DC offsets, 60 Hz line noise), so age is a weak but learnable cue.

Files follow the TUH EEG corpus conventions: channel labels `EEG FP1-REF`
..., TUH channel order (not the model's), extra A1/A2 and EKG channels, and
the patient field `<id> <sex> <birthdate> <id> Age:NN`.
"""

from __future__ import annotations

import csv
import math
from datetime import date
from pathlib import Path
from typing import Sequence

import numpy as np

from supemb.data.splits import split_labels
from supemb.errors import UserError

# TUH file order (the model's order is EEGSpec.channels): 10-20 scalp
# electrodes plus the ear references A1/A2.
TUH_FILE_CHANNELS: tuple[str, ...] = (
    "FP1", "FP2", "F3", "F4", "C3", "C4", "P3", "P4", "O1", "O2",
    "F7", "F8", "T3", "T4", "T5", "T6", "A1", "A2", "FZ", "CZ", "PZ",
)  # fmt: skip

# Relative alpha amplitude per electrode: posterior-dominant resting alpha.
_ALPHA_WEIGHT = {
    "O1": 1.0, "O2": 1.0, "P3": 0.7, "P4": 0.7, "PZ": 0.75, "T5": 0.6, "T6": 0.6,
    "C3": 0.35, "C4": 0.35, "CZ": 0.35, "T3": 0.3, "T4": 0.3,
    "F3": 0.2, "F4": 0.2, "FZ": 0.2, "F7": 0.15, "F8": 0.15,
    "FP1": 0.1, "FP2": 0.1, "A1": 0.05, "A2": 0.05,
}  # fmt: skip

AGE_RANGE: tuple[int, int] = (18, 85)
RECORDING_YEAR = 2020


# ---------------------------------------------------------------- EDF writer


def write_edf(
    path: str | Path,
    signals_uv: np.ndarray,
    sfreq: float,
    ch_names: Sequence[str],
    *,
    patient: str = "X X X X",
    recording: str = "Startdate X X X X",
    start: date = date(RECORDING_YEAR, 1, 1),
    record_s: float = 1.0,
) -> Path:
    """Write a plain EDF (not EDF+) file: 16-bit samples, physical unit uV.

    signals_uv: [C, T] in microvolts. Each channel gets its own physical range
    (its max |value|, rounded up), so quantisation error is < range / 65535.
    The signal is cut to whole data records of `record_s` seconds
    (sfreq * record_s must be an integer). patient / recording are the 80-byte
    header fields (ASCII, cut at 80). Returns the path.
    """
    path = Path(path)
    x = np.asarray(signals_uv, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(ch_names):
        raise ValueError(f"signals {x.shape} do not match {len(ch_names)} channel names")
    spr = sfreq * record_s
    if abs(spr - round(spr)) > 1e-9 or round(spr) < 1:
        raise ValueError(f"sfreq {sfreq} * record_s {record_s} must be a whole number of samples")
    spr = int(round(spr))
    n_rec = x.shape[1] // spr
    if n_rec < 1:
        raise ValueError(f"{x.shape[1]} samples is less than one {record_s} s record")
    n_ch = x.shape[0]
    x = x[:, : n_rec * spr]

    pmax = np.ceil(np.abs(x).max(axis=1)) + 1.0  # symmetric range, never zero
    pmin = -pmax
    dmin, dmax = -32768, 32767
    dig = np.round((x - pmin[:, None]) / (pmax - pmin)[:, None] * (dmax - dmin) + dmin)
    dig = np.clip(dig, dmin, dmax).astype("<i2")

    def field(value: object, width: int) -> bytes:
        s = str(value)
        if len(s) > width:
            raise ValueError(f"EDF header value {s!r} does not fit in {width} characters")
        return s.ljust(width).encode("ascii")

    def num(v: float) -> str:
        return str(int(v)) if float(v).is_integer() else f"{v:.6g}"

    head = b"".join([
        field("0", 8),
        field(patient[:80], 80),
        field(recording[:80], 80),
        field(start.strftime("%d.%m.%y"), 8),
        field("00.00.00", 8),
        field(256 * (n_ch + 1), 8),
        field("", 44),  # reserved: blank = plain EDF
        field(n_rec, 8),
        field(num(record_s), 8),
        field(n_ch, 4),
    ])  # fmt: skip
    per_signal = [
        [field(c[:16], 16) for c in ch_names],
        [field("AgAgCl electrode", 80)] * n_ch,
        [field("uV", 8)] * n_ch,
        [field(num(v), 8) for v in pmin],
        [field(num(v), 8) for v in pmax],
        [field(dmin, 8)] * n_ch,
        [field(dmax, 8)] * n_ch,
        [field("HP:0.1Hz LP:100Hz", 80)] * n_ch,
        [field(spr, 8)] * n_ch,
        [field("", 32)] * n_ch,
    ]
    head += b"".join(b"".join(col) for col in per_signal)
    assert len(head) == 256 * (n_ch + 1)
    # data records: for each record, every channel's spr samples in turn
    body = dig.reshape(n_ch, n_rec, spr).transpose(1, 0, 2).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head + body)
    return path


# --------------------------------------------------------------- generator


def _colored(rng: np.random.Generator, shape: np.ndarray, n: int, k: int) -> np.ndarray:
    """k independent Gaussian signals [k, n] with amplitude spectrum `shape` [n//2+1], unit std."""
    spec = (rng.standard_normal((k, len(shape))) + 1j * rng.standard_normal((k, len(shape)))) * shape
    x = np.fft.irfft(spec, n=n, axis=1)
    return x / x.std(axis=1, keepdims=True)


def synth_recording(
    age: float, duration_s: float, sfreq: float, rng: np.random.Generator,
    channels: Sequence[str] = TUH_FILE_CHANNELS,
) -> np.ndarray:  # fmt: skip
    """One subject's synthetic resting EEG, [C, T] in microvolts (see module doc)."""
    n = int(round(duration_s * sfreq))
    f = np.fft.rfftfreq(n, 1 / sfreq)
    a = (age - AGE_RANGE[0]) / (AGE_RANGE[1] - AGE_RANGE[0])  # 0 young .. 1 old
    c = len(channels)

    # age effects, each blurred by individual variation
    alpha_f = float(np.clip(10.5 - 2.0 * a + rng.normal(0, 0.5), 7.0, 12.5))
    beta = 1.9 - 0.6 * a + rng.normal(0, 0.12)
    alpha_amp = (1.3 - 0.6 * a) * math.exp(rng.normal(0, 0.35))
    # subject nuisance, larger than the age effects
    overall = 18.0 * math.exp(rng.normal(0, 0.35))  # uV
    gains = np.exp(rng.normal(0, 0.15, c))
    sensor_noise = rng.uniform(0.05, 0.25)

    # aperiodic 1/f^beta: shared source (volume conduction) + local sources
    ap_shape = np.maximum(f, 0.5) ** (-beta / 2)
    ap_shape[0] = 0.0
    shared, local = _colored(rng, ap_shape, n, 1), _colored(rng, ap_shape, n, c)
    aperiodic = 0.6 * shared + 0.8 * local
    # alpha: narrowband noise around the individual peak, waxing and waning
    al_shape = np.exp(-0.5 * ((f - alpha_f) / 0.5) ** 2)
    al_src = _colored(rng, al_shape, n, 2)  # left / right generators
    al_local = _colored(rng, al_shape, n, c)
    w = np.array([_ALPHA_WEIGHT.get(ch, 0.1) for ch in channels])[:, None]
    side = np.array([0.0 if ch[-1] in "13579" else 1.0 if ch[-1] in "2468" else 0.5 for ch in channels])[:, None]
    alpha = ((1 - side) * al_src[0] + side * al_src[1]) * 0.85 + 0.3 * al_local
    alpha = 1.6 * alpha_amp * w * alpha

    t = np.arange(n) / sfreq
    line = rng.uniform(0.0, 2.0) * np.sin(2 * np.pi * 60.0 * t + rng.uniform(0, 2 * np.pi))
    x = overall * (aperiodic + alpha + sensor_noise * rng.standard_normal((c, n)))
    x = gains[:, None] * x + line + rng.normal(0, 15.0, (c, 1))  # + DC offsets
    return x


def _ekg(rng: np.random.Generator, n: int, sfreq: float) -> np.ndarray:
    """A crude ECG-like spike train (uV), to be ignored by channel picking."""
    t = np.arange(n) / sfreq
    phase = (t * rng.uniform(0.9, 1.4)) % 1.0
    return 400.0 * np.exp(-0.5 * ((phase - 0.5) / 0.01) ** 2) + rng.normal(0, 5.0, n)


def make_eeg_dataset(
    out_dir: str | Path,
    n_recordings: int,
    duration_s: float = 60.0,
    sfreq: float = 250.0,
    seed: int = 0,
    *,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
) -> Path:
    """Write `n_recordings` synthetic EDF recordings and `labels.csv` into out_dir.

    Files are `rec_000.edf`, ...; labels.csv has columns path, age, split
    (a seeded split over recordings). Ages are integers drawn uniformly from
    AGE_RANGE and are also in each file's patient field (`Age:NN`). The same
    arguments give byte-identical files; recording i depends only on (seed, i),
    not on n_recordings. Returns out_dir.
    """
    if n_recordings < 1:
        raise UserError("make_eeg_dataset: n_recordings must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(n_recordings - 1)))
    splits = split_labels(n_recordings, val_frac=val_frac, test_frac=test_frac, seed=seed)
    rows = []
    for i in range(n_recordings):
        rng = np.random.default_rng([seed, i])
        age = int(rng.integers(AGE_RANGE[0], AGE_RANGE[1] + 1))
        sex = "MF"[int(rng.integers(2))]
        x = synth_recording(age, duration_s, sfreq, rng)
        ekg = _ekg(rng, x.shape[1], sfreq)
        sig = np.vstack([x, ekg[None]])
        names = [f"EEG {c}-REF" for c in TUH_FILE_CHANNELS] + ["EEG EKG1-REF"]
        sid = f"{seed % 10**4:04d}{i:04d}"
        patient = f"{sid} {sex} 01-JAN-{RECORDING_YEAR - age} {sid} Age:{age}"
        recording = f"Startdate 01-JAN-{RECORDING_YEAR} SYNTHETIC supemb seed={seed}"
        name = f"rec_{i:0{width}d}.edf"
        write_edf(out / name, sig, sfreq, names, patient=patient, recording=recording)
        rows.append((name, age, str(splits[i])))
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as f:
        wr = csv.writer(f, lineterminator="\n")
        wr.writerow(["path", "age", "split"])
        wr.writerows(rows)
    return out
