"""Serving inputs -> model tensors, decoded ahead of inference.

Each input goes through its modality's decoder (`Modality.decoder`: the
recorded preprocessing steps, the same ones training ran), which gives its
rows: one for an image, one per window for an EEG recording.

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
from dataclasses import dataclass, field
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
    """Decoded inputs: `x` [n, ...] rows, `owner` [n] the input position of each row, and
    `meta`: input position -> what its decoder said about it (e.g. the face it kept)."""

    x: np.ndarray
    owner: np.ndarray
    failures: list[Failure]
    done: int  # inputs consumed so far (for progress bars)
    meta: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Decoded:
    """What a decoder may return instead of bare rows: the rows and facts about the input
    (a face step's box and score) that travel to its prediction."""

    rows: np.ndarray
    meta: dict[str, Any]


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
            rows, owner, failures, meta = [], [], [], {}
            for pos, fut in enumerate(futures, start):
                got = fut.result()
                if isinstance(got, Failure):
                    failures.append(got)
                    continue
                if isinstance(got, Decoded):
                    got, meta[pos] = got.rows, got.meta
                rows.append(got)
                owner.append(np.full(len(got), pos, dtype=np.int64))
            x = np.concatenate(rows) if rows else np.zeros((0,), np.float32)
            yield Batch(x, np.concatenate(owner) if owner else np.zeros(0, np.int64), failures, stop, meta)
