"""Loss benchmark: supemb's losses against the straightforward formulations.

- RnC: ours (sort + log-cumsum-exp, O(N^2) memory) against the
  loop-over-positives formulation of the paper (for each positive j, an N x N
  mask of the negatives with d_ik >= d_ij: O(N^3) time and memory).
- SupCon: ours (class sums, one masked log-sum-exp) against the dense-mask
  formulation (float N x N positive mask, logits mask, exp / log / masked sum).

For each batch size 2N it checks the values agree in float64 (1e-9), then
times forward+backward in float32 (median over repeats, the two
implementations interleaved so both see the same machine load), and measures
the peak memory of live tensors (CPU: from the profiler's allocation record;
CUDA: `torch.cuda.max_memory_allocated`).

    python benchmarks/losses.py [--sizes 64 256 512 1024] [--device cpu|cuda] [--json PATH]

Prints a table and writes JSON (default benchmarks/results/losses-<device>.json).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from supemb.losses import RnCLoss, SupConLoss

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_machine.py, however this file is loaded
from _machine import append_run, machine_info  # noqa: E402

DIM = 128
VIEWS = 2


# ----------------------------------------------------- baseline formulations

def rnc_loop(
    features: torch.Tensor, targets: torch.Tensor, temperature: float = 2.0, gram: bool = False
) -> torch.Tensor:
    """The paper's formula evaluated one positive column at a time.

    features: [B, V, D]; targets: [B]. For column j of the off-diagonal
    matrices, the negatives of anchor i are the k with d_ik >= d_ij; their
    exp-logits are summed through an [n, n-1] mask, so the Python loop runs
    n - 1 times and autograd keeps one mask per step. Distances come from
    explicit differences as the formula reads (an n x n x D tensor), or with
    `gram=True` from the Gram matrix, so that only the loop is compared.
    """
    z = torch.cat(features.unbind(1), dim=0)  # [n, D]
    y = targets.repeat(features.shape[1]).to(z.dtype)
    n = z.shape[0]
    if gram:
        logits = -torch.cdist(z, z, compute_mode="use_mm_for_euclid_dist") / temperature
    else:
        logits = -(z[:, None, :] - z[None, :, :]).norm(dim=-1) / temperature
    dist = (y[:, None] - y[None, :]).abs()
    off = ~torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_select(off).view(n, n - 1)
    dist = dist.masked_select(off).view(n, n - 1)
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    exp_logits = logits.exp()
    loss = z.new_zeros(())
    for j in range(n - 1):
        pos_logits = logits[:, j]
        neg_mask = (dist >= dist[:, j : j + 1]).to(z.dtype)
        pos_log_probs = pos_logits - torch.log((neg_mask * exp_logits).sum(dim=1))
        loss = loss - pos_log_probs.sum() / (n * (n - 1))
    return loss


def supcon_dense(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SupCon L_out with explicit float masks, as commonly written."""
    b, v, _ = features.shape
    z = F.normalize(torch.cat(features.unbind(1), dim=0), dim=1)
    n = b * v
    mask = (labels[:, None] == labels[None, :]).to(z.dtype).repeat(v, v)
    logits = z @ z.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    logits_mask = torch.ones_like(mask) - torch.eye(n, dtype=z.dtype, device=z.device)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    return -mean_log_prob_pos.mean()


# --------------------------------------------------------------- the cases

def make_case(loss_name: str, impl: str, two_n: int, device: str, dtype: torch.dtype, seed: int = 0):
    """Returns (fn(features) -> loss, features with requires_grad)."""
    g = torch.Generator().manual_seed(seed)
    batch = two_n // VIEWS
    feats = torch.randn(batch, VIEWS, DIM, generator=g, dtype=dtype).to(device).requires_grad_(True)
    if loss_name == "rnc":
        # Ages 0..99 in whole years: many ties, as in real data.
        targets = torch.randint(0, 100, (batch,), generator=g).to(device=device, dtype=dtype)
        ours = RnCLoss(temperature=2.0)
        if impl == "ours":
            fn = lambda f: ours(f, targets)  # noqa: E731
        else:
            fn = lambda f: rnc_loop(f, targets, gram=impl == "loop_gram")  # noqa: E731
    else:
        labels = torch.randint(0, 10, (batch,), generator=g).to(device)
        ours = SupConLoss(temperature=0.1)
        fn = (lambda f: ours(f, labels)) if impl == "ours" else (lambda f: supcon_dense(f, labels))
    return fn, feats


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def fwd_bwd(fn, feats) -> float:
    feats.grad = None
    loss = fn(feats)
    loss.backward()
    return loss.item()


IMPLS = {"rnc": ("ours", "loop", "loop_gram"), "supcon": ("ours", "dense")}
LABELS = {
    "loop": "loop over positives (explicit differences)",
    "loop_gram": "loop over positives (Gram distances)",
    "dense": "dense mask",
}


def time_impls(loss_name: str, two_n: int, device: str, repeats: int) -> dict[str, float]:
    """Median forward+backward seconds of each implementation, interleaved."""
    cases = {impl: make_case(loss_name, impl, two_n, device, torch.float32) for impl in IMPLS[loss_name]}
    times: dict[str, list[float]] = {impl: [] for impl in cases}
    inner = {}
    for impl, (fn, feats) in cases.items():  # warm-up; size each sample to >= 20 ms
        _sync(device)
        t0 = time.perf_counter()
        fwd_bwd(fn, feats)
        _sync(device)
        inner[impl] = max(1, int(0.02 / max(time.perf_counter() - t0, 1e-6)))
    for _ in range(repeats):
        for impl, (fn, feats) in cases.items():
            # An untimed call first: the previous implementation may have just
            # freed gigabytes, and re-faulting fresh pages is not this one's cost.
            fwd_bwd(fn, feats)
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(inner[impl]):
                fwd_bwd(fn, feats)
            _sync(device)
            times[impl].append((time.perf_counter() - t0) / inner[impl])
    return {impl: statistics.median(ts) for impl, ts in times.items()}


def check_values(loss_name: str, two_n: int, device: str) -> float:
    """Max abs difference of loss and gradient between ours and each baseline, float64."""
    out = []
    for impl in IMPLS[loss_name]:
        fn, feats = make_case(loss_name, impl, two_n, device, torch.float64)
        value = fn(feats)
        (grad,) = torch.autograd.grad(value, feats)
        out.append((value.detach(), grad))
    (v0, g0), rest = out[0], out[1:]
    return max(max(float((v0 - v).abs()), float((g0 - g).abs().max())) for v, g in rest)


@contextlib.contextmanager
def _quiet_stderr():
    """The profiler's C++ side logs start/stop lines to fd 2; keep the table clean."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_memory_mb(loss_name: str, impl: str, two_n: int, device: str) -> float:
    """Peak memory (MiB) of live tensors during one float32 forward+backward.

    CUDA: the caching allocator's peak. CPU: the profiler's allocation record
    (bytes allocated and freed by each op, in time order), summed to a
    running total whose maximum is the peak of live tensor memory.
    """
    fn, feats = make_case(loss_name, impl, two_n, device, torch.float32)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fwd_bwd(fn, feats)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fwd_bwd(fn, feats)
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage != 0), key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 512, 1024])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--check-max", type=int, default=512,
                        help="check float64 values at sizes up to this (the loop is slow)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/losses.py: --device cuda but no CUDA GPU is available")

    machine = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    rows = []
    for loss_name, impls in IMPLS.items():
        for two_n in args.sizes:
            max_diff = check_values(loss_name, two_n, args.device) if two_n <= args.check_max else None
            t = time_impls(loss_name, two_n, args.device, args.repeats)
            for base in impls[1:]:
                mem = {impl: peak_memory_mb(loss_name, impl, two_n, args.device) for impl in ("ours", base)}
                row = {
                    "loss": loss_name, "baseline": LABELS[base], "2N": two_n,
                    "ours_ms": t["ours"] * 1e3, "base_ms": t[base] * 1e3, "speedup": t[base] / t["ours"],
                    "ours_peak_mb": mem["ours"], "base_peak_mb": mem[base], "max_abs_diff_f64": max_diff,
                }
                rows.append(row)
                diff = "n/a" if max_diff is None else f"{max_diff:.1e}"
                print(f"{loss_name:6s} 2N={two_n:5d} ours {row['ours_ms']:8.2f} ms | {LABELS[base]:43s} "
                      f"{row['base_ms']:9.2f} ms | x{row['speedup']:6.1f} | peak MiB ours {mem['ours']:7.1f} "
                      f"base {mem[base]:8.1f} | f64 diff {diff}", flush=True)

    out = Path(args.json or Path(__file__).parent / "results" / f"losses-{args.device}.json")
    n = append_run(out, {"machine": machine_info(**machine), "dim": DIM, "views": VIEWS, "rows": rows})
    print(f"\nmachine: {machine}\nappended run {n} to {out}")


if __name__ == "__main__":
    main()
