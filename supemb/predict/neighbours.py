"""How neighbours become a prediction: embeddings in a metric, exact top-k
search, kNN weights, the vote and the regression, and the aggregation of an
input's rows (an EEG recording's windows) into one prediction.

Numpy only (no torch, no training code): serving, evaluation and training
share it. Computes in float64. Conventions:

- Embeddings `[N, D]` are compared in one of two geometries, the `metric` (the
  one the training loss shaped; a bundle's manifest records it):
  - "cosine": rows L2-normalised (a zero row stays zero, similar to nothing),
    s(q, g) = <q, g> in [-1, 1]; matches FAISS `IndexFlatIP` on those rows.
  - "l2": rows as given, s(q, g) = -||q - g||_2 (not squared; larger is more
    similar, as in Rank-N-Contrast), computed as
    -sqrt(max(|q|^2 + |g|^2 - 2 <q, g>, 0)); matches a FAISS `IndexFlatL2`
    (squared distances d: s = -sqrt(max(d, 0))).
  kNN weights exp(s / t) use s in the metric's units (a temperature is per metric).
- Neighbours are ranked by similarity, ties by the lower gallery index, a block
  of query rows at a time (bounded memory; serving searches with FAISS).
- `exclude_self=True`: the query set *is* the gallery; item i is never its own
  neighbour, while an exact duplicate at another index still is.
- Class labels are integers in [0, C); bad inputs and options raise ValueError.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt

# Query rows per similarity block: about 32 MB of float64 whatever the gallery size.
_BLOCK_ELEMENTS = 1 << 22
_EPS = 1e-12  # rows with a smaller norm are left as they are by normalisation

Metric = Literal["cosine", "l2"]
METRICS: tuple[str, ...] = ("cosine", "l2")


# ------------------------------------------------------------------ checks


def as_values(x: npt.ArrayLike, name: str) -> np.ndarray:
    """x as finite float64 [N] (an [N, 1] column is accepted); ValueError otherwise."""
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


def as_labels(x: npt.ArrayLike, name: str) -> np.ndarray:
    """x as int64 class ids [N] (>= 0; booleans and integral floats accepted); ValueError otherwise."""
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


def as_embeddings(x: npt.ArrayLike, name: str) -> np.ndarray:
    """x as finite float64 [N, D] with N, D >= 1; ValueError otherwise."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape [N, D], got {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return a


def same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """ValueError unless a and b have the same number of rows."""
    if len(a) != len(b):
        raise ValueError(f"{name_a} has {len(a)} rows but {name_b} has {len(b)}")


def check_metric(metric: str) -> str:
    """`metric` if it is "cosine" or "l2"; ValueError otherwise."""
    if metric not in METRICS:
        raise ValueError(f"metric must be 'cosine' or 'l2', got {metric!r}")
    return metric


def check_k(k: int, available: int) -> int:
    """k as an int if 1 <= k <= available; ValueError otherwise."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > available:
        raise ValueError(f"k = {k} but only {available} gallery items can be neighbours")
    return int(k)


def check_temperature(temperature: float) -> float:
    """temperature as a float if it is finite and > 0; ValueError otherwise."""
    t = float(temperature)
    if not (np.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    return t


# ------------------------------------------------------- the embedding


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm, in x's dtype (rows shorter than _EPS left as they are)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)


def l2_normalize(emb: npt.ArrayLike, name: str = "emb") -> np.ndarray:
    """Rows scaled to unit L2 norm (all zeros stays zeros). emb: [N, D] -> [N, D] float64, validated."""
    return _unit_rows(as_embeddings(emb, name))


def embedding_array(features: npt.ArrayLike, metric: str) -> np.ndarray:
    """Raw encoder features [N, D] -> the embedding served in `metric` (float32):
    L2-normalised rows for "cosine", the features as they are for "l2" (the trainer's
    `supemb.encoders.heads.embedding_of` in numpy)."""
    f = np.asarray(features, np.float32)
    return _unit_rows(f) if check_metric(metric) == "cosine" else f


# ------------------------------------------------------------- search


def _top_k(sim: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top k of a similarity block sim: [n, G] -> (idx [n, k] int64, sim [n, k]),
    by decreasing similarity, ties by increasing index."""
    g = sim.shape[1]
    if k == 1:
        idx = sim.argmax(axis=1)[:, None]  # argmax returns the first maximum
    else:
        if k < g:
            # Selecting from the right end is several times faster than partitioning the negated block.
            idx = np.argpartition(sim, g - k, axis=1)[:, g - k:]
            kth = np.take_along_axis(sim, idx, axis=1).min(axis=1)  # of the items tied at the k-th place
            for r in np.flatnonzero(np.count_nonzero(sim >= kth[:, None], axis=1) > k):  # argpartition took any:
                c = np.flatnonzero(sim[r] >= kth[r])  # take the lowest indices
                idx[r] = c[np.argsort(-sim[r, c], kind="stable")[:k]]
            idx.sort(axis=1)  # ascending index, so the stable sort below breaks ties by index
        else:
            idx = np.broadcast_to(np.arange(g), sim.shape).copy()
        order = np.argsort(-np.take_along_axis(sim, idx, axis=1), axis=1, kind="stable")
        idx = np.take_along_axis(idx, order, axis=1)
    return idx.astype(np.int64, copy=False), np.take_along_axis(sim, idx, axis=1)


def top_k_blocks(query: np.ndarray, gallery: np.ndarray, k: int, self_index: np.ndarray | None = None,
                 metric: Metric = "cosine") -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """Exact top-k neighbours, a block of query rows at a time. query: [N, D], gallery: [G, D],
    already in `metric` (`metric_pair`); self_index: [N] gallery index never to return for each
    query (leave-one-out), or None. Yields (rows, idx [n, k] int64, sim [n, k]), best first."""
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


def metric_pair(query_emb: npt.ArrayLike, gallery_emb: npt.ArrayLike, exclude_self: bool = False,
                metric: Metric = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """Validated (query [N, D], gallery [G, D]) in `metric`: normalised for "cosine", as given for "l2"."""
    check_metric(metric)
    q, g = as_embeddings(query_emb, "query_emb"), as_embeddings(gallery_emb, "gallery_emb")
    if metric == "cosine":
        q, g = _unit_rows(q), _unit_rows(g)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query_emb has dimension {q.shape[1]} but gallery_emb has {g.shape[1]}")
    if exclude_self and len(q) != len(g):
        raise ValueError(
            f"exclude_self needs the query set to be the gallery, got {len(q)} queries and {len(g)} gallery items")
    return q, g


def nearest_neighbours(query_emb: npt.ArrayLike, gallery_emb: npt.ArrayLike, k: int, exclude_self: bool = False,
                       metric: Metric = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """The k most similar gallery items of each query. query_emb: [N, D], gallery_emb: [G, D],
    compared in `metric` (module docstring); k <= G (G - 1 with exclude_self). Returns
    (indices [N, k] int64, similarities [N, k] float64), best first, ties by index."""
    q, g = metric_pair(query_emb, gallery_emb, exclude_self, metric)
    k = check_k(k, len(g) - int(exclude_self))
    idx = np.empty((len(q), k), dtype=np.int64)
    sim = np.empty((len(q), k), dtype=np.float64)
    self_index = np.arange(len(q)) if exclude_self else None
    for rows, bi, bs in top_k_blocks(q, g, k, self_index, metric):
        idx[rows], sim[rows] = bi, bs
    return idx, sim


# ---------------------------------------------------- neighbours -> values


def softmax_weights(sim: np.ndarray, temperature: float) -> np.ndarray:
    """exp(sim / t) per row, normalised to sum 1. sim: [N, k] sorted decreasing -> [N, k]."""
    sim = np.asarray(sim, dtype=np.float64)
    w = np.exp((sim - sim[:, :1]) / check_temperature(temperature))  # column 0 is the row maximum
    return w / w.sum(axis=1, keepdims=True)


def neighbour_vote(sim: np.ndarray, labels_k: np.ndarray, n_classes: int, temperature: float = 0.07) -> np.ndarray:
    """Class probabilities [n, n_classes] from found neighbours: each votes for its
    class with weight exp(s / t) (the weighted kNN of Wu et al. 2018, cosine t = 0.07).

    sim: [n, k] similarities (either metric, larger = more similar) sorted
    decreasing per row; labels_k: [n, k] the neighbours' class ids.
    """
    w = softmax_weights(sim, temperature)
    probs = np.zeros((len(w), n_classes), dtype=np.float64)
    np.add.at(probs, (np.arange(len(w))[:, None], np.asarray(labels_k)), w)
    return probs


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Row-wise: the first sorted value whose cumulative weight reaches 1/2, averaged with
    the next when it is exactly 1/2 (equal weights give np.median). values, weights: [N, k]."""
    order = np.argsort(values, axis=1, kind="stable")
    v = np.take_along_axis(values, order, axis=1)
    cw = np.cumsum(np.take_along_axis(weights, order, axis=1), axis=1)
    tol = 1e-12
    i = np.argmax(cw >= 0.5 - tol, axis=1)
    rows = np.arange(len(v))
    nxt = np.minimum(i + 1, v.shape[1] - 1)
    half = np.abs(cw[rows, i] - 0.5) <= tol
    return np.where(half, 0.5 * (v[rows, i] + v[rows, nxt]), v[rows, i])


def neighbour_regress(sim: np.ndarray, targets_k: np.ndarray, weighting: Literal["softmax", "uniform"] = "softmax",
                      temperature: float = 0.1, reduce: Literal["mean", "median"] = "mean",
                      ) -> tuple[np.ndarray, np.ndarray]:
    """A value and its spread from found neighbours. sim: [n, k] similarities sorted
    decreasing per row; targets_k: [n, k] the neighbours' targets. Weights: "softmax"
    w_j ∝ exp(s_j / t), "uniform" 1/k. pred: the weighted mean, or the weighted median
    (robust to a stray neighbour); spread: sqrt(sum_j w_j (y_j - ybar)^2), 0 when the
    neighbours agree. Returns (pred [n], spread [n]) float64."""
    if weighting not in ("softmax", "uniform"):
        raise ValueError(f"weighting must be 'softmax' or 'uniform', got {weighting!r}")
    if reduce not in ("mean", "median"):
        raise ValueError(f"reduce must be 'mean' or 'median', got {reduce!r}")
    sim = np.asarray(sim, dtype=np.float64)
    yk = np.asarray(targets_k, dtype=np.float64)
    t = check_temperature(temperature)
    w = softmax_weights(sim, t) if weighting == "softmax" else np.full(sim.shape, 1.0 / sim.shape[1])
    mean = yk[:, 0] + np.sum(w * (yk - yk[:, :1]), axis=1)  # agreeing neighbours: their target, spread 0, exactly
    spread = np.sqrt(np.maximum(np.sum(w * (yk - mean[:, None]) ** 2, axis=1), 0.0))
    return (mean if reduce == "mean" else _weighted_median(yk, w)), spread


def knn_classify(query_emb: npt.ArrayLike, gallery_emb: npt.ArrayLike, gallery_labels: npt.ArrayLike, k: int,
                 n_classes: int | None = None, temperature: float = 0.07, exclude_self: bool = False,
                 metric: Metric = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """Similarity-weighted kNN vote (`neighbour_vote`; a large temperature tends to a majority
    vote, a small one to 1-NN). query_emb: [N, D], gallery_emb: [G, D], gallery_labels: [G];
    n_classes C defaults to max(gallery_labels) + 1. Returns (pred [N] int64, the argmax,
    lowest class on ties; probs [N, C] float64, rows summing to 1)."""
    labels = as_labels(gallery_labels, "gallery_labels")
    g = as_embeddings(gallery_emb, "gallery_emb")
    same_length(labels, g, "gallery_labels", "gallery_emb")
    t = check_temperature(temperature)
    c = int(labels.max()) + 1 if n_classes is None else int(n_classes)
    if c < int(labels.max()) + 1:
        raise ValueError(f"n_classes = {c} but the labels go up to {labels.max()}")
    idx, sim = nearest_neighbours(query_emb, g, k, exclude_self, metric)
    probs = neighbour_vote(sim, labels[idx], c, t)
    return probs.argmax(axis=1).astype(np.int64), probs


def knn_regress(query_emb: npt.ArrayLike, gallery_emb: npt.ArrayLike, gallery_targets: npt.ArrayLike, k: int,
                weighting: Literal["softmax", "uniform"] = "softmax", temperature: float = 0.1,
                reduce: Literal["mean", "median"] = "mean", exclude_self: bool = False,
                metric: Metric = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """kNN regression with an uncertainty: `neighbour_regress` of the k nearest gallery items.
    query_emb: [N, D], gallery_emb: [G, D], gallery_targets: [G] -> (pred [N], spread [N])."""
    y = as_values(gallery_targets, "gallery_targets")
    g = as_embeddings(gallery_emb, "gallery_emb")
    same_length(y, g, "gallery_targets", "gallery_emb")
    check_temperature(temperature)  # before the search, like the options neighbour_regress checks
    idx, sim = nearest_neighbours(query_emb, g, k, exclude_self, metric)
    return neighbour_regress(sim, y[idx], weighting, temperature, reduce)


# ------------------------------------------------------- rows -> inputs


def group_mean(values: npt.ArrayLike, owner: npt.ArrayLike, n: int) -> np.ndarray:
    """The mean of each input's rows. values: [R] or [R, ...]; owner: [R] input
    position (0 .. n-1) of each row. Returns float64 [n] or [n, ...]; an input with no rows gets 0."""
    v = np.asarray(values, dtype=np.float64)
    o = np.asarray(owner, dtype=np.int64)
    flat = v.reshape(len(v), -1)
    sums = np.zeros((n, flat.shape[1]))
    np.add.at(sums, o, flat)
    counts = np.bincount(o, minlength=n).astype(np.float64)
    return (sums / np.maximum(counts, 1.0)[:, None]).reshape((n,) + v.shape[1:])


def aggregate_by_group(values: npt.ArrayLike, group: npt.ArrayLike,
                       how: Literal["mean", "median"] = "mean") -> tuple[np.ndarray, np.ndarray]:
    """Row values -> one per group (an EEG recording's window predictions -> the recording's).

    values: [N] or [N, K] (e.g. class probabilities); group: [N] any ids.
    how: "mean" or "median" (robust to a few artefact windows).
    Returns (groups [G] sorted ascending, aggregated [G] or [G, K] float64).
    """
    v, g = np.asarray(values), np.asarray(group)
    if len(v) != len(g):
        raise ValueError(f"{len(v)} values but {len(g)} group ids")
    if how not in ("mean", "median"):
        raise ValueError(f"how must be 'mean' or 'median', got {how!r}")
    uniq, inv = np.unique(g, return_inverse=True)
    inv = inv.reshape(-1)
    if how == "mean":
        return uniq, group_mean(v, inv, len(uniq))
    return uniq, np.stack([np.median(v[inv == j], axis=0) for j in range(len(uniq))]).astype(np.float64)


def recording_embeddings(emb: npt.ArrayLike, owner: npt.ArrayLike, n: int, metric: str) -> np.ndarray:
    """One embedding per input from its rows (an EEG recording's windows), float32 [n, D].

    emb: [R, D] row embeddings in `metric`, owner: [R] input position of each
    row. "cosine": the normalised mean of the rows (a unit vector, like the
    rows); "l2": their plain mean (the point closest to all of them in squared
    Euclidean distance). An input with no rows gets zeros.
    """
    return embedding_array(group_mean(emb, owner, n), metric)


def rows_by_owner(owner: npt.ArrayLike) -> list[tuple[int, np.ndarray]]:
    """[(input position, its row indices)] in input order; O(R log R), not O(R x inputs)."""
    o = np.asarray(owner)
    order = np.argsort(o, kind="stable")
    positions, starts = np.unique(o[order], return_index=True)
    return [(int(pos), rows) for pos, rows in zip(positions, np.split(order, starts[1:]))]


class InputPredictions(NamedTuple):
    """Per-input predictions, inputs 0 .. n-1 (an input with no rows: zeros). values: [n]
    (regression) or None; probabilities: [n, C] (classification) or None; uncertainty: [n],
    the spread in target units (regression) or 1 - the top probability (classification)."""

    values: np.ndarray | None
    probabilities: np.ndarray | None
    uncertainty: np.ndarray


def predict_inputs(sim: np.ndarray, targets_k: np.ndarray, owner: npt.ArrayLike, n_inputs: int, task: str, *,
                   n_classes: int = 0, temperature: float | None = None,
                   weighting: Literal["softmax", "uniform"] = "softmax",
                   reduce: Literal["mean", "median"] = "mean", offset: npt.ArrayLike = 0.0) -> InputPredictions:
    """Each input's prediction from its rows' neighbours (an image: one row; an EEG recording: its windows).

    sim: [R, k] similarities sorted decreasing per row; targets_k: [R, k] the neighbours'
    targets (class ids for classification); owner: [R] input position of each row.
    temperature: of the kNN weights (None: the cosine defaults, 0.1 values, 0.07 classes).
    Regression: the mean of the rows' kNN predictions, with an uncertainty pooling the rows'
    spreads and their disagreement (law of total variance):
    sqrt(mean_r (spread_r^2 + (pred_r - value)^2)); offset ([R] or a scalar) is added to each row's
    kNN value (a residual kNN: targets_k are a head's residuals). Classification: the rows' votes averaged."""
    o = np.asarray(owner, dtype=np.int64)
    if task == "regression":
        pred, spread = neighbour_regress(sim, targets_k, weighting=weighting, reduce=reduce,
                                         temperature=0.1 if temperature is None else temperature)
        pred = pred + np.asarray(offset, dtype=np.float64)
        value = group_mean(pred, o, n_inputs)
        var = group_mean(spread**2 + (pred - value[o]) ** 2, o, n_inputs)
        return InputPredictions(value, None, np.sqrt(var))
    if task != "classification":
        raise ValueError(f"task must be 'regression' or 'classification', got {task!r}")
    t = 0.07 if temperature is None else temperature
    probs = group_mean(neighbour_vote(sim, targets_k, n_classes, t), o, n_inputs)
    return InputPredictions(None, probs, 1.0 - probs.max(axis=1, initial=0.0))
