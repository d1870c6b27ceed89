"""EEG recordings -> fixed-length, preprocessed windows.

One preprocessing function (`preprocess_raw`) is shared by training and
serving; its parameters are an `EEGSpec`, which is saved with the model and in
the bundle's manifest.json, so the two cannot drift.

Pipeline for one recording (see `preprocess_raw`):

    read (EDF/BDF/FIF) -> pick + order the spec's channels (names normalised,
    see `normalize_channel_name`) -> resample to spec.sfreq -> zero-phase FIR
    band-pass [l_freq, h_freq] -> volts to microvolts -> clip to +-clip_uv ->
    scale ("fixed": divide by unit_uv; "robust": per-channel median / IQR)
    -> float32 [C, T]

Windows are cut afterwards by the pure function `make_windows`, so filtering
never sees window edges.

Targets come from a CSV (`path,<target>[,split]`, paths relative to the CSV)
or, for `age`, from the EDF patient field in the TUH convention (`Age:NN`).
Splits are drawn over recordings, never over windows.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from supemb.errors import UserError

if TYPE_CHECKING:  # mne is imported where used: importing this module stays light
    import mne

# The TUH EEG corpus' 19 scalp channels of the 10-20 system (old T3/T4/T5/T6
# names, which TUH uses; modern T7/T8/P7/P8 are mapped onto them).
TUH_CHANNELS: tuple[str, ...] = (
    "FP1", "FP2", "F7", "F3", "FZ", "F4", "F8",
    "T3", "C3", "CZ", "C4", "T4",
    "T5", "P3", "PZ", "P4", "T6",
    "O1", "O2",
)  # fmt: skip

EEG_SUFFIXES: tuple[str, ...] = (".edf", ".bdf", ".fif", ".fif.gz")
SPLITS: tuple[str, ...] = ("train", "val", "test")
SCALINGS: tuple[str, ...] = ("fixed", "robust")

# Modern 10-10 names -> the older 10-20 names used by TUH.
_MODERN_TO_OLD = {"T7": "T3", "T8": "T4", "P7": "T5", "P8": "T6"}
# Reference suffixes that mean "this electrode against a reference", not a
# bipolar derivation: `EEG FP1-REF` is FP1, but `FP1-F7` stays `FP1-F7`.
_REFERENCE_SUFFIXES = {"REF", "LE", "AR", "AVG", "CAR", "A1", "A2", "M1", "M2"}
_AGE_RE = re.compile(r"\bAge\s*:\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


# --------------------------------------------------------------------- spec


@dataclass(frozen=True)
class EEGSpec:
    """The EEG preprocessing contract a model is trained and served with.

    channels: 10-20 names in the order the model sees them (normalised on
        construction, see `normalize_channel_name`).
    sfreq: sampling rate in Hz after resampling.
    l_freq, h_freq: zero-phase FIR band-pass edges in Hz (None = no high-pass
        / no low-pass).
    clip_uv: after converting to microvolts, values are clipped to
        [-clip_uv, +clip_uv] (large artefacts, flat-line spikes).
    scaling: "fixed" divides the clipped microvolts by `unit_uv`, so absolute
        amplitude stays informative (it changes with age) and typical values
        are O(1); "robust" subtracts each channel's median and divides by its
        robust std (IQR / 1.349) over the whole recording, removing per-subject
        and per-electrode gain.
    unit_uv: divisor for scaling="fixed" (ignored by "robust").
    window_s, stride_s: window length and step in seconds.
    offset_s: seconds skipped at the start of every recording (electrode
        settling at the start of clinical recordings); 0 keeps everything.

    `to_dict()` / `from_dict()` round-trip through JSON. A field added later
    must get a default that reproduces the old behaviour, because `from_dict`
    fills absent fields with defaults (and refuses unknown ones).
    """

    channels: tuple[str, ...] = TUH_CHANNELS
    sfreq: float = 100.0
    l_freq: float | None = 1.0
    h_freq: float | None = 40.0
    clip_uv: float = 800.0
    scaling: str = "fixed"
    unit_uv: float = 20.0
    window_s: float = 10.0
    stride_s: float = 10.0
    offset_s: float = 0.0

    def __post_init__(self) -> None:
        chans = tuple(normalize_channel_name(c) for c in self.channels)
        object.__setattr__(self, "channels", chans)
        if not chans:
            raise UserError("EEG spec: the channel list is empty")
        if len(set(chans)) != len(chans):
            dup = sorted({c for c in chans if chans.count(c) > 1})
            raise UserError(f"EEG spec: duplicate channels {', '.join(dup)}")
        if not self.sfreq > 0:
            raise UserError(f"EEG spec: sfreq must be > 0, got {self.sfreq}")
        nyq = self.sfreq / 2
        if self.l_freq is not None and not 0 < self.l_freq < nyq:
            raise UserError(f"EEG spec: l_freq {self.l_freq} Hz must be in (0, {nyq}) Hz")
        if self.h_freq is not None and not 0 < self.h_freq < nyq:
            raise UserError(
                f"EEG spec: h_freq {self.h_freq} Hz must be below Nyquist ({nyq} Hz)"
            )
        if self.l_freq is not None and self.h_freq is not None and self.l_freq >= self.h_freq:
            raise UserError(f"EEG spec: l_freq {self.l_freq} must be < h_freq {self.h_freq}")
        if self.scaling not in SCALINGS:
            raise UserError(f"EEG spec: scaling must be one of {SCALINGS}, got {self.scaling!r}")
        if not self.clip_uv > 0 or not self.unit_uv > 0:
            raise UserError("EEG spec: clip_uv and unit_uv must be > 0")
        if self.window_samples < 1 or self.stride_samples < 1:
            raise UserError(
                f"EEG spec: window_s {self.window_s} and stride_s {self.stride_s} "
                f"must each be at least one sample at {self.sfreq} Hz"
            )
        if self.offset_s < 0:
            raise UserError(f"EEG spec: offset_s must be >= 0, got {self.offset_s}")

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def window_samples(self) -> int:
        """W, the window length in samples at `sfreq`."""
        return _seconds_to_samples(self.window_s, self.sfreq)

    @property
    def stride_samples(self) -> int:
        return _seconds_to_samples(self.stride_s, self.sfreq)

    @property
    def min_duration_s(self) -> float:
        """Shortest recording that yields one window."""
        return self.offset_s + self.window_s

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EEGSpec":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(
                f"EEG spec: unknown fields {', '.join(unknown)} (written by a newer supemb?)"
            )
        kw = dict(d)
        if "channels" in kw:
            kw["channels"] = tuple(kw["channels"])
        return cls(**kw)


def _seconds_to_samples(seconds: float, sfreq: float) -> int:
    # round, not floor: 0.1 s * 100 Hz is 10.000000000000002 or 9.999999999999998
    return int(round(seconds * sfreq))


# ------------------------------------------------------------ channel names


def normalize_channel_name(name: str) -> str:
    """Map a recording's channel label to a bare upper-case 10-20 name.

    `EEG FP1-REF`, `EEG Fp1-LE`, `fp1` -> `FP1`; `EEG T3-REF` -> `T3`; modern
    `T7`/`T8`/`P7`/`P8` -> `T3`/`T4`/`T5`/`T6` (TUH uses the old names). Only
    reference suffixes (-REF, -LE, -AR, -AVG, -CAR, -A1, -A2, -M1, -M2) are
    dropped; a bipolar label like `FP1-F7` is kept as `FP1-F7`. Anything else
    (e.g. `EKG1-REF` -> `EKG1`) is passed through upper-cased.
    """
    s = name.strip().upper()
    if s.startswith("EEG "):
        s = s[4:].strip()
    if "-" in s:
        head, _, tail = s.rpartition("-")
        if tail.strip() in _REFERENCE_SUFFIXES and head.strip():
            s = head.strip()
    return _MODERN_TO_OLD.get(s, s)


def channel_lookup(ch_names: Sequence[str]) -> dict[str, str]:
    """normalised name -> original label; the first of duplicates wins."""
    out: dict[str, str] = {}
    for ch in ch_names:
        out.setdefault(normalize_channel_name(ch), ch)
    return out


# ------------------------------------------------------------ reading files


def is_eeg_file(path: Path) -> bool:
    return path.name.lower().endswith(EEG_SUFFIXES)


def read_recording(path: str | Path) -> mne.io.BaseRaw:
    """Read an .edf, .bdf or .fif recording, preloaded. One-line UserError on failure."""
    import mne

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such EEG file")
    name = path.name.lower()
    try:
        if name.endswith(".edf"):
            raw = mne.io.read_raw_edf(path, preload=True, verbose="error")
        elif name.endswith(".bdf"):
            raw = mne.io.read_raw_bdf(path, preload=True, verbose="error")
        elif name.endswith((".fif", ".fif.gz")):
            raw = mne.io.read_raw_fif(path, preload=True, verbose="error")
        else:
            raise UserError(f"{path}: not an EEG file (expected .edf, .bdf or .fif)")
    except UserError:
        raise
    except Exception as e:  # mne raises many types for damaged files
        msg = " ".join(str(e).split()) or type(e).__name__
        raise UserError(f"{path}: cannot read the recording ({msg})") from e
    return raw


# ------------------------------------------------------------ preprocessing


def preprocess_raw(raw: mne.io.BaseRaw, spec: EEGSpec, source: str | Path | None = None) -> np.ndarray:
    """One recording -> the model's input signal.

    raw: any mne Raw (data in volts, as mne stores EEG).
    source: the name used in error messages (default: the raw's file name).
    Returns float32 [C, T], C = spec.n_channels in spec order, T samples at
    spec.sfreq. Raises UserError (one line naming `source`) for missing
    channels, a recording shorter than one window, or non-finite samples.
    """
    import mne

    if source is None:
        fnames = getattr(raw, "filenames", None) or [None]
        source = fnames[0] or "<recording>"
    lookup = channel_lookup(raw.ch_names)
    missing = [c for c in spec.channels if c not in lookup]
    if missing:
        have = len(raw.ch_names)
        what = "too few channels" if have < spec.n_channels else "missing channels"
        raise UserError(
            f"{source}: {what}: missing {', '.join(missing)} "
            f"(the recording has {have} channels; the model needs {spec.n_channels}: "
            f"{' '.join(spec.channels)})"
        )
    sfreq_in = float(raw.info["sfreq"])
    n_in = raw.n_times
    dur = n_in / sfreq_in
    need = _seconds_to_samples(spec.offset_s, spec.sfreq) + spec.window_samples
    too_short = UserError(
        f"{source}: too short: {dur:.2f} s long, needs at least {spec.min_duration_s:.2f} s "
        f"(offset {spec.offset_s:g} s + one {spec.window_s:g} s window)"
    )
    # check before filtering: a too-short signal makes the FIR filter complain
    if int(round(n_in * spec.sfreq / sfreq_in)) < need:
        raise too_short
    x = raw.get_data(picks=[lookup[c] for c in spec.channels])  # [C, T] volts, float64
    if not np.isfinite(x).all():
        raise UserError(f"{source}: the signal has NaN or infinite samples")
    if sfreq_in != spec.sfreq:
        x = mne.filter.resample(x, up=spec.sfreq, down=sfreq_in, verbose="error")
        if x.shape[1] < need:  # resampling rounded the length down
            raise too_short
    if spec.l_freq is not None or spec.h_freq is not None:
        x = mne.filter.filter_data(
            x, spec.sfreq, spec.l_freq, spec.h_freq, copy=False, verbose="error"
        )
    x = np.clip(x * 1e6, -spec.clip_uv, spec.clip_uv)  # volts -> microvolts
    x = scale_signal(x, spec)
    return np.ascontiguousarray(x, dtype=np.float32)


def scale_signal(x_uv: np.ndarray, spec: EEGSpec) -> np.ndarray:
    """Clipped microvolts [C, T] -> model units [C, T] (see EEGSpec.scaling)."""
    if spec.scaling == "fixed":
        return x_uv / spec.unit_uv
    med = np.median(x_uv, axis=1, keepdims=True)
    q75, q25 = np.percentile(x_uv, [75, 25], axis=1, keepdims=True)
    rstd = (q75 - q25) / 1.349  # IQR of a normal is 1.349 sigma
    # a flat (disconnected) channel stays zero instead of being blown up
    rstd = np.where(rstd > 1e-3, rstd, 1.0)
    return (x_uv - med) / rstd


def preprocess_recording(recording: str | Path | mne.io.BaseRaw, spec: EEGSpec) -> np.ndarray:
    """A path or an mne Raw -> float32 [C, T] (see `preprocess_raw`)."""
    if isinstance(recording, (str, Path)):
        return preprocess_raw(read_recording(recording), spec, source=recording)
    return preprocess_raw(recording, spec)


def recording_windows(recording: str | Path | mne.io.BaseRaw, spec: EEGSpec) -> np.ndarray:
    """A path or an mne Raw -> float32 [N, C, W], all its windows (serving)."""
    x = preprocess_recording(recording, spec)
    starts = make_windows(x.shape[1], spec.sfreq, spec.window_s, spec.stride_s, spec.offset_s)
    return slice_windows(x, starts, spec.window_samples)


# ---------------------------------------------------------------- windowing


def make_windows(
    n_times: int, sfreq: float, window_s: float, stride_s: float, offset_s: float = 0.0
) -> np.ndarray:
    """Start indices of the windows of a signal of `n_times` samples.

    With W, S, O = window, stride, offset in samples (seconds * sfreq, rounded)
    and T' = n_times - O: n = floor((T' - W) / S) + 1 windows when T' >= W,
    else 0; starts are O, O + S, ..., all windows lie inside the signal and
    the tail shorter than a stride is dropped. Returns int64 [n].
    """
    w = _seconds_to_samples(window_s, sfreq)
    s = _seconds_to_samples(stride_s, sfreq)
    o = _seconds_to_samples(offset_s, sfreq)
    if w < 1 or s < 1 or o < 0:
        raise ValueError(f"window {w}, stride {s} must be >= 1 sample and offset {o} >= 0")
    span = n_times - o
    if span < w:
        return np.zeros(0, dtype=np.int64)
    n = (span - w) // s + 1
    return o + s * np.arange(n, dtype=np.int64)


def slice_windows(x: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """x [C, T], starts [N] -> copies of x[:, s:s+window], stacked [N, C, window]."""
    if len(starts) == 0:
        return np.zeros((0, x.shape[0], window), dtype=x.dtype)
    if starts.min() < 0 or starts.max() + window > x.shape[1]:
        raise ValueError("a window runs past the signal")
    idx = starts[:, None] + np.arange(window)[None, :]  # [N, W]
    return np.ascontiguousarray(x[:, idx].transpose(1, 0, 2))


# ------------------------------------------------------------------ targets


@dataclass(frozen=True)
class EEGRecord:
    """One recording and its target. split: "train"/"val"/"test" or None (not yet drawn)."""

    path: Path
    target: float | str
    split: str | None = None


def read_patient_field(path: str | Path) -> str:
    """The 80-byte patient-identification field of an EDF/BDF header (bytes 8..88)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(88)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from e
    if len(head) < 88 or not (head[:8] == b"0       " or head[:8] == b"\xffBIOSEMI"):
        raise UserError(f"{path}: not an EDF/BDF file (bad header)")
    return head[8:88].decode("latin-1").strip()


def parse_age(text: str) -> float | None:
    """`... Age:35 ...` (TUH convention, case-insensitive) -> 35.0; None if absent."""
    m = _AGE_RE.search(text)
    return float(m.group(1)) if m else None


def age_from_header(path: str | Path) -> float:
    """Age in years from the TUH `Age:NN` tag.

    EDF/BDF: read from the patient field of the file's header ourselves (mne
    only parses that field for EDF+). FIF: looked for in subject_info's
    `his_id`. Raises UserError naming the file when there is no usable age.
    """
    path = Path(path)
    if path.name.lower().endswith((".fif", ".fif.gz")):
        info = read_recording(path).info.get("subject_info") or {}
        text = str(info.get("his_id", ""))
    else:
        text = read_patient_field(path)
    age = parse_age(text)
    if age is None:
        raise UserError(
            f"{path}: no age in the header (expected 'Age:NN' in the patient field, "
            f"found {text!r}); give the ages in a CSV instead"
        )
    return age


def read_targets_csv(csv_path: str | Path, target: str) -> list[EEGRecord]:
    """Records from a CSV with a `path` column (relative to the CSV), a `target` column
    and an optional `split` column.

    Targets are floats when every value parses as a number, else strings (classes).
    """
    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            header = rows[0].keys() if rows else []
    except OSError as e:
        raise UserError(f"{csv_path}: cannot read ({e.strerror})") from e
    if not rows:
        raise UserError(f"{csv_path}: no rows")
    for col in ("path", target):
        if col not in header:
            raise UserError(
                f"{csv_path}: no column {col!r} (columns: {', '.join(header)})"
            )
    raw_targets: list[str] = []
    paths: list[Path] = []
    splits: list[str | None] = []
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        p, t = (row.get("path") or "").strip(), (row.get(target) or "").strip()
        if not p or not t:
            raise UserError(f"{csv_path}: line {i}: empty 'path' or {target!r}")
        full = Path(p) if Path(p).is_absolute() else csv_path.parent / p
        if not full.is_file():
            raise UserError(f"{csv_path}: line {i}: no such file {full}")
        sp = (row.get("split") or "").strip() or None
        if sp is not None and sp not in SPLITS:
            raise UserError(f"{csv_path}: line {i}: split {sp!r} is not one of {SPLITS}")
        paths.append(full)
        raw_targets.append(t)
        splits.append(sp)
    numeric = [_to_float(t) for t in raw_targets]
    targets: list[float | str] = (
        list(raw_targets) if any(v is None for v in numeric) else [float(v) for v in numeric]  # type: ignore[arg-type]
    )
    return [EEGRecord(p, t, s) for p, t, s in zip(paths, targets, splits)]


def _to_float(s: str) -> float | None:
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def list_recordings(data: str | Path, target: str) -> list[EEGRecord]:
    """What `--data PATH --target COLUMN` means for EEG.

    data: a CSV, or a folder. A folder's `labels.csv` is used when it has the
    target column; otherwise, for target "age", every EDF/BDF/FIF under the
    folder (sorted) gets its age from its header. Splits come from the CSV's
    `split` column where present, else None (draw them with `assign_splits`).
    """
    data = Path(data)
    if data.is_file() and data.suffix.lower() == ".csv":
        return read_targets_csv(data, target)
    if not data.is_dir():
        raise UserError(f"{data}: not a CSV file or a folder of EEG recordings")
    labels = data / "labels.csv"
    if labels.is_file():
        with open(labels, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        if target in header:
            return read_targets_csv(labels, target)
    if target != "age":
        raise UserError(
            f"{data}: no labels.csv with a {target!r} column (only 'age' can come from EDF headers)"
        )
    files = sorted(p for p in data.rglob("*") if p.is_file() and is_eeg_file(p))
    if not files:
        raise UserError(f"{data}: no .edf, .bdf or .fif recordings found")
    return [EEGRecord(p, age_from_header(p)) for p in files]


# ------------------------------------------------------------------- splits


def split_indices(n: int, val_frac: float = 0.15, test_frac: float = 0.15, seed: int = 0) -> np.ndarray:
    """A seeded split of n items: array [n] of "train"/"val"/"test".

    round(n * frac) items go to val and to test (at least one train item is
    kept); the same (n, fractions, seed) always gives the same answer.
    """
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise UserError(f"split fractions val={val_frac}, test={test_frac} must sum to < 1")
    n_val, n_test = int(round(n * val_frac)), int(round(n * test_frac))
    while n > 0 and n_val + n_test >= n:  # tiny n: keep one training item
        if n_test >= n_val and n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    order = np.random.default_rng(seed).permutation(n)
    out = np.full(n, "train", dtype=object)
    out[order[:n_val]] = "val"
    out[order[n_val : n_val + n_test]] = "test"
    return out.astype(str)


def assign_splits(
    records: Sequence[EEGRecord], val_frac: float = 0.15, test_frac: float = 0.15, seed: int = 0
) -> list[EEGRecord]:
    """Give every record without a split one, drawn over RECORDINGS (never windows).

    Records that already have a split keep it. The draw sorts the unsplit
    records by path first, so it does not depend on their order in the list.
    Returns the records in the input order.
    """
    todo = sorted((i for i, r in enumerate(records) if r.split is None), key=lambda i: str(records[i].path))
    labels = split_indices(len(todo), val_frac, test_frac, seed)
    out = list(records)
    for i, lab in zip(todo, labels):
        out[i] = replace(records[i], split=str(lab))
    return out


# ------------------------------------------------------------------ dataset


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


def split_datasets(
    records: Sequence[EEGRecord], spec: EEGSpec, **kwargs: Any
) -> dict[str, EEGWindowDataset]:
    """One dataset per split present in `records` (every record must have a split).

    String targets share one class list (sorted over all records) across splits.
    kwargs go to `EEGWindowDataset.from_records` (e.g. transform, for "train"
    only pass it yourself).
    """
    if any(r.split is None for r in records):
        raise ValueError("assign splits first (assign_splits)")
    classes = kwargs.pop("classes", None)
    if classes is None and any(isinstance(r.target, str) for r in records):
        classes = sorted({str(r.target) for r in records})
    return {
        sp: EEGWindowDataset.from_records([r for r in records if r.split == sp], spec, classes=classes, **kwargs)
        for sp in SPLITS
        if any(r.split == sp for r in records)
    }

