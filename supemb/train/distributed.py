"""Training with several processes: torch.distributed and DDP, launched by torchrun.

    torchrun --nproc-per-node=4 -m supemb train --data D --target T --out RUN          # one machine
    torchrun --nnodes=2 --node-rank=0 --nproc-per-node=8 \\
             --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 -m supemb train ...         # each machine

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; `World.from_env` reads them, and
a plain `supemb train` is a world of one, unchanged. Each rank runs on one GPU
(NCCL) or on the CPU (gloo). What the trainer does with a world of N:

- `--batch-size` is the *global* batch: every rank takes its own contiguous
  B / N slice of each global batch of the one seeded epoch order (`rank_batches`),
  so the union of the ranks' batches at a step is exactly the single-process batch,
  with the same per-item augmentation (seeded by seed, epoch and item).
- Contrastive losses see the whole global batch: `gather` concatenates every
  rank's features and labels (rank order = the single-process order) and the
  loss is computed on all of them on every rank. Its backward sums each rank's
  gradient of the (identical) loss into the features' owner (an all-reduce),
  which is N times the single-process gradient there; DDP then averages the
  parameter gradients over the N ranks, so a step's gradient equals the
  single-process gradient on the same global batch.
- State a loss keeps between steps (targeted SupCon's class centroids and target
  assignment) is broadcast from rank 0 before each step (`sync_buffers`); as every
  rank sees the same global features, all ranks then compute the same assignment.
- BatchNorm: SyncBatchNorm on GPUs (`--sync-bn`, on by default), so batch
  statistics are those of the global batch. PyTorch's SyncBatchNorm needs GPUs;
  on CPUs each rank normalises with its own slice's statistics (and DDP keeps
  rank 0's running statistics), so a CPU run with BatchNorm is close to, not
  identical with, the single-process run.
- Only rank 0 writes the run directory, prints and draws the progress bar.
  Evaluation embeds each split once, every rank a shard (`gather_rows`), and
  rank 0 computes the figures. Stage 2 and the end of the run (fitting the
  linear head, choosing the kNN settings, writing model.json) are single-process
  work: after stage 1 the other ranks leave and rank 0 finishes alone.
- Resume: rank 0 reads the checkpoint and broadcasts it. A checkpoint from
  another world size continues with the same global batches, and the run says
  that the result will not be bit-identical.
- Faults: a rank that raises exits non-zero with one line naming itself
  (`supemb.train.world.rank_prefix`); torchrun then stops the others. Collectives time out after
  `--dist-timeout` seconds, so a lost machine ends the run instead of hanging it.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from supemb.errors import UsageError, UserError
from supemb.train.world import World


def start(world: World, device_name: str, timeout_s: float) -> torch.device:
    """Join the process group (NCCL with one GPU per rank when CUDA is used, else gloo) and
    return this rank's device. A world of one: nothing to join, the device `--device` names."""
    from supemb.train.device import resolve_device

    device = resolve_device(device_name)
    if not world.active:
        return device
    if device.type == "cuda":
        if torch.cuda.device_count() < world.local_size:
            raise UserError(f"{world.local_size} processes on this machine but {torch.cuda.device_count()} GPUs; "
                            "start one process per GPU (--nproc-per-node) or use --device cpu")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
        # the machine's cores shared among its ranks (torchrun also sets OMP_NUM_THREADS=1)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world.local_size))
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                                **({"device_id": device} if backend == "nccl" else {}))
    return device


_STOPS = 0  # how many times this process has left a group (keys of the leaving handshake)


def stop(timeout_s: float = 300.0) -> None:
    """Leave the process group together: a barrier, then a handshake through the rendezvous
    store, then destroy. The barrier alone is not enough with gloo: a rank that destroys its
    group as soon as its barrier returns closes its connections while a peer may still be
    reading the barrier's last message, and that peer aborts (pytorch/gloo#155). So each rank
    says through the store that it is past the barrier and waits for the others; rank 0 (which
    may host the store) also waits until every other rank is done with the store."""
    global _STOPS
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    _STOPS += 1
    _leave_together(f"supemb/stop/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{_STOPS}", timeout_s)
    dist.destroy_process_group()


def _leave_together(key: str, timeout_s: float) -> None:
    """The handshake of `stop`; best effort: without a store, or past timeout_s, it just returns."""
    import time

    try:
        store = dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):
        return
    size, rank = dist.get_world_size(), dist.get_rank()
    deadline = time.monotonic() + timeout_s

    def wait_for(name: str, count: int) -> None:
        while int(store.add(name, 0)) < count and time.monotonic() < deadline:
            time.sleep(0.005)

    store.add(f"{key}/past-barrier", 1)
    wait_for(f"{key}/past-barrier", size)
    if rank != 0:
        store.add(f"{key}/done", 1)  # this rank's last use of the store
    else:
        wait_for(f"{key}/done", size - 1)


def local_batch(global_batch: int, world: World) -> int:
    """Each rank's share of `--batch-size` (the global batch)."""
    if global_batch % world.size:
        raise UsageError(f"--batch-size {global_batch} is the global batch and must divide evenly over "
                         f"{world.size} processes (e.g. {global_batch - global_batch % world.size})")
    return global_batch // world.size


def rank_batches(order: list[int], global_batch: int, world: World, drop_last: bool) -> list[list[int]]:
    """This rank's batches of one epoch: its contiguous slice of each global batch of `order`.

    With several ranks an incomplete last global batch is dropped, so every rank
    steps the same number of times with batches of equal size.
    """
    b = local_batch(global_batch, world)
    if world.active:
        drop_last = True
    n_full = len(order) // global_batch
    starts = range(0, n_full * global_batch if drop_last else len(order), global_batch)
    out = []
    for s in starts:
        chunk = order[s:s + global_batch]
        out.append(chunk[world.rank * b:(world.rank + 1) * b] if world.active else chunk)
    return out


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' `x` concatenated in rank order; backward: the sum over ranks of the gradient
    with respect to this rank's rows (every rank's loss depends on every rank's features)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.rows, ctx.rank = x.shape[0], dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather(features: torch.Tensor, labels: torch.Tensor, world: World) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N_global, ...], labels [N_global, ...]) of the global batch, in rank order.

    features carry gradients back to their owner; labels are plain data. Every rank
    must hold the same number of rows (`rank_batches` guarantees it)."""
    if not world.active:
        return features, labels
    parts = [torch.empty_like(labels) for _ in range(world.size)]
    dist.all_gather(parts, labels.contiguous())
    return _GatherWithGrad.apply(features), torch.cat(parts)


def gather_rows(x: torch.Tensor, world: World) -> torch.Tensor:
    """Concatenate every rank's rows [n_r, ...] (sizes may differ by rank) in rank order, on every rank."""
    if not world.active:
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world.size)]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[:x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(s.item())] for p, s in zip(parts, sizes)])


def shard(n: int, world: World) -> range:
    """This rank's contiguous share of n items (the first ranks take one more when n % size)."""
    per, extra = divmod(n, world.size)
    start = world.rank * per + min(world.rank, extra)
    return range(start, start + per + (world.rank < extra))


def sync_buffers(module: torch.nn.Module, world: World) -> None:
    """Every buffer of `module` (e.g. a loss's running state) set to rank 0's."""
    if world.active:
        for buf in module.buffers():
            dist.broadcast(buf.data, src=0)


def broadcast_state(state: dict[str, Any] | None, world: World) -> dict[str, Any]:
    """Rank 0's `state` (a checkpoint it read) on every rank."""
    if not world.active:
        assert state is not None
        return state
    box = [state]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def default_workers(world: World) -> int:
    """DataLoader worker processes per rank, from the cores each rank has: none below 4 (on 2
    cores a worker only competes with the training step: benchmarks/training.py measured 554
    against 612 samples/s), else half of them, at most 8."""
    cores = (os.cpu_count() or 1) // world.local_size
    return 0 if cores < 4 else min(8, cores // 2)


def mean_over_ranks(value: torch.Tensor, world: World) -> torch.Tensor:
    """A scalar averaged over the ranks (a contrastive loss is already equal everywhere; a
    baseline's differs by slice), so every rank sees the same value and decides alike."""
    if not world.active:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / world.size
