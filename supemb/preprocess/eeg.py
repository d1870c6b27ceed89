"""How an EEG recording becomes the encoder's windows (shared by training and serving).

The parameters are an `EEGSpec`, saved with the model and in the bundle's
manifest.json, so training and serving cannot drift.

Pipeline for one recording (see `preprocess_raw`):

    read (EDF/BDF/FIF) -> pick + order the spec's channels (names normalised,
    see `supemb.data.eeg_files.normalize_channel_name`) -> resample to
    spec.sfreq -> zero-phase FIR band-pass [l_freq, h_freq] -> volts to
    microvolts -> clip to +-clip_uv -> scale ("fixed": divide by unit_uv;
    "robust": per-channel median / IQR) -> float32 [C, T]

Windows are cut afterwards by the pure function `make_windows`, so filtering
never sees window edges; `recording_windows` does it all for serving.
numpy and mne only: serving EEG does not import torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from supemb.data.eeg_files import TUH_CHANNELS, channel_lookup, normalize_channel_name, quiet_mne, read_recording
from supemb.errors import UserError

if TYPE_CHECKING:  # mne is imported where used: importing this module stays light
    import mne

SCALINGS: tuple[str, ...] = ("fixed", "robust")


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
        return seconds_to_samples(self.window_s, self.sfreq)

    @property
    def stride_samples(self) -> int:
        return seconds_to_samples(self.stride_s, self.sfreq)

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


def seconds_to_samples(seconds: float, sfreq: float) -> int:
    # round, not floor: 0.1 s * 100 Hz is 10.000000000000002 or 9.999999999999998
    return int(round(seconds * sfreq))


# ------------------------------------------------------------ preprocessing


FLAT_V = 1e-9  # volts peak to peak: a channel that moves less records nothing (a disconnected electrode)


class FlatChannelWarning(UserWarning):
    """A recording with some of the model's channels flat: served, but the value may be off."""


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
    need = seconds_to_samples(spec.offset_s, spec.sfreq) + spec.window_samples
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
    flat = [c for c, row in zip(spec.channels, x) if np.ptp(row) < FLAT_V]
    if flat and len(flat) < len(spec.channels):  # all flat: familiarity flags the recording itself
        import warnings

        warnings.warn(f"{source}: {', '.join(flat)} flat (no signal): the prediction leans on the other channels "
                      "and may be off; check the electrodes", FlatChannelWarning, stacklevel=2)
    if sfreq_in != spec.sfreq:
        with quiet_mne():  # verbose= sets mne's process-wide log level (see eeg_files.MNE_LOCK)
            x = mne.filter.resample(x, up=spec.sfreq, down=sfreq_in, verbose="error")
        if x.shape[1] < need:  # resampling rounded the length down
            raise too_short
    if spec.l_freq is not None or spec.h_freq is not None:
        with quiet_mne():
            x = mne.filter.filter_data(x, spec.sfreq, spec.l_freq, spec.h_freq, copy=False, verbose="error")
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
    w = seconds_to_samples(window_s, sfreq)
    s = seconds_to_samples(stride_s, sfreq)
    o = seconds_to_samples(offset_s, sfreq)
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
