"""Serving inputs -> model tensors, decoded ahead of inference.

Images: a path, a `PIL.Image` or an HxWx3 uint8 array, through the same
evaluation preprocessing as training (`supemb.preprocess.image`). EEG: an
EDF/BDF/FIF path or an `mne.io.Raw`, cut into the windows the model was
trained on (`supemb.data.eeg.recording_windows`).

`decoded_batches` decodes the next batch on a thread pool while the caller
runs the current one through ONNX Runtime (which releases the GIL), so
files-to-predictions runs close to the bare model's speed. A bad input is
reported by name, as a `Failure`, and does not stop the others.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from supemb.errors import UserError


@dataclass(frozen=True)
class Failure:
    """Input `position` (in the caller's list) could not be used: `message` says why, naming it."""

    position: int
    source: str
    message: str


def describe(item: Any, position: int) -> str:
    """How an input is named in messages: its path, or its position and kind."""
    if isinstance(item, (str, Path)):
        return str(item)
    filenames = getattr(item, "filenames", None)
    if filenames and filenames[0]:
        return str(filenames[0])
    return f"input {position} ({type(item).__name__})"


def image_decoder(spec: Any) -> Callable[[Any], np.ndarray]:
    """A function: one image input (path, PIL image or uint8 array) -> float32 [1, 3, S, S].
    Paths are decoded by `supemb.data.images.load_image` (its one-line errors name the file)."""
    from supemb.preprocess.image import eval_preprocess_array

    return lambda item: eval_preprocess_array(item, spec)[None]


def eeg_decoder(spec: Any) -> Callable[[Any], np.ndarray]:
    """A function: one recording (path or mne Raw) -> float32 [n_windows, C, W]."""
    from supemb.preprocess.eeg import recording_windows

    def decode(item: Any) -> np.ndarray:
        if isinstance(item, (str, Path)):
            path = Path(item)
            if not path.is_file():
                raise UserError(f"{path}: no such EEG file")
            if path.stat().st_size == 0:
                raise UserError(f"{path}: empty file, not an EEG recording")
        elif not hasattr(item, "get_data"):
            raise UserError(f"a recording must be an EDF/BDF/FIF path or an mne.io.Raw, not {type(item).__name__}")
        windows = recording_windows(item, spec)
        if len(windows) == 0:
            raise UserError(f"{describe(item, 0)}: too short for one window of {spec.window_s:g} s")
        return windows

    return decode


def _decode_one(decode: Callable[[Any], np.ndarray], item: Any, position: int) -> np.ndarray | Failure:
    try:
        return decode(item)
    except UserError as err:
        msg = str(err)
        name = describe(item, position)
        return Failure(position, name, msg if name in msg else f"{name}: {msg}")
    except (OSError, ValueError, RuntimeError) as err:  # anything a damaged file can raise past the decoders
        name = describe(item, position)
        return Failure(position, name, f"{name}: cannot read ({' '.join(str(err).split()) or type(err).__name__})")


@dataclass
class Batch:
    """Decoded inputs: `x` [n, ...] rows, `owner` [n] the input position of each row."""

    x: np.ndarray
    owner: np.ndarray
    failures: list[Failure]
    done: int  # inputs consumed so far (for progress bars)


def decoded_batches(
    items: Sequence[Any],
    decode: Callable[[Any], np.ndarray],
    batch_size: int,
    workers: int | None = None,
    prefetch: int = 2,
) -> Iterator[Batch]:
    """Decode `items` in order, `batch_size` inputs per batch, `prefetch`
    batches ahead on `workers` threads (default: CPU count, at most 8).

    Each input may give several rows (EEG windows); `owner` maps rows back.
    Batches hold `batch_size` inputs, so an EEG batch can hold more rows.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    n = len(items)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="supemb-decode") as pool:
        pending: deque[tuple[int, list[Future]]] = deque()
        next_start = 0

        def submit() -> None:
            nonlocal next_start
            stop = min(next_start + batch_size, n)
            futures = [pool.submit(_decode_one, decode, items[i], i) for i in range(next_start, stop)]
            pending.append((stop, futures))
            next_start = stop

        while next_start < n and len(pending) < prefetch:
            submit()
        while pending:
            stop, futures = pending.popleft()
            if next_start < n:
                submit()  # keep the pool busy while the caller runs this batch
            start = stop - len(futures)
            rows, owner, failures = [], [], []
            for pos, fut in enumerate(futures, start):
                got = fut.result()
                if isinstance(got, Failure):
                    failures.append(got)
                else:
                    rows.append(got)
                    owner.append(np.full(len(got), pos, dtype=np.int64))
            x = np.concatenate(rows) if rows else np.zeros((0,), np.float32)
            yield Batch(x, np.concatenate(owner) if owner else np.zeros(0, np.int64), failures, stop)
