"""Embedding many inputs with several processes: one ONNX Runtime encoder per process, one result.

    emb, owner, failures = embed_rows_sharded(root / "encoder.onnx", pipeline.to_record(), paths,
                                              processes=4, device="cpu", batch_size=64)

The inputs are cut into contiguous shards whose bounds are multiples of
`batch_size`, so every ONNX Runtime batch holds exactly the inputs it holds
in one process, and the shards go to a pool of "spawn" processes. Each
process builds its own `Encoder` once, from the ONNX path and the
preprocessing record: only plain data (paths, the record, settings) crosses
to the workers, never a model or a pipeline. The shards' rows come back in
input order, their `owner` positions and `Failure.position`s shifted by the
shard's start, so the result equals `Encoder.embed_rows` in one process bit
for bit (and so do the gallery files written from it).

CPU: each process gets cpu_count // processes ONNX Runtime threads, so
together they do not oversubscribe the cores. CUDA: worker i runs on GPU
i % (number of GPUs). A shard is at most `MAX_SHARD_BATCHES` batches, so
a failure stops the others within one shard and a progress bar moves.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from supemb.embed.batches import Failure
from supemb.embed.onnx import _PROGRESS_MIN, Encoder, _providers
from supemb.errors import UserError

MAX_SHARD_BATCHES = 16  # batches per shard at most: bounds the work left running after a failure

Rows = tuple[np.ndarray, np.ndarray, list[Failure]]  # (embeddings [R, D], owner [R], failures)


def shard_bounds(n: int, processes: int, batch_size: int,
                 max_batches: int = MAX_SHARD_BATCHES) -> list[tuple[int, int]]:
    """[start, stop) slices that cover range(n) in order, each start a multiple of
    `batch_size`: `processes` shards where there are that many batches (else one
    per batch), more once a shard would exceed `max_batches` batches; the
    batches are spread as evenly as they go."""
    n_batches = -(-n // batch_size)
    n_shards = min(n_batches, max(processes, -(-n_batches // max_batches)))
    cuts = [k * n_batches // n_shards * batch_size for k in range(n_shards)]
    return [(a, min(b, n)) for a, b in zip(cuts, [*cuts[1:], n])]


def cuda_device_count() -> int:
    """GPUs a worker may pick from: CUDA_VISIBLE_DEVICES where set, else
    `nvidia-smi -L`'s list; 1 when neither says (ONNX Runtime counts none)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return max(1, len([d for d in visible.split(",") if d.strip()]))
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 1
    return max(1, sum(line.startswith("GPU ") for line in listed.splitlines()))


# ------------------------------------------------------------- in the worker

_WORKER: dict[str, Any] = {}  # per worker process: its GPU and, after its first shard, its encoder


def _start_worker(counter: Any, gpus: int) -> None:
    """Pool initializer: the i-th worker started takes GPU i % gpus (used with device "cuda")."""
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    _WORKER.clear()
    _WORKER["device_id"] = index % gpus


def _embed_shard(spec: dict[str, Any], items: list[str | Path]) -> Rows:
    """One shard's rows, positions relative to the shard; the encoder is built on the first shard."""
    encoder = _WORKER.get("encoder")
    if encoder is None:
        from supemb import modalities

        plugin, pipeline = modalities.from_record(spec["record"], spec["onnx"])
        encoder = Encoder(Path(spec["onnx"]), plugin, pipeline, device=spec["device"],
                          device_id=_WORKER.get("device_id"), threads=spec["threads"])
        _WORKER["encoder"] = encoder
    return encoder.embed_rows(items, batch_size=spec["batch_size"], progress=False, on_error=spec["on_error"])


# ------------------------------------------------------------- in the parent


def _shard_error(err: BaseException, start: int, stop: int, items: Sequence[Any]) -> UserError:
    if isinstance(err, BrokenProcessPool):
        cause = "a worker process stopped abruptly (killed, or out of memory?)"
    else:
        cause = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
    return UserError(f"embedding inputs {start}-{stop - 1} of {len(items)} ({items[start]} to {items[stop - 1]}) "
                     f"in a worker process failed: {cause}")


def embed_rows_sharded(onnx_path: str | Path, record: dict[str, Any], items: Sequence[str | Path], *,
                       processes: int, device: str = "cpu", batch_size: int = 64, on_error: str = "raise",
                       progress: bool | None = None, gpus: int | None = None) -> Rows:
    """`Encoder(onnx_path, *from_record(record)).embed_rows(items, batch_size, on_error=on_error)`,
    run on `processes` worker processes: (row embeddings [R, D], owner [R] input position of each
    row, failures), equal to the one-process result. `items` are file paths. With on_error="raise"
    the first bad input (in input order) stops it with the message one process gives; a worker that
    dies or fails otherwise is a one-line UserError naming its inputs. `gpus` (device "cuda"): how
    many to spread the workers over (default: `cuda_device_count()`)."""
    if on_error not in ("raise", "skip"):
        raise UserError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if processes < 1 or batch_size < 1:
        raise UserError(f"processes and batch_size must be >= 1, got {processes} and {batch_size}")
    for pos, item in enumerate(items):
        if not isinstance(item, (str, Path)):
            raise UserError(f"input {pos} is a {type(item).__name__}: several processes embed files, "
                            "give paths (or use one process)")
    bounds = shard_bounds(len(items), processes, batch_size)
    if not bounds:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), []
    workers = min(processes, len(bounds))
    # "auto" -> what this ONNX Runtime offers, decided once for all workers
    device = "cuda" if _providers(device)[0] == "CUDAExecutionProvider" else "cpu"
    spec = {"onnx": str(onnx_path), "record": dict(record), "device": device, "batch_size": batch_size,
            "on_error": on_error, "threads": max(1, (os.cpu_count() or 1) // workers)}
    bar = None
    if progress or (progress is None and len(items) >= _PROGRESS_MIN and sys.stderr.isatty()):
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc=f"embedding ({device}, {workers} processes)", unit="input", leave=False)
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: nothing of the parent's state is copied
    gpus = gpus or (cuda_device_count() if device == "cuda" else 1)
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker, initargs=(ctx.Value("i", 0), gpus))
    futures: list[Future] = []

    def finished(i: int, fut: Future) -> None:  # runs in the pool's thread as each shard ends
        if fut.cancelled():
            return
        if fut.exception() is not None:
            for later in futures[i + 1:]:  # only an earlier shard can hold an earlier failure
                later.cancel()
        elif bar is not None:
            bar.update(bounds[i][1] - bounds[i][0])

    results: list[Rows] = []
    try:
        futures.extend(pool.submit(_embed_shard, spec, list(items[a:b])) for a, b in bounds)
        for i, fut in enumerate(futures):
            fut.add_done_callback(lambda f, i=i: finished(i, f))
        for (a, b), fut in zip(bounds, futures):  # in input order: the first failure met is the first input's
            try:
                results.append(fut.result())
            except UserError:
                raise  # a bad input (named) or a bad model: the message one process gives
            except Exception as err:
                raise _shard_error(err, a, b, items) from err
    except BrokenProcessPool as err:  # the pool broke while shards were still being handed out
        raise _shard_error(err, 0, len(items), items) from err
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
    emb = np.concatenate([r[0] for r in results])
    owner = np.concatenate([r[1] + a for r, (a, _) in zip(results, bounds)])
    failures = [replace(f, position=f.position + a) for r, (a, _) in zip(results, bounds) for f in r[2]]
    return emb, owner, failures
