"""How good an embedding is: prediction metrics (MAE/RMSE/R², accuracy,
balanced accuracy), retrieval (P@1, MAP@R), ordinality, and the per-epoch
report that combines them with kNN predictions.

Numpy only, float64. Embeddings are compared in a `metric` ("cosine" or
"l2") exactly as `supemb.predict.neighbours` does (its docstring has the
conventions: similarities, tie-breaking, blocks, leave-one-out). Mismatched
lengths, empty inputs, NaN/Inf and bad options raise ValueError; a metric that
is undefined for the data (e.g. MAP@R when no query has a relevant item) is NaN.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from supemb.predict.neighbours import (
    Metric,
    aggregate_by_group,
    as_embeddings,
    as_labels,
    as_values,
    check_k,
    check_metric,
    check_temperature,
    knn_regress,
    l2_normalize,
    metric_pair,
    neighbour_vote,
    same_length,
    top_k_blocks,
)

# ------------------------------------------------------------ predictions


def regression_metrics(pred: npt.ArrayLike, target: npt.ArrayLike) -> dict[str, float]:
    """Mean absolute error, root mean squared error and R^2. pred, target: [N].

        mae  = mean |pred - target|
        rmse = sqrt(mean (pred - target)^2)
        r2   = 1 - SS_res / SS_tot,  SS_res = sum (target - pred)^2,
                                     SS_tot = sum (target - mean(target))^2

    R^2 is 1 for a perfect prediction, 0 for predicting the mean, negative
    for worse. With a constant target (SS_tot = 0) it is 1.0 when the
    prediction is exact and 0.0 otherwise (scikit-learn's convention).
    """
    p = as_values(pred, "pred")
    t = as_values(target, "target")
    same_length(p, t, "pred", "target")
    err = p - t
    ss_res = float(np.sum(err**2))
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    if ss_tot > 0.0:
        r2 = 1.0 - ss_res / ss_tot
    else:
        r2 = 1.0 if ss_res == 0.0 else 0.0
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(ss_res / len(t))), "r2": float(r2)}


def accuracy(pred: npt.ArrayLike, target: npt.ArrayLike) -> float:
    """Fraction of exact matches. pred, target: [N] integer class ids."""
    p = as_labels(pred, "pred")
    t = as_labels(target, "target")
    same_length(p, t, "pred", "target")
    return float(np.mean(p == t))


def balanced_accuracy(pred: npt.ArrayLike, target: npt.ArrayLike) -> float:
    """Mean per-class recall over the classes present in `target`. pred, target: [N] class ids.

        bacc = 1/|C| sum_{c in C} #{i: target_i = c, pred_i = c} / #{i: target_i = c}

    (a class that is only predicted has no recall and is not averaged). On a
    long-tailed set, predicting the head class everywhere scores high accuracy
    but 1/|C| balanced accuracy.
    """
    p = as_labels(pred, "pred")
    t = as_labels(target, "target")
    same_length(p, t, "pred", "target")
    classes, inv = np.unique(t, return_inverse=True)
    support = np.bincount(inv, minlength=len(classes))
    hits = np.bincount(inv, weights=(p == t).astype(np.float64), minlength=len(classes))
    return float(np.mean(hits / support))


# -------------------------------------------------------------- retrieval


class _Retrieval(NamedTuple):
    q: np.ndarray  # [N, D] queries in the metric
    q_labels: np.ndarray  # [N]
    g: np.ndarray  # [G, D] gallery in the metric
    g_labels: np.ndarray  # [G]
    self_index: np.ndarray | None  # [N] leave-one-out: the query's own gallery index
    r: np.ndarray  # [N] relevant gallery items per query
    metric: str = "cosine"


def _retrieval_setup(query_emb: npt.ArrayLike, query_labels: npt.ArrayLike, gallery_emb: npt.ArrayLike | None,
                     gallery_labels: npt.ArrayLike | None, metric: Metric = "cosine") -> _Retrieval:
    ql = as_labels(query_labels, "query_labels")
    if (gallery_emb is None) != (gallery_labels is None):
        raise ValueError("give both gallery_emb and gallery_labels, or neither")
    loo = gallery_emb is None
    q, g = metric_pair(query_emb, query_emb if loo else gallery_emb, exclude_self=loo, metric=metric)
    gl = ql if loo else as_labels(gallery_labels, "gallery_labels")
    same_length(ql, q, "query_labels", "query_emb")
    same_length(gl, g, "gallery_labels", "gallery_emb")
    counts = np.bincount(gl, minlength=int(max(ql.max(), gl.max())) + 1)
    r = counts[ql] - int(loo)  # in leave-one-out the query itself is not relevant
    return _Retrieval(q, ql, g, gl, np.arange(len(q)) if loo else None, r, metric)


def average_precision_at_r(idx: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray,
                           r: np.ndarray) -> np.ndarray:
    """AP@R of each query from its ranked neighbours (any search: numpy here, FAISS in `supemb eval`).

    idx: [n, >= max r] gallery indices, best first; q_labels: [n]; g_labels: [G];
    r: [n] > 0, the gallery items with the query's label. Returns [n]:
    1/R sum_{j <= R} P(j) rel(j), only the first R retrieved counting.
    """
    pos = np.arange(1, idx.shape[1] + 1)
    rel = (g_labels[idx] == q_labels[:, None]) & (pos[None, :] <= r[:, None])
    prec = np.cumsum(rel, axis=1) / pos[None, :]
    return np.sum(prec * rel, axis=1) / r


def _retrieval_pass(ret: _Retrieval, k: int = 0) -> Iterator[tuple[slice, np.ndarray, np.ndarray, np.ndarray]]:
    """One ranking pass over all queries, deep enough for MAP@R and for k.
    Yields (rows, idx [n, K], sim [n, K], ap [n]) with K = max(k, max R, 1); ap NaN where R = 0."""
    depth = max(k, int(ret.r.max()), 1)
    for rows, idx, sim in top_k_blocks(ret.q, ret.g, depth, ret.self_index, ret.metric):
        r = ret.r[rows]
        ap = np.full(len(r), np.nan)
        m = r > 0
        ap[m] = average_precision_at_r(idx[m], ret.q_labels[rows][m], ret.g_labels, r[m])
        yield rows, idx, sim, ap


def precision_at_1(query_emb: npt.ArrayLike, query_labels: npt.ArrayLike, gallery_emb: npt.ArrayLike | None = None,
                   gallery_labels: npt.ArrayLike | None = None, metric: Metric = "cosine") -> float:
    """Fraction of queries whose nearest gallery item has the query's label.

    query_emb: [N, D], query_labels: [N]; gallery_emb: [G, D] and
    gallery_labels: [G], or neither, meaning leave-one-out retrieval within
    the query set. Queries with no relevant gallery item (R = 0, see
    `map_at_r`) are skipped, as in MAP@R; NaN if every query is skipped.
    """
    ret = _retrieval_setup(query_emb, query_labels, gallery_emb, gallery_labels, metric)
    keep = np.flatnonzero(ret.r > 0)
    if len(keep) == 0:
        return float("nan")
    self_index = None if ret.self_index is None else ret.self_index[keep]
    hits = 0
    for rows, idx, _ in top_k_blocks(ret.q[keep], ret.g, 1, self_index, ret.metric):
        hits += int(np.sum(ret.g_labels[idx[:, 0]] == ret.q_labels[keep[rows]]))
    return hits / len(keep)


def map_at_r(query_emb: npt.ArrayLike, query_labels: npt.ArrayLike, gallery_emb: npt.ArrayLike | None = None,
             gallery_labels: npt.ArrayLike | None = None, metric: Metric = "cosine") -> float:
    """Mean average precision at R (Musgrave et al., "A Metric Learning Reality Check", 2020).

    Arguments as `precision_at_1`. For query i, R_i is the number of gallery
    items with its label (itself excluded) and

        MAP@R_i = 1/R_i sum_{j=1..R_i} P(j) * rel(j)

    with rel(j) = 1 if the j-th retrieved item has the query's label and P(j)
    the precision among the first j. Queries with R_i = 0 are skipped (NaN if
    all are). Unlike P@1 it rewards a whole class clustering tightly around
    the query. For continuous targets, bin them first (`np.digitize`).
    """
    ret = _retrieval_setup(query_emb, query_labels, gallery_emb, gallery_labels, metric)
    if not np.any(ret.r > 0):
        return float("nan")
    ap = np.concatenate([block_ap for _, _, _, block_ap in _retrieval_pass(ret)])
    return float(np.nanmean(ap))


# ------------------------------------------------------------- ordinality


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


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of x [n], tied values sharing their mean rank (scipy's rankdata "average")."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of a, b: [n]: the Pearson correlation of their average ranks."""
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    return float(np.dot(ra, rb) / np.sqrt(np.dot(ra, ra) * np.dot(rb, rb)))


def ordinality(emb: npt.ArrayLike, target: npt.ArrayLike, max_pairs: int = 200_000, seed: int = 0,
               normalize: bool | None = None, metric: Metric = "cosine") -> float:
    """How well embedding distances follow target distances.

    emb: [N, D]; target: [N] or [N, T] (distance: sum of absolute
    differences). The Spearman rank correlation between d_emb(i, j) and
    |y_i - y_j| over pairs i < j: 1 when the embedding orders the pairs as the
    targets do (the goal of Rank-N-Contrast), ~0 for an unrelated embedding.
    d_emb: the cosine distance of L2-normalised rows (`normalize=True`) or the
    Euclidean distance of the rows as given (`normalize=False`); None follows
    `metric` (True for "cosine"). With more than `max_pairs` pairs, that many
    (i != j) are drawn with `seed`. NaN if either distance is constant.
    """
    check_metric(metric)
    if normalize is None:
        normalize = metric == "cosine"
    e = as_embeddings(emb, "emb")
    y = np.asarray(target, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise ValueError(f"target must have shape [N] or [N, T], got {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("target contains NaN or Inf values")
    same_length(y, e, "target", "emb")
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
    return spearman(d_emb, d_y)


# ---------------------------------------------------------------- report


def _group_targets(targets: np.ndarray, group: np.ndarray) -> np.ndarray:
    """The one target of each group, sorted by group id; ValueError if a group's targets differ."""
    _, first, inv = np.unique(group, return_index=True, return_inverse=True)
    per_group = targets[first]
    if not np.array_equal(per_group[inv.reshape(-1)], targets):
        raise ValueError("val_groups: windows of the same recording have different targets")
    return per_group


def embedding_report(
    train_emb: npt.ArrayLike, train_targets: npt.ArrayLike, val_emb: npt.ArrayLike, val_targets: npt.ArrayLike,
    task: Literal["regression", "classification"], k: int = 20, temperature: float | None = None,
    val_groups: npt.ArrayLike | None = None, max_pairs: int = 200_000, seed: int = 0, metric: Metric = "cosine",
) -> dict[str, float]:
    """The per-epoch embedding evaluation: val queries against the train gallery.

    train_emb: [G, D], train_targets: [G]; val_emb: [N, D], val_targets: [N]
    (class ids for classification). k is capped at G. metric: the geometry of
    neighbours, similarities and ordinality. temperature: of the kNN weights,
    in `metric`'s units; default 0.07 (classes) and 0.1 (values, softmax),
    chosen for cosine: pass the run's own for "l2".
    val_groups: [N] optional recording ids (EEG windows): adds recording-level
    "rec_" metrics from window predictions averaged per recording (class
    probabilities averaged, then argmax).

    Keys (plain floats):
      regression:     knn_mae, knn_rmse, knn_r2, knn_spread (mean kNN spread),
                      ordinality (on val), [rec_knn_mae, rec_knn_rmse, rec_knn_r2]
      classification: knn_acc, knn_bacc, p_at_1, map_at_r (val queries,
                      train gallery), [rec_knn_acc, rec_knn_bacc]
    No retrieval metrics for regression (relevance would need an arbitrary
    binning; `ordinality` measures the same structure). An undefined (NaN)
    metric is left out, so the dict is strict-JSON serialisable.
    """
    if task not in ("regression", "classification"):
        raise ValueError(f"task must be 'regression' or 'classification', got {task!r}")
    check_metric(metric)
    g = as_embeddings(train_emb, "train_emb")
    v = as_embeddings(val_emb, "val_emb")
    kk = min(check_k(k, available=int(k)), len(g))
    groups = None
    if val_groups is not None:
        groups = np.asarray(val_groups)
        same_length(groups, v, "val_groups", "val_emb")
    out: dict[str, float] = {}
    if task == "regression":
        yt = as_values(train_targets, "train_targets")
        yv = as_values(val_targets, "val_targets")
        same_length(yv, v, "val_targets", "val_emb")
        t = 0.1 if temperature is None else temperature
        pred, spread = knn_regress(v, g, yt, kk, weighting="softmax", temperature=t, metric=metric)
        out.update({f"knn_{name}": val for name, val in regression_metrics(pred, yv).items()})
        out["knn_spread"] = float(np.mean(spread))
        if len(v) >= 2:
            out["ordinality"] = ordinality(v, yv, max_pairs=max_pairs, seed=seed, metric=metric)
        if groups is not None:
            _, rec_pred = aggregate_by_group(pred, groups)
            rec_y = _group_targets(yv, groups)
            out.update({f"rec_knn_{name}": val for name, val in regression_metrics(rec_pred, rec_y).items()})
    else:
        lt = as_labels(train_targets, "train_targets")
        lv = as_labels(val_targets, "val_targets")
        same_length(lv, v, "val_targets", "val_emb")
        same_length(lt, g, "train_targets", "train_emb")
        t = check_temperature(0.07 if temperature is None else temperature)
        ret = _retrieval_setup(v, lv, g, lt, metric)
        probs = np.zeros((len(v), int(max(lt.max(), lv.max())) + 1))
        hit = np.zeros(len(v), dtype=bool)
        ap = np.full(len(v), np.nan)
        # One ranking pass serves the kNN vote (first k), P@1 and MAP@R (first R).
        for rows, idx, sim, block_ap in _retrieval_pass(ret, kk):
            probs[rows] = neighbour_vote(sim[:, :kk], lt[idx[:, :kk]], probs.shape[1], t)
            hit[rows] = lt[idx[:, 0]] == lv[rows]
            ap[rows] = block_ap
        pred = probs.argmax(axis=1)
        out["knn_acc"] = accuracy(pred, lv)
        out["knn_bacc"] = balanced_accuracy(pred, lv)
        relevant = ret.r > 0  # P@1 and MAP@R skip queries whose class is not in the gallery
        out["p_at_1"] = float(np.mean(hit[relevant])) if relevant.any() else float("nan")
        out["map_at_r"] = float(np.mean(ap[relevant])) if relevant.any() else float("nan")
        if groups is not None:
            _, rec_probs = aggregate_by_group(probs, groups)
            rec_y = _group_targets(lv, groups)
            rec_pred = rec_probs.argmax(axis=1)
            out["rec_knn_acc"] = accuracy(rec_pred, rec_y)
            out["rec_knn_bacc"] = balanced_accuracy(rec_pred, rec_y)
    return {key: float(val) for key, val in out.items() if np.isfinite(val)}
