"""The geometry of an embedding on the hypersphere: alignment and uniformity
(Wang & Isola, "Understanding Contrastive Representation Learning through
Alignment and Uniformity on the Hypersphere", 2020). Numpy only; used by the
temperature study (experiments/temperature.py).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from supemb.predict.neighbours import l2_normalize
from supemb.predict.retrieval import pair_indices

_PAIR_CHUNK = 1 << 14  # pairs per block: bounded memory for large N


def _sq_distances(a: np.ndarray, b: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """||a_i - b_j||^2 for each pair (i[p], j[p]), `_PAIR_CHUNK` pairs at a time."""
    out = np.empty(len(i), dtype=np.float64)
    for start in range(0, len(i), _PAIR_CHUNK):
        s = slice(start, start + _PAIR_CHUNK)
        diff = a[i[s]] - b[j[s]]
        out[s] = np.einsum("pd,pd->p", diff, diff)
    return out


def alignment(emb_a: npt.ArrayLike, emb_b: npt.ArrayLike, alpha: float = 2.0) -> float:
    """Alignment of positive pairs (Wang & Isola, "Understanding Contrastive
    Representation Learning through Alignment and Uniformity on the
    Hypersphere", 2020):

        align = mean_i ||a_i - b_i||_2^alpha

    emb_a, emb_b: [N, D], row i of each a positive pair (e.g. two views of
    one item). Both are L2-normalised here first (the quantity is defined on
    the unit hypersphere; a zero row stays zero), whatever metric the
    embedding is served in. 0 when every pair coincides, at most 2^alpha;
    lower is better. alpha > 0.
    """
    a = l2_normalize(emb_a, "emb_a")
    b = l2_normalize(emb_b, "emb_b")
    if a.shape != b.shape:
        raise ValueError(f"emb_a has shape {a.shape} but emb_b has {b.shape}")
    alpha = float(alpha)
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    rows = np.arange(len(a))
    d = np.sqrt(np.maximum(_sq_distances(a, b, rows, rows), 0.0))
    return float(np.mean(d**alpha))


def uniformity(emb: npt.ArrayLike, t: float = 2.0, max_pairs: int = 200_000, seed: int = 0) -> float:
    """Uniformity of an embedding on the hypersphere (Wang & Isola 2020):

        unif = log mean_{i != j} exp(-t ||x_i - x_j||_2^2)

    over distinct pairs of rows of emb: [N, D] (N >= 2), L2-normalised here
    first (the quantity is defined on the unit hypersphere; a zero row stays
    zero), whatever metric the embedding is served in. Lower (more negative)
    is more uniform: 0 when every row is the same point, -4t when each pair
    is antipodal. The pairs i < j are all used when N (N - 1) / 2 <=
    max_pairs; otherwise `max_pairs` pairs (i != j) are drawn uniformly at
    random with `seed`, so the value is deterministic. Computed with a
    max-shifted log-sum-exp, so a large t does not underflow to log(0).
    """
    e = l2_normalize(emb, "emb")
    t = float(t)
    if not (np.isfinite(t) and t > 0):
        raise ValueError(f"t must be a positive number, got {t!r}")
    if len(e) < 2:
        raise ValueError(f"uniformity needs at least 2 items, got {len(e)}")
    i, j = pair_indices(len(e), max_pairs, seed)
    v = -t * np.maximum(_sq_distances(e, e, i, j), 0.0)
    top = float(v.max())
    return float(top + np.log(np.mean(np.exp(v - top))))
