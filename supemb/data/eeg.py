"""Window-level EEG predictions -> recording-level ones (`aggregate_by_recording`).

numpy only. (The rest of the former EEG module moved: reading to
`supemb.data.eeg_files`, preprocessing and windowing to
`supemb.preprocess.eeg`, the torch datasets to `supemb.train.eeg_windows`.)
"""

from __future__ import annotations

import numpy as np


def aggregate_by_recording(
    values: np.ndarray, recording_index: np.ndarray, how: str = "mean"
) -> tuple[np.ndarray, np.ndarray]:
    """Window-level predictions -> recording-level.

    values: [N] or [N, K] (e.g. class probabilities); recording_index: [N].
    how: "mean" or "median" (robust to a few artefact windows).
    Returns (recordings [R] sorted ascending, aggregated [R] or [R, K]).
    """
    values = np.asarray(values)
    rec = np.asarray(recording_index)
    if len(values) != len(rec):
        raise ValueError(f"{len(values)} values but {len(rec)} recording indices")
    if how not in ("mean", "median"):
        raise ValueError(f"how must be 'mean' or 'median', got {how!r}")
    uniq, inv = np.unique(rec, return_inverse=True)
    if how == "mean":
        flat = values.reshape(len(values), -1).astype(np.float64)
        sums = np.zeros((len(uniq), flat.shape[1]))
        np.add.at(sums, inv, flat)
        out = sums / np.bincount(inv, minlength=len(uniq))[:, None]
    else:
        out = np.stack([np.median(values[inv == j], axis=0) for j in range(len(uniq))]).reshape(len(uniq), -1)
    return uniq, out.reshape((len(uniq),) + values.shape[1:])
