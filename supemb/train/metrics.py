"""Evaluation metrics for label-aware embeddings: plain prediction metrics,
kNN prediction from embeddings, retrieval and ordinality.

Everything here is numpy/scipy and computes in float64. Conventions:

- Embeddings are `[N, D]` float arrays. kNN and retrieval compare them in
  one of two geometries, the `metric` argument (the geometry the training
  loss shaped; a bundle's manifest records it for serving):

  - "cosine" (the default): rows are L2-normalised first (a zero row stays
    zero and is similar to nothing) and s(q, g) = <q, g>, the cosine
    similarity in [-1, 1]; the numbers match a FAISS `IndexFlatIP` over the
    normalised vectors that serving uses.
  - "l2": rows are used as given (not normalised) and
    s(q, g) = -||q - g||_2, the negated Euclidean distance (not squared), so
    larger is more similar, as in Rank-N-Contrast's own similarity. It is
    computed as -sqrt(max(|q|^2 + |g|^2 - 2 <q, g>, 0)), and matches a FAISS
    `IndexFlatL2` (which returns squared distances d: s = -sqrt(max(d, 0))).

  kNN softmax weights exp(s / t) use s in that metric's units, so a
  temperature tuned for one metric does not carry over to the other.
- Neighbours are ranked by similarity, ties broken by the lower gallery index
  (where equal similarities straddle the k-th place, which of them make the
  cut is numpy's choice), so every result is deterministic.
- Similarities are computed a block of query rows at a time: memory is
  bounded whatever N and G; time is O(N G D) (numpy is fine for the
  validation sets of training; serving uses FAISS).
- `exclude_self=True` means the query set *is* the gallery (row i of the
  query is item i of the gallery): item i is never its own neighbour, while an
  exact duplicate stored at another index still is.
- Class labels are integer-valued arrays with values in [0, C).
- Mismatched lengths, empty inputs, NaN/Inf and bad options raise ValueError.
  A metric that is undefined for the data (e.g. MAP@R when no query has a
  relevant item) is NaN.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt
from scipy.stats import spearmanr

# Similarity blocks are computed a few query rows at a time, so memory stays
# bounded (about 32 MB of float64) whatever the gallery size.
_BLOCK_ELEMENTS = 1 << 22

Metric = Literal["cosine", "l2"]
METRICS: tuple[str, ...] = ("cosine", "l2")


# ------------------------------------------------------------------ checks


def _as_float_1d(x: npt.ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{name} must have shape [N], got {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return a


def _as_labels(x: npt.ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must have shape [N], got {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if a.dtype.kind == "b":
        a = a.astype(np.int64)
    if a.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold integer class ids, got dtype {a.dtype}")
    if a.dtype.kind == "f" and not (np.isfinite(a).all() and (a == np.round(a)).all()):
        raise ValueError(f"{name} must hold integer class ids, got non-integer values")
    a = a.astype(np.int64)
    if a.min() < 0:
        raise ValueError(f"{name} must hold class ids >= 0, got {a.min()}")
    return a


def _as_embeddings(x: npt.ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape [N, D], got {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return a


def _same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} has {len(a)} rows but {name_b} has {len(b)}")


def check_metric(metric: str) -> str:
    """`metric` if it is "cosine" or "l2"; ValueError otherwise."""
    if metric not in METRICS:
        raise ValueError(f"metric must be 'cosine' or 'l2', got {metric!r}")
    return metric


def l2_normalize(emb: npt.ArrayLike, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm. emb: [N, D] -> [N, D] float64.

    Rows with norm below `eps` are left as they are (all zeros stays zeros).
    """
    e = _as_embeddings(emb, "emb")
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    return e / np.maximum(norms, eps)


# ------------------------------------------------------------ regression


def regression_metrics(pred: npt.ArrayLike, target: npt.ArrayLike) -> dict[str, float]:
    """Mean absolute error, root mean squared error and R^2.

    pred, target: [N].

        mae  = mean |pred - target|
        rmse = sqrt(mean (pred - target)^2)
        r2   = 1 - SS_res / SS_tot,  SS_res = sum (target - pred)^2,
                                     SS_tot = sum (target - mean(target))^2

    R^2 is 1 for a perfect prediction, 0 for predicting the mean, negative
    for worse. With a constant target (SS_tot = 0) it is defined as 1.0 when
    the prediction is exact and 0.0 otherwise (scikit-learn's convention).
    """
    p = _as_float_1d(pred, "pred")
    t = _as_float_1d(target, "target")
    _same_length(p, t, "pred", "target")
    err = p - t
    ss_res = float(np.sum(err**2))
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    if ss_tot > 0.0:
        r2 = 1.0 - ss_res / ss_tot
    else:
        r2 = 1.0 if ss_res == 0.0 else 0.0
    return {
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(ss_res / len(t))),
        "r2": float(r2),
    }


# -------------------------------------------------------- classification


def accuracy(pred: npt.ArrayLike, target: npt.ArrayLike) -> float:
    """Fraction of exact matches. pred, target: [N] integer class ids."""
    p = _as_labels(pred, "pred")
    t = _as_labels(target, "target")
    _same_length(p, t, "pred", "target")
    return float(np.mean(p == t))


def balanced_accuracy(pred: npt.ArrayLike, target: npt.ArrayLike) -> float:
    """Mean per-class recall over the classes present in `target`.

    pred, target: [N] integer class ids.

        bacc = 1/|C| sum_{c in C} #{i: target_i = c, pred_i = c} / #{i: target_i = c}

    with C the set of classes that occur in `target` (a class that is only
    predicted has no recall and is not averaged). On a long-tailed set,
    predicting the head class everywhere scores high accuracy but
    1/|C| balanced accuracy.
    """
    p = _as_labels(pred, "pred")
    t = _as_labels(target, "target")
    _same_length(p, t, "pred", "target")
    classes, inv = np.unique(t, return_inverse=True)
    support = np.bincount(inv, minlength=len(classes))
    hits = np.bincount(inv, weights=(p == t).astype(np.float64), minlength=len(classes))
    return float(np.mean(hits / support))


# -------------------------------------------------------------------- kNN


def _top_k(sim: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top k of a similarity block.

    sim: [n, G] -> (idx [n, k] int64, sim [n, k]), sorted by decreasing
    similarity, ties by increasing index. (Where equal similarities straddle
    the k-th place, which of them make the cut is left to np.argpartition.)
    """
    g = sim.shape[1]
    if k == 1:
        idx = sim.argmax(axis=1)[:, None]  # argmax returns the first maximum
    else:
        if k < g:
            # Selecting the top from the right end is several times faster
            # than partitioning the negated block at the front.
            idx = np.argpartition(sim, g - k, axis=1)[:, g - k :]
            idx.sort(axis=1)  # ascending index, so the stable sort below breaks ties by index
        else:
            idx = np.broadcast_to(np.arange(g), sim.shape).copy()
        order = np.argsort(-np.take_along_axis(sim, idx, axis=1), axis=1, kind="stable")
        idx = np.take_along_axis(idx, order, axis=1)
    return idx.astype(np.int64, copy=False), np.take_along_axis(sim, idx, axis=1)


def _top_k_blocks(
    query: np.ndarray, gallery: np.ndarray, k: int, self_index: np.ndarray | None = None,
    metric: Metric = "cosine",
) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """Top-k neighbours, a block of query rows at a time, so memory stays
    bounded whatever the gallery size.

    query: [N, D], gallery: [G, D]: L2-normalised for "cosine" (s = <q, g>),
    as given for "l2" (s = -||q - g||_2). self_index: [N] gallery index of
    each query never to return (leave-one-out), or None.
    Yields (rows, idx [n, k], sim [n, k]) as `_top_k`.
    """
    n, g = len(query), len(gallery)
    step = max(1, _BLOCK_ELEMENTS // max(g, 1))
    if metric == "l2":
        q_sq = np.einsum("nd,nd->n", query, query)
        g_sq = np.einsum("gd,gd->g", gallery, gallery)
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        sim = query[rows] @ gallery.T
        if metric == "l2":  # in place: -sqrt(max(|q|^2 + |g|^2 - 2 <q, g>, 0)), no second block
            sim *= -2.0
            sim += q_sq[rows, None]
            sim += g_sq[None, :]
            np.maximum(sim, 0.0, out=sim)
            np.sqrt(sim, out=sim)
            np.negative(sim, out=sim)
        if self_index is not None:
            sim[np.arange(rows.stop - rows.start), self_index[rows]] = -np.inf
        idx, top = _top_k(sim, k)
        yield rows, idx, top


def _check_k(k: int, available: int) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > available:
        raise ValueError(f"k = {k} but only {available} gallery items can be neighbours")
    return int(k)


def _pair(
    query_emb: npt.ArrayLike, gallery_emb: npt.ArrayLike, exclude_self: bool, metric: Metric = "cosine"
) -> tuple[np.ndarray, np.ndarray]:
    """Validated (query [N, D], gallery [G, D]): L2-normalised for "cosine", as given for "l2"."""
    check_metric(metric)
    q = _as_embeddings(query_emb, "query_emb")
    g = _as_embeddings(gallery_emb, "gallery_emb")
    if metric == "cosine":
        q, g = l2_normalize(q), l2_normalize(g)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query_emb has dimension {q.shape[1]} but gallery_emb has {g.shape[1]}")
    if exclude_self and len(q) != len(g):
        raise ValueError(
            f"exclude_self needs the query set to be the gallery, got {len(q)} queries and {len(g)} gallery items"
        )
    return q, g


def nearest_neighbours(
    query_emb: npt.ArrayLike,
    gallery_emb: npt.ArrayLike,
    k: int,
    exclude_self: bool = False,
    metric: Metric = "cosine",
) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar gallery items of each query.

    query_emb: [N, D], gallery_emb: [G, D]. metric: "cosine" (rows
    normalised here, s = cosine similarity) or "l2" (rows as given,
    s = -Euclidean distance); see the module docstring.
    exclude_self: the query set is the gallery (N == G); item i is not its
    own neighbour. k must be at most G (G - 1 with exclude_self).
    Returns (indices [N, k] int64, similarities [N, k] float64), each row
    sorted by decreasing similarity, ties by increasing index.
    """
    q, g = _pair(query_emb, gallery_emb, exclude_self, metric)
    k = _check_k(k, len(g) - int(exclude_self))
    idx = np.empty((len(q), k), dtype=np.int64)
    sim = np.empty((len(q), k), dtype=np.float64)
    self_index = np.arange(len(q)) if exclude_self else None
    for rows, bi, bs in _top_k_blocks(q, g, k, self_index, metric):
        idx[rows], sim[rows] = bi, bs
    return idx, sim


def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (np.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    return t


def _softmax_weights(sim: np.ndarray, temperature: float) -> np.ndarray:
    """exp(sim / t) per row, normalised to sum 1. sim: [N, k] sorted -> [N, k]."""
    w = np.exp((sim - sim[:, :1]) / temperature)  # column 0 is the row maximum
    return w / w.sum(axis=1, keepdims=True)


def _vote(idx: np.ndarray, sim: np.ndarray, labels: np.ndarray, n_classes: int, temperature: float) -> np.ndarray:
    """Class probabilities [n, C] from neighbours idx, sim: [n, k]."""
    return neighbour_vote(sim, labels[idx], n_classes, temperature)


def neighbour_vote(sim: np.ndarray, labels_k: np.ndarray, n_classes: int, temperature: float = 0.07) -> np.ndarray:
    """Class probabilities from already-found neighbours (the vote of `knn_classify`).

    sim: [n, k] similarities (in either metric's convention, larger = more
    similar) sorted in decreasing order per row;
    labels_k: [n, k] the neighbours' class ids. Returns probs [n, n_classes].
    Shared by evaluation and serving (`supemb.runtime`), so both vote alike.
    """
    sim = np.asarray(sim, dtype=np.float64)
    probs = np.zeros((len(sim), n_classes), dtype=np.float64)
    np.add.at(probs, (np.arange(len(sim))[:, None], np.asarray(labels_k)),
              _softmax_weights(sim, _check_temperature(temperature)))
    return probs


def _n_classes(labels: np.ndarray, n_classes: int | None) -> int:
    c = int(labels.max()) + 1 if n_classes is None else int(n_classes)
    if c < int(labels.max()) + 1:
        raise ValueError(f"n_classes = {c} but the labels go up to {labels.max()}")
    return c


def knn_classify(
    query_emb: npt.ArrayLike,
    gallery_emb: npt.ArrayLike,
    gallery_labels: npt.ArrayLike,
    k: int,
    n_classes: int | None = None,
    temperature: float = 0.07,
    exclude_self: bool = False,
    metric: Metric = "cosine",
) -> tuple[np.ndarray, np.ndarray]:
    """Similarity-weighted kNN vote.

    query_emb: [N, D], gallery_emb: [G, D], gallery_labels: [G] class ids.
    Each of the k nearest neighbours j votes for its class with weight
    exp(s_ij / temperature) (s_ij the similarity in `metric`: cosine, or
    -Euclidean distance for "l2"; the weighted kNN of Wu et al. 2018, with
    their cosine temperature 0.07 as default):

        probs[i, c] = sum_{j in kNN(i), y_j = c} exp(s_ij / t) / sum_{j in kNN(i)} exp(s_ij / t)

    A large temperature tends to a plain majority vote, a small one to 1-NN.
    n_classes: C, defaults to max(gallery_labels) + 1.
    Returns (pred [N] int64 = argmax of probs, lowest class on ties;
    probs [N, C] float64, rows summing to 1).
    """
    labels = _as_labels(gallery_labels, "gallery_labels")
    g = _as_embeddings(gallery_emb, "gallery_emb")
    _same_length(labels, g, "gallery_labels", "gallery_emb")
    t = _check_temperature(temperature)
    c = _n_classes(labels, n_classes)
    idx, sim = nearest_neighbours(query_emb, g, k, exclude_self, metric)
    probs = _vote(idx, sim, labels, c, t)
    return probs.argmax(axis=1).astype(np.int64), probs


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Row-wise weighted median. values, weights: [N, k] (weights sum to 1).

    The first sorted value whose cumulative weight reaches 1/2; when it hits
    exactly 1/2 the mean with the next value (so equal weights give
    np.median).
    """
    order = np.argsort(values, axis=1, kind="stable")
    v = np.take_along_axis(values, order, axis=1)
    cw = np.cumsum(np.take_along_axis(weights, order, axis=1), axis=1)
    tol = 1e-12
    i = np.argmax(cw >= 0.5 - tol, axis=1)
    rows = np.arange(len(v))
    nxt = np.minimum(i + 1, v.shape[1] - 1)
    half = np.abs(cw[rows, i] - 0.5) <= tol
    return np.where(half, 0.5 * (v[rows, i] + v[rows, nxt]), v[rows, i])


def knn_regress(
    query_emb: npt.ArrayLike,
    gallery_emb: npt.ArrayLike,
    gallery_targets: npt.ArrayLike,
    k: int,
    weighting: Literal["softmax", "uniform"] = "softmax",
    temperature: float = 0.1,
    reduce: Literal["mean", "median"] = "mean",
    exclude_self: bool = False,
    metric: Metric = "cosine",
) -> tuple[np.ndarray, np.ndarray]:
    """kNN regression, with an uncertainty.

    query_emb: [N, D], gallery_emb: [G, D], gallery_targets: [G].
    Neighbours and similarities s_ij in `metric` (cosine, or -Euclidean
    distance for "l2"; see the module docstring).
    Weights of the k nearest neighbours: "softmax" w_j ∝ exp(s_ij / t),
    "uniform" w_j = 1/k. Prediction: the weighted mean ("mean") or the
    weighted median ("median", robust to a stray neighbour: the first sorted
    target whose cumulative weight reaches 1/2, averaged with the next when it
    is exactly 1/2, so uniform weights give np.median) of the neighbours'
    targets.
    spread: the weighted standard deviation of the neighbours' targets
    around their weighted mean, sqrt(sum_j w_j (y_j - ybar)^2); 0 when the
    neighbours agree.
    Returns (pred [N] float64, spread [N] float64).
    """
    y = _as_float_1d(gallery_targets, "gallery_targets")
    if weighting not in ("softmax", "uniform"):
        raise ValueError(f"weighting must be 'softmax' or 'uniform', got {weighting!r}")
    if reduce not in ("mean", "median"):
        raise ValueError(f"reduce must be 'mean' or 'median', got {reduce!r}")
    t = _check_temperature(temperature)
    g = _as_embeddings(gallery_emb, "gallery_emb")
    _same_length(y, g, "gallery_targets", "gallery_emb")
    idx, sim = nearest_neighbours(query_emb, g, k, exclude_self, metric)
    return neighbour_regress(sim, y[idx], weighting, t, reduce)


def neighbour_regress(
    sim: np.ndarray,
    targets_k: np.ndarray,
    weighting: Literal["softmax", "uniform"] = "softmax",
    temperature: float = 0.1,
    reduce: Literal["mean", "median"] = "mean",
) -> tuple[np.ndarray, np.ndarray]:
    """The prediction and spread of `knn_regress` from already-found neighbours.

    sim: [n, k] similarities (either metric, larger = more similar) sorted
    in decreasing order per row; targets_k: [n, k] the neighbours' targets. Returns (pred [n], spread [n]).
    Shared by evaluation and serving (`supemb.runtime`).
    """
    if weighting not in ("softmax", "uniform"):
        raise ValueError(f"weighting must be 'softmax' or 'uniform', got {weighting!r}")
    if reduce not in ("mean", "median"):
        raise ValueError(f"reduce must be 'mean' or 'median', got {reduce!r}")
    sim = np.asarray(sim, dtype=np.float64)
    yk = np.asarray(targets_k, dtype=np.float64)
    t = _check_temperature(temperature)
    w = _softmax_weights(sim, t) if weighting == "softmax" else np.full(sim.shape, 1.0 / sim.shape[1])
    mean = np.sum(w * yk, axis=1)
    spread = np.sqrt(np.maximum(np.sum(w * (yk - mean[:, None]) ** 2, axis=1), 0.0))
    pred = mean if reduce == "mean" else _weighted_median(yk, w)
    return pred, spread


# -------------------------------------------------------------- retrieval


class _Retrieval(NamedTuple):
    q: np.ndarray  # [N, D] queries (normalised for cosine)
    q_labels: np.ndarray  # [N]
    g: np.ndarray  # [G, D] gallery (normalised for cosine)
    g_labels: np.ndarray  # [G]
    self_index: np.ndarray | None  # [N] leave-one-out: the query's own gallery index
    r: np.ndarray  # [N] relevant gallery items per query
    metric: str = "cosine"


def _retrieval_setup(
    query_emb: npt.ArrayLike,
    query_labels: npt.ArrayLike,
    gallery_emb: npt.ArrayLike | None,
    gallery_labels: npt.ArrayLike | None,
    metric: Metric = "cosine",
) -> _Retrieval:
    ql = _as_labels(query_labels, "query_labels")
    if (gallery_emb is None) != (gallery_labels is None):
        raise ValueError("give both gallery_emb and gallery_labels, or neither")
    loo = gallery_emb is None
    q, g = _pair(query_emb, query_emb if loo else gallery_emb, exclude_self=loo, metric=metric)
    gl = ql if loo else _as_labels(gallery_labels, "gallery_labels")
    _same_length(ql, q, "query_labels", "query_emb")
    _same_length(gl, g, "gallery_labels", "gallery_emb")
    counts = np.bincount(gl, minlength=int(max(ql.max(), gl.max())) + 1)
    r = counts[ql] - int(loo)  # in leave-one-out the query itself is not relevant
    return _Retrieval(q, ql, g, gl, np.arange(len(q)) if loo else None, r, metric)


def _average_precision_at_r(idx: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray, r: np.ndarray) -> np.ndarray:
    """AP@R per query. idx: [n, >= max r] ranked neighbours; q_labels, r: [n], r > 0."""
    pos = np.arange(1, idx.shape[1] + 1)
    rel = (g_labels[idx] == q_labels[:, None]) & (pos[None, :] <= r[:, None])  # only the first R count
    prec = np.cumsum(rel, axis=1) / pos[None, :]
    return np.sum(prec * rel, axis=1) / r


def _retrieval_pass(ret: _Retrieval, k: int = 0) -> Iterator[tuple[slice, np.ndarray, np.ndarray, np.ndarray]]:
    """One ranking pass over all queries, deep enough for MAP@R and for k.

    Yields (rows, idx [n, K], sim [n, K], ap [n]) with K = max(k, max R, 1)
    and ap the AP@R of each query (NaN where R = 0).
    """
    depth = max(k, int(ret.r.max()), 1)
    for rows, idx, sim in _top_k_blocks(ret.q, ret.g, depth, ret.self_index, ret.metric):
        r = ret.r[rows]
        ap = np.full(len(r), np.nan)
        m = r > 0
        ap[m] = _average_precision_at_r(idx[m], ret.q_labels[rows][m], ret.g_labels, r[m])
        yield rows, idx, sim, ap


def precision_at_1(
    query_emb: npt.ArrayLike,
    query_labels: npt.ArrayLike,
    gallery_emb: npt.ArrayLike | None = None,
    gallery_labels: npt.ArrayLike | None = None,
    metric: Metric = "cosine",
) -> float:
    """Fraction of queries whose nearest gallery item has the query's label.

    query_emb: [N, D], query_labels: [N]; gallery_emb: [G, D] and
    gallery_labels: [G], or neither, meaning leave-one-out retrieval within
    the query set (each item against all the others). metric: "cosine" or
    "l2", which neighbour is nearest (module docstring).
    Queries with no relevant gallery item (R = 0, see `map_at_r`) are skipped,
    as in MAP@R; NaN if every query is skipped.
    """
    ret = _retrieval_setup(query_emb, query_labels, gallery_emb, gallery_labels, metric)
    keep = np.flatnonzero(ret.r > 0)
    if len(keep) == 0:
        return float("nan")
    self_index = None if ret.self_index is None else ret.self_index[keep]
    hits = 0
    for rows, idx, _ in _top_k_blocks(ret.q[keep], ret.g, 1, self_index, ret.metric):
        hits += int(np.sum(ret.g_labels[idx[:, 0]] == ret.q_labels[keep[rows]]))
    return hits / len(keep)


def map_at_r(
    query_emb: npt.ArrayLike,
    query_labels: npt.ArrayLike,
    gallery_emb: npt.ArrayLike | None = None,
    gallery_labels: npt.ArrayLike | None = None,
    metric: Metric = "cosine",
) -> float:
    """Mean average precision at R (Musgrave et al., "A Metric Learning
    Reality Check", 2020).

    query_emb: [N, D], query_labels: [N]; gallery as in `precision_at_1`
    (absent: leave-one-out within the query set); neighbours ranked in
    `metric` ("cosine" or "l2"). For query i, R_i is the
    number of gallery items with its label (itself excluded) and

        MAP@R_i = 1/R_i sum_{j=1..R_i} P(j) * rel(j)

    with rel(j) = 1 if the j-th retrieved item has the query's label and P(j)
    the precision among the first j. Queries with R_i = 0 are skipped; the
    result is the mean over the others (NaN if none). Unlike P@1 it rewards
    a whole class clustering tightly around the query, not just one close
    neighbour. Cost: a top-max(R) selection per query.

    Retrieval needs discrete relevance: for continuous targets, bin them
    first (e.g. `np.digitize(y, edges)`) and pass the bin ids as labels.
    """
    ret = _retrieval_setup(query_emb, query_labels, gallery_emb, gallery_labels, metric)
    if not np.any(ret.r > 0):
        return float("nan")
    ap = np.concatenate([block_ap for _, _, _, block_ap in _retrieval_pass(ret)])
    return float(np.nanmean(ap))


# ------------------------------------------------------------- ordinality


def ordinality(
    emb: npt.ArrayLike,
    target: npt.ArrayLike,
    max_pairs: int = 200_000,
    seed: int = 0,
    normalize: bool | None = None,
    metric: Metric = "cosine",
) -> float:
    """How well embedding distances follow target distances.

    emb: [N, D]; target: [N] or [N, T] (distance: sum of absolute
    differences). The Spearman rank correlation between d_emb(i, j) and
    |y_i - y_j| over pairs i < j: 1 when the embedding orders the pairs
    exactly as the targets do (the goal of Rank-N-Contrast), ~0 for an
    embedding unrelated to the target.
    d_emb is the cosine distance of L2-normalised rows (`normalize=True`; the
    Euclidean distance between normalised rows ranks identically) or the
    Euclidean distance of the rows as given (`normalize=False`).
    `normalize=None` (the default) follows `metric`: True for "cosine",
    False for "l2" (the distance an L2-distance loss ordered).
    When N (N - 1) / 2 > max_pairs, `max_pairs` pairs (i != j) are drawn
    uniformly at random with `seed`, so the value is deterministic.
    NaN if either distance is constant over the pairs (e.g. one target).
    """
    check_metric(metric)
    if normalize is None:
        normalize = metric == "cosine"
    e = _as_embeddings(emb, "emb")
    y = np.asarray(target, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise ValueError(f"target must have shape [N] or [N, T], got {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("target contains NaN or Inf values")
    _same_length(y, e, "target", "emb")
    n = len(e)
    if n < 2:
        raise ValueError(f"ordinality needs at least 2 items, got {n}")
    if int(max_pairs) < 2:
        raise ValueError(f"max_pairs must be at least 2, got {max_pairs}")
    i, j = pair_indices(n, max_pairs, seed)
    if normalize:
        e = l2_normalize(e)
        d_emb = 1.0 - np.einsum("pd,pd->p", e[i], e[j])
    else:
        d_emb = np.linalg.norm(e[i] - e[j], axis=1)
    d_y = np.abs(y[i] - y[j]).sum(axis=1)
    if np.ptp(d_emb) == 0.0 or np.ptp(d_y) == 0.0:
        return float("nan")
    return float(spearmanr(d_emb, d_y).statistic)


# ------------------------------------------------------------------ pairs


def pair_indices(n: int, max_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs i < j, or `max_pairs` pairs (i != j) drawn uniformly with `seed`
    when there are more (`ordinality`, `supemb.train.geometry.uniformity`)."""
    if int(max_pairs) < 1:
        raise ValueError(f"max_pairs must be at least 1, got {max_pairs}")
    if n * (n - 1) // 2 <= max_pairs:
        return np.triu_indices(n, k=1)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=int(max_pairs))
    j = rng.integers(0, n - 1, size=int(max_pairs))
    return i, j + (j >= i)


# ------------------------------------------------------------ EEG records


def aggregate(
    values: npt.ArrayLike, group: npt.ArrayLike, how: Literal["mean", "median"] = "mean"
) -> tuple[np.ndarray, np.ndarray]:
    """Window-level values -> one value per group (recording).

    values: [N] or [N, K] (e.g. class probabilities); group: [N].
    Returns (groups [R] sorted ascending, aggregated [R] or [R, K]).
    The EEG pipeline's `supemb.data.eeg.aggregate_by_recording`, so training
    evaluation and serving aggregate the same way.
    """
    # Imported here: supemb.data.eeg pulls in torch, and these metrics stay numpy-only to import.
    from supemb.data.eeg import aggregate_by_recording

    return aggregate_by_recording(np.asarray(values), np.asarray(group), how)


def _group_targets(targets: np.ndarray, group: np.ndarray) -> np.ndarray:
    """The one target of each group, sorted by group id; ValueError if a group's targets differ."""
    uniq, first, inv = np.unique(group, return_index=True, return_inverse=True)
    per_group = targets[first]
    if not np.array_equal(per_group[inv.reshape(-1)], targets):
        raise ValueError("val_groups: windows of the same recording have different targets")
    return per_group


# ---------------------------------------------------------------- report


def embedding_report(
    train_emb: npt.ArrayLike,
    train_targets: npt.ArrayLike,
    val_emb: npt.ArrayLike,
    val_targets: npt.ArrayLike,
    task: Literal["regression", "classification"],
    k: int = 20,
    temperature: float | None = None,
    val_groups: npt.ArrayLike | None = None,
    max_pairs: int = 200_000,
    seed: int = 0,
    metric: Metric = "cosine",
) -> dict[str, float]:
    """The per-epoch embedding evaluation: val queries against the train gallery.

    train_emb: [G, D], train_targets: [G]; val_emb: [N, D], val_targets: [N]
    (class ids for classification). k is capped at G.
    metric: the geometry neighbours, similarities and ordinality use
    ("cosine" or "l2"; module docstring).
    temperature: of the kNN weights, in `metric`'s similarity units; default
    0.07 for classes (`knn_classify`) and 0.1 for values (`knn_regress`,
    softmax weighting), values chosen for cosine similarities: pass the
    run's own temperature for "l2".
    val_groups: [N] optional recording ids (EEG windows): adds recording-level
    metrics ("rec_" keys) from window predictions averaged per recording
    (class probabilities averaged, then argmax).

    Keys (plain floats):
      regression:     knn_mae, knn_rmse, knn_r2, knn_spread (mean kNN spread),
                      ordinality (on val), [rec_knn_mae, rec_knn_rmse, rec_knn_r2]
      classification: knn_acc, knn_bacc, p_at_1, map_at_r (val queries,
                      train gallery), [rec_knn_acc, rec_knn_bacc]
    Retrieval metrics are not computed for regression (relevance would need
    an arbitrary binning; `ordinality` measures the same structure).
    A metric that is undefined for the data (NaN) is left out, so every value
    is a finite float and the dict is strict-JSON serialisable.
    """
    if task not in ("regression", "classification"):
        raise ValueError(f"task must be 'regression' or 'classification', got {task!r}")
    check_metric(metric)
    g = _as_embeddings(train_emb, "train_emb")
    v = _as_embeddings(val_emb, "val_emb")
    kk = min(_check_k(k, available=int(k)), len(g))
    groups = None
    if val_groups is not None:
        groups = np.asarray(val_groups)
        _same_length(groups, v, "val_groups", "val_emb")
    out: dict[str, float] = {}
    if task == "regression":
        yt = _as_float_1d(train_targets, "train_targets")
        yv = _as_float_1d(val_targets, "val_targets")
        _same_length(yv, v, "val_targets", "val_emb")
        t = 0.1 if temperature is None else temperature
        pred, spread = knn_regress(v, g, yt, kk, weighting="softmax", temperature=t, metric=metric)
        out.update({f"knn_{name}": val for name, val in regression_metrics(pred, yv).items()})
        out["knn_spread"] = float(np.mean(spread))
        if len(v) >= 2:
            out["ordinality"] = ordinality(v, yv, max_pairs=max_pairs, seed=seed, metric=metric)
        if groups is not None:
            _, rec_pred = aggregate(pred, groups)
            rec_y = _group_targets(yv, groups)
            out.update({f"rec_knn_{name}": val for name, val in regression_metrics(rec_pred, rec_y).items()})
    else:
        lt = _as_labels(train_targets, "train_targets")
        lv = _as_labels(val_targets, "val_targets")
        _same_length(lv, v, "val_targets", "val_emb")
        _same_length(lt, g, "train_targets", "train_emb")
        t = _check_temperature(0.07 if temperature is None else temperature)
        ret = _retrieval_setup(v, lv, g, lt, metric)
        probs = np.zeros((len(v), int(max(lt.max(), lv.max())) + 1))
        hit = np.zeros(len(v), dtype=bool)
        ap = np.full(len(v), np.nan)
        # One ranking pass serves the kNN vote (first k), P@1 and MAP@R (first R).
        for rows, idx, sim, block_ap in _retrieval_pass(ret, kk):
            probs[rows] = _vote(idx[:, :kk], sim[:, :kk], lt, probs.shape[1], t)
            hit[rows] = lt[idx[:, 0]] == lv[rows]
            ap[rows] = block_ap
        pred = probs.argmax(axis=1)
        out["knn_acc"] = accuracy(pred, lv)
        out["knn_bacc"] = balanced_accuracy(pred, lv)
        relevant = ret.r > 0  # P@1 and MAP@R skip queries whose class is not in the gallery
        out["p_at_1"] = float(np.mean(hit[relevant])) if relevant.any() else float("nan")
        out["map_at_r"] = float(np.mean(ap[relevant])) if relevant.any() else float("nan")
        if groups is not None:
            _, rec_probs = aggregate(probs, groups)
            rec_y = _group_targets(lv, groups)
            rec_pred = rec_probs.argmax(axis=1)
            out["rec_knn_acc"] = accuracy(rec_pred, rec_y)
            out["rec_knn_bacc"] = balanced_accuracy(rec_pred, rec_y)
    return {key: float(val) for key, val in out.items() if np.isfinite(val)}
