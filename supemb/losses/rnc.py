r"""Rank-N-Contrast loss (SupCR / RnC; Zha et al., 2023) for continuous targets.

Features `[B, V, D]` are flattened to n = V * B items z_1..z_n with targets
y_1..y_n (each view carries its sample's target; targets may be `[B]` or
multi-dimensional `[B, T]`). With a feature similarity s (default the negative
L2 distance) and a label distance d (default L1), for each anchor i and each
other item j, the negatives of the pair are every k ≠ i at least as far from i
in label space as j is (ties included, so j itself is one):

    ℓ(i, j) = -log( exp(s_ij / τ) / Σ_{k ≠ i, d_ik ≥ d_ij} exp(s_ik / τ) )
    L       = 1 / (n (n-1)) Σ_i Σ_{j ≠ i} ℓ(i, j)

The paper's reference code loops over j and builds an n x n mask per step:
O(n^3) time and memory. Here nothing loops over pairs and memory is O(n^2):

- Targets are per sample, so the label structure is computed on the B x B
  sample matrix: each row's samples sorted by label distance, and the tie
  groups (first and last position of each group of equal distance).
- For anchor i, the exp-logits of each sample's V views are summed (i itself
  excluded); the denominator for every j is then a suffix sum over the sorted
  samples taken at the start of j's tie group, so ties are all included.
- The gradient is analytic (a custom autograd Function): for k in sample c,
  dL/dl_ik is e_ik * (prefix sum of mult/denominator up to the end of c's tie
  group) - 1, scaled by 1 / (n (n-1)).

Sums run in float64 on exp(l - row max). Should a denominator underflow
(features so far apart that exp differences pass 1e-250), the loss switches
to a log-space path (`logcumsumexp`, autograd) that is stable for any input;
both paths give the same values.

Features are used as they are (``normalize=False``), as in the paper, where
the similarity is the negative L2 distance and τ = 2; ``similarity="cosine"``
normalises and uses dot products instead.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from supemb.losses._common import (
    check_features,
    finite_or_raise,
    flatten_views,
    full_precision,
    graph_grad as _graph_grad,
    pairwise_sq_l2,
    promote,
    safe_sqrt,
)


class RnCLoss(nn.Module):
    """Rank-N-Contrast (SupCR) loss.

    Args:
        temperature: τ; the paper uses 2 with the negative L2 similarity.
        label_distance: "l1" (sum of absolute differences, the default) or "l2".
        similarity: "l2" (negative Euclidean distance, default) or "cosine".
        normalize: L2-normalise features before the L2 similarity
            (cosine always normalises).
    """

    def __init__(
        self,
        temperature: float = 2.0,
        label_distance: Literal["l1", "l2"] = "l1",
        similarity: Literal["l2", "cosine"] = "l2",
        normalize: bool = False,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if label_distance not in ("l1", "l2"):
            raise ValueError(f"label_distance must be 'l1' or 'l2', got {label_distance!r}")
        if similarity not in ("l2", "cosine"):
            raise ValueError(f"similarity must be 'l2' or 'cosine', got {similarity!r}")
        self.temperature = float(temperature)
        self.label_distance = label_distance
        self.similarity = similarity
        self.normalize = normalize

    def forward(self, features: Tensor, targets: Tensor) -> Tensor:
        """features: `[B, V, D]` (or `[B, D]`); targets: `[B]` or `[B, T]`."""
        features = check_features(features)
        batch, views, _ = features.shape
        y = _check_targets(targets, batch).to(features.device)
        if batch * views < 2:
            raise ValueError("RnCLoss needs at least 2 items (samples x views) in a batch")
        with full_precision(features.device.type):
            z = flatten_views(promote(features))  # [n, D]
            structure = rank_structure(label_distances(y, self.label_distance), views)
            if self.similarity == "cosine":
                loss = rnc_cosine(F.normalize(z, dim=-1), structure, self.temperature)
            else:
                loss = rnc_l2(F.normalize(z, dim=-1) if self.normalize else z, structure, self.temperature)
            return finite_or_raise(loss, features)


def _check_targets(targets: Tensor, batch: int) -> Tensor:
    """Targets `[B]` or `[B, T]` -> float64 `[B, T]` (exact label distances and ties)."""
    if not isinstance(targets, Tensor):
        targets = torch.as_tensor(targets)
    given = tuple(targets.shape)
    if targets.dim() == 1:
        targets = targets.unsqueeze(1)
    if targets.dim() != 2 or targets.shape[0] != batch or targets.shape[1] == 0:
        raise ValueError(f"targets must have shape [B] or [B, T] with B = {batch}, got {given}")
    targets = targets.to(torch.float64)
    if not bool(torch.isfinite(targets).all()):
        raise ValueError("targets contain NaN or Inf values")
    return targets


def label_distances(y: Tensor, kind: str) -> Tensor:
    """y: `[B, T]` -> `[B, B]` L1 or L2 distances between target vectors."""
    diff = y[:, None, :] - y[None, :, :]
    if kind == "l1":
        return diff.abs().sum(-1)
    return diff.pow(2).sum(-1).sqrt()


class RankStructure(NamedTuple):
    """What the labels fix about an RnC batch (no gradient), per sample row `[B, B]`.

    Row b describes anchors from sample b (any view); columns are positions
    q = 0..B-1 of the samples sorted by ascending label distance from b.
    """

    order: Tensor  # sample at sorted position q
    group_start: Tensor  # first position of q's tie group
    group_end_of: Tensor  # [b, c]: last position of the tie group holding sample c
    mult: Tensor  # float64: views of order[q] paired with an anchor (V, or V - 1 for b itself)
    views: int


def rank_structure(dist: Tensor, views: int) -> RankStructure:
    """dist: `[B, B]` sample label distances -> the structure for V views per sample."""
    batch = dist.shape[0]
    # Distances are >= 0 doubles, whose bit patterns sort like the values;
    # an integer sort is faster than a float one.
    bits_sorted, order = dist.to(torch.float64).contiguous().view(torch.int64).sort(dim=1)
    positions = torch.arange(batch, device=dist.device).expand(batch, batch)
    new_group = torch.ones_like(bits_sorted, dtype=torch.bool)
    new_group[:, 1:] = bits_sorted[:, 1:] != bits_sorted[:, :-1]
    group_start = torch.where(new_group, positions, 0).cummax(dim=1).values
    group_end = (
        torch.zeros_like(group_start).scatter_reduce_(1, group_start, positions, "amax").gather(1, group_start)
    )
    position = torch.empty_like(order).scatter_(1, order, positions)  # inverse of order
    own = order == torch.arange(batch, device=dist.device)[:, None]
    mult = views - own.to(torch.float64)
    return RankStructure(order, group_start, group_end.gather(1, position), mult, views)


def _tiny(dtype: torch.dtype) -> float:
    """Smallest safe denominator relative to its row's largest term.

    exp() terms below ~1e-38 (float32) or ~1e-308 (float64) are lost to
    underflow; above these bounds, the n lost terms change a denominator by
    less than 1e-10 relative. Below them, the log-space path takes over.
    """
    return 1e-250 if dtype == torch.float64 else 1e-25


class _Core(NamedTuple):
    loss: Tensor  # float64 scalar
    e: Tensor  # [n, n] exp(l - row max), 0 on the diagonal, in the logits' dtype
    denom: Tensor  # float64 [V, B, B] denominators at sorted positions, relative to the row max


def _core(lg: Tensor, s: RankStructure) -> _Core | None:
    """Loss from logits `[n, n]` (overwritten); None if a denominator underflows.

    Elementwise work runs in the logits' dtype, sums and logs in float64.
    """
    n = lg.shape[0]
    views, batch = s.views, n // s.views
    f64 = torch.float64
    pair_sum = lg.sum(dtype=f64) - lg.diagonal().sum(dtype=f64)  # Σ_{i, j≠i} l_ij
    lg.diagonal().fill_(float("-inf"))  # k ≠ i: exp gives exactly 0
    row_max = lg.amax(1)
    e = lg.sub_(row_max[:, None]).exp_()  # [n, n], <= 1
    per_sample = e.view(n, views, batch).sum(1, dtype=f64).view(views, batch, batch)  # anchor x sample
    shape = (views, batch, batch)
    suffix = per_sample.gather(2, s.order.expand(shape)).flip(2).cumsum(2).flip(2)
    denom = suffix.gather(2, s.group_start.expand(shape))
    if not bool((denom > _tiny(e.dtype)).all()):
        return None
    # log in the work dtype: float32 logs of float64 sums are exact to float32 precision.
    log_denoms = (s.mult * denom.to(e.dtype).log()).sum(dtype=f64) + (n - 1) * row_max.sum(dtype=f64)
    return _Core((log_denoms - pair_sum) / (n * (n - 1)), e, denom)


def _grad_logits(core: _Core, s: RankStructure, scale: float) -> Tensor:
    """scale * dLoss/dlogits, `[n, n]` in the logits' dtype (0 on the diagonal)."""
    e, denom = core.e, core.denom
    n = e.shape[0]
    views, batch = s.views, n // s.views
    # weight[(v,b), c] = Σ over positions up to the end of c's tie group of
    # mult / denom: all pairs of anchor (v,b) whose negatives include sample c.
    weight = (s.mult / denom).cumsum(2).gather(2, s.group_end_of.expand(views, batch, batch))
    grad = (e.view(n, views, batch) * weight.to(e.dtype).view(n, 1, batch)).view(n, n).sub_(1.0)
    grad.diagonal().zero_()
    return grad.mul_(scale / (n * (n - 1)))


class _RnCL2(torch.autograd.Function):
    """Logits -||z_i - z_j|| / τ fused in: one matmul backward instead of two."""

    @staticmethod
    def forward(ctx, z: Tensor, centred: Tensor, dist: Tensor, pairs: Tensor | None, core: _Core, s: RankStructure,
                temperature: float) -> Tensor:
        ctx.save_for_backward(z, centred, dist, pairs)  # z less the batch mean: the same gradient, less cancellation
        ctx.core, ctx.s, ctx.temperature = core, s, temperature
        return core.loss.to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        z, centred, dist, pairs = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a gradient that can be differentiated again
            return (_graph_grad(lambda x: _rnc_log_space(_l2_logits(x, pairs, ctx.temperature), ctx.s), z, grad_out),
                    None, None, None, None, None, None)
        # logits = -dist / τ, d(dist)/d(d2) = 1 / (2 dist); 0 where dist = 0
        # (the diagonal, duplicate points), where the distance has no gradient.
        g = _grad_logits(ctx.core, ctx.s, float(grad_out) / (-2.0 * ctx.temperature))
        # d2_ij = |z_i|^2 + |z_j|^2 - 2 z_i·z_j; pairs None: many close pairs, all done in float64 instead
        work = centred.dtype if pairs is not None else torch.float64
        g_d2 = g.div_(dist).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0).to(work)
        g_sym, c = g_d2 + g_d2.T, centred.to(work)
        close = _close_pairs_grad(g_sym, c, pairs) if pairs is not None else 0.0
        grad_z = 2.0 * (g_sym.sum(1, keepdim=True) * c - g_sym @ c + close)
        return grad_z.to(z.dtype), None, None, None, None, None, None


class _RnCCosine(torch.autograd.Function):
    """Logits zn_i·zn_j / τ fused in: keeps zn [n, D] for the backward, not the [n, n] logits."""

    @staticmethod
    def forward(ctx, zn: Tensor, core: _Core, s: RankStructure, temperature: float) -> Tensor:
        ctx.save_for_backward(zn)
        ctx.core, ctx.s, ctx.temperature = core, s, temperature
        return core.loss.to(zn.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (zn,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a gradient that can be differentiated again
            return (_graph_grad(lambda x: _rnc_log_space(x @ x.T / ctx.temperature, ctx.s), zn, grad_out),
                    None, None, None)
        g = _grad_logits(ctx.core, ctx.s, float(grad_out) / ctx.temperature)  # dL/d(zn_i·zn_j)
        return ((g + g.T) @ zn).to(zn.dtype), None, None, None


def rnc_cosine(zn: Tensor, s: RankStructure, temperature: float) -> Tensor:
    """The RnC loss with similarity zn_i·zn_j; zn: `[n, D]`, unit rows."""
    with torch.no_grad():
        core = _core(zn.detach() @ zn.detach().T / temperature, s)
    if core is None:  # underflow, or NaN/Inf (every comparison with NaN fails)
        _raise_if_nonfinite(zn)
        return _rnc_log_space(zn @ zn.T / temperature, s)
    return _RnCCosine.apply(zn, core, s, temperature)


def _raise_if_nonfinite(x: Tensor) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError("features contains NaN or Inf values")


_CHUNK = 1 << 16  # close pairs done at once: memory CHUNK x D
CLOSE_PER_ITEM = 8  # more close pairs than this per item: float64 distances instead


def _refine_close_pairs(d2: Tensor, z: Tensor, sq: Tensor, rel: float = 1e-2) -> tuple[Tensor, Tensor | None]:
    """Squared distances `d2` (from the Gram form) with close pairs recomputed as |z_i - z_j|^2,
    and those pairs `[2, m]`.

    The Gram form's rounding error is about eps (|z_i|^2 + |z_j|^2), so a pair closer than `rel`
    of that (two views RnC has pulled together) keeps at most eps / rel relative error this way,
    instead of losing all its digits. Usually there are about n such pairs; when there are more than
    CLOSE_PER_ITEM * n (features collapsed into tight clusters) the whole Gram form runs in float64
    instead, and the pairs are None."""
    close = d2 < rel * (sq[:, None] + sq[None, :])
    close.diagonal().fill_(False)
    pairs = close.nonzero().T
    if d2.dtype != torch.float64 and pairs.shape[1] > CLOSE_PER_ITEM * len(z):
        z64 = z.double()
        sq64 = z64.pow(2).sum(1)
        return torch.addmm(sq64[:, None] + sq64[None, :], z64, z64.T, alpha=-2.0).to(d2.dtype), None
    for k in range(0, pairs.shape[1], _CHUNK):
        a, b = pairs[:, k:k + _CHUNK]
        d2[a, b] = (z[a] - z[b]).pow(2).sum(1)
    return d2, pairs


def _l2_logits(z: Tensor, pairs: Tensor | None, temperature: float) -> Tensor:
    """-|z_i - z_j| / τ by autograd, computed as the fast path computes it (centred; close pairs
    directly, or in float64 when `pairs` is None): for create_graph=True and the log-space path."""
    c = z - z.mean(0)
    if pairs is None:
        return (-safe_sqrt(pairwise_sq_l2(c.double())) / temperature).to(z.dtype)
    d2 = pairwise_sq_l2(c)
    if pairs.shape[1]:
        d2 = d2.index_put((pairs[0], pairs[1]), (c[pairs[0]] - c[pairs[1]]).pow(2).sum(1))
    return -safe_sqrt(d2) / temperature


def _close_pairs_grad(g: Tensor, z: Tensor, pairs: Tensor) -> Tensor:
    """Σ_j g_ij (z_i - z_j) over the close pairs, by direct differences; their g entries are zeroed
    (the matmul form of the rest would cancel their digits away, as the Gram form does)."""
    out = torch.zeros_like(z)
    for k in range(0, pairs.shape[1], _CHUNK):
        a, b = pairs[:, k:k + _CHUNK]
        out.index_add_(0, a, g[a, b][:, None] * (z[a] - z[b]))
    g[pairs[0], pairs[1]] = 0.0
    return out


def rnc_l2(z: Tensor, s: RankStructure, temperature: float) -> Tensor:
    """The RnC loss with similarity -||z_i - z_j||; z: `[n, D]`."""
    with torch.no_grad():
        # distances do not change when every item moves by the batch mean, but |a|^2 + |b|^2 - 2 a.b
        # cancels less: features with a large common part (non-negative ones, after a ReLU) keep
        # float32 precision in close pairs. The gradient, Σ_j g_ij (z_i - z_j), does not change either.
        zd = z.detach() - z.detach().mean(0, keepdim=True)
        sq = zd.pow(2).sum(1)
        d2, pairs = _refine_close_pairs(torch.addmm(sq[:, None] + sq[None, :], zd, zd.T, alpha=-2.0), zd, sq)
        dist = d2.clamp_min_(0.0).sqrt_()
        core = _core(dist.mul(-1.0 / temperature), s)
    if core is None:  # underflow, or NaN/Inf (every comparison with NaN fails)
        _raise_if_nonfinite(z)
        return _rnc_log_space(_l2_logits(z, pairs, temperature), s)
    return _RnCL2.apply(z, zd, dist, pairs, core, s, temperature)


def _rnc_log_space(logits: Tensor, s: RankStructure) -> Tensor:
    """The same loss in log space (logcumsumexp, autograd): slower, stable for any logits."""
    n = logits.shape[0]
    views, batch = s.views, n // s.views
    shape = (views, batch, batch)
    # A finite stand-in for -inf on the diagonal keeps gradients finite; it is
    # far below every other logit, so it adds exactly 0 to the sums.
    low = logits.detach().min()
    masked = logits.masked_fill(torch.eye(n, dtype=torch.bool, device=logits.device), low - low.abs() - 1e3)
    log_per_sample = torch.logsumexp(masked.view(n, views, batch), dim=1).view(shape)
    log_suffix = torch.logcumsumexp(log_per_sample.gather(2, s.order.expand(shape)).flip(2), dim=2).flip(2)
    log_denom = log_suffix.gather(2, s.group_start.expand(shape))
    pair_sum = logits.sum() - logits.diagonal().sum()
    return ((s.mult.to(logits.dtype) * log_denom).sum() - pair_sum) / (n * (n - 1))
