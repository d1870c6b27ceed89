"""What every run chooses on its own validation split once its encoder is trained:
the served geometry (where the loss does not fix it), the kNN weighting, and, for
values, whether kNN serves the targets or the residuals of a linear head.

Numpy only. The trainer calls `choose_knn` and `choose_residual` at the end of a run
and records the result in model.json (`metric`, `knn_k`, `knn_temperature`,
`knn_residual`); export copies it into the bundle's manifest.

The metric and k are the best on validation. The temperature is the broadest
one whose validation score is within one standard error of the best (the
one-standard-error rule; the error is that of the per-item score difference,
paired item by item). A temperature far below the neighbours' similarity gap
turns the vote into the 1st neighbour's answer: the served class probabilities
become 0/1 and the served spread of a value shrinks to nothing. Validation
rarely tells such a temperature from a broader one (most items get the same
answer), so without the rule it wins by the noise of a small validation split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from supemb.predict.neighbours import embedding_array, nearest_neighbours, neighbour_regress, neighbour_vote

# kNN temperature grid, in units of the median similarity gap between a query's 1st and k-th neighbour.
KNN_TEMPERATURE_FACTORS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0)
KNN_KS = (5, 10, 20, 40)  # kNN sizes tried on validation when --knn-k is not given


def within_one_se(best: np.ndarray, other: np.ndarray) -> bool:
    """Whether per-item scores `other` are within one standard error of `best` (higher is
    better), the error of the mean of the paired differences `best - other`."""
    d = np.asarray(best, dtype=np.float64) - np.asarray(other, dtype=np.float64)
    if len(d) == 0:  # nothing to tell them apart
        return True
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
    return float(d.mean()) <= se + 1e-12


def knn_grid(
    train_feats: np.ndarray, train_targets: np.ndarray, val_feats: np.ndarray,
    item_scores: Callable[[np.ndarray], np.ndarray], *, task: str, n_classes: int,
    metrics_tried: Sequence[str], ks: Sequence[int] = KNN_KS,
) -> list[tuple[str, int, float, np.ndarray]]:
    """Every kNN setting validation tries, in order, with its per-item scores: [(metric, k,
    temperature, item scores [M])]. Arguments as `choose_knn`."""
    ks = sorted({min(int(k), len(train_feats)) for k in ks})
    grid = []
    for metric in metrics_tried:
        g, q = embedding_array(train_feats, metric), embedding_array(val_feats, metric)
        idx_all, sim_all = nearest_neighbours(q, g, ks[-1], metric=metric)
        for k in ks:
            idx, sim = idx_all[:, :k], sim_all[:, :k]
            spread = float(np.median(sim[:, 0] - sim[:, -1])) or 1.0
            for factor in KNN_TEMPERATURE_FACTORS:
                t = float(f"{spread * factor:.3g}")
                if task == "regression":
                    pred, _ = neighbour_regress(sim, train_targets[idx], temperature=t)
                else:
                    probs = neighbour_vote(sim, train_targets[idx].astype(np.int64), n_classes, t)
                    pred = probs.argmax(1)
                grid.append((metric, k, t, np.asarray(item_scores(pred), dtype=np.float64)))
    return grid


def choose_knn(
    train_feats: np.ndarray, train_targets: np.ndarray, val_feats: np.ndarray,
    item_scores: Callable[[np.ndarray], np.ndarray], *, task: str, n_classes: int,
    metrics_tried: Sequence[str], ks: Sequence[int] = KNN_KS,
) -> tuple[str, int, float]:
    """(metric, k, temperature): metric and k of the best mean validation score, then the
    largest temperature within one standard error of that (module docstring).

    train_feats [G, D], val_feats [N, D]: raw encoder features; train_targets [G].
    item_scores(predictions) -> per-item scores [M] (higher is better; M may be fewer than
    N, e.g. one per recording), where predictions are kNN values (regression) or class ids
    (classification) of the val items against the train gallery. Ties keep the earlier candidate.
    """
    grid = knn_grid(train_feats, train_targets, val_feats, item_scores, task=task, n_classes=n_classes,
                    metrics_tried=metrics_tried, ks=ks)
    if not grid:
        raise ValueError("choose_knn needs at least one metric to try")
    best = 0
    for i, (_, _, _, items) in enumerate(grid):
        if items.mean() > grid[best][3].mean() + 1e-12:
            best = i
    metric, k, _, best_items = grid[best]
    return metric, k, max(t for m, kk, t, items in grid
                          if m == metric and kk == k and within_one_se(best_items, items))


def fit_residual(
    train_feats: np.ndarray, train_targets: np.ndarray, val_feats: np.ndarray,
    item_scores: Callable[[np.ndarray], np.ndarray], *, metric: str, ks: Sequence[int] = KNN_KS,
) -> dict[str, Any]:
    """A residual kNN for values: a ridge head fitted on the train gallery's embeddings in the
    served geometry (`embedding_array(., metric)`; strength chosen on validation,
    `supemb.train.probe`), and kNN of the gallery's residuals (target minus head), its k and
    temperature chosen as `choose_knn` chooses them; it predicts head(q) + that kNN. The head
    carries the global trend, which kNN flattens at the ends of the target range; the
    neighbours carry what is not linear. Returns {"k", "temperature", "weight" [D], "bias",
    "alpha"} (the head acts on served embeddings: `emb @ weight + bias`). Arguments as `choose_knn`."""
    from supemb.train.probe import fit_ridge

    g, q = embedding_array(train_feats, metric), embedding_array(val_feats, metric)
    y = np.asarray(train_targets, dtype=np.float64)
    fit = fit_ridge(g, y, q, lambda pred: float(np.mean(item_scores(pred))))
    weight, bias = fit.weight[0], float(fit.bias[0])
    head_q = q @ weight + bias
    _, k, t = choose_knn(train_feats, y - (g @ weight + bias), val_feats, lambda r: item_scores(r + head_q),
                         task="regression", n_classes=0, metrics_tried=[metric], ks=ks)
    return {"k": int(k), "temperature": float(t), "weight": [float(v) for v in weight], "bias": bias,
            "alpha": float(fit.alpha)}


def residual_predict(r: dict[str, Any], train_feats: np.ndarray, train_targets: np.ndarray, feats: np.ndarray,
                     metric: str) -> np.ndarray:
    """`fit_residual`'s prediction for each row of feats (raw features, like train_feats)."""
    g, q = embedding_array(train_feats, metric), embedding_array(feats, metric)
    w, b = np.asarray(r["weight"], dtype=np.float64), float(r["bias"])
    idx, sim = nearest_neighbours(q, g, min(r["k"], len(g)), metric=metric)
    pred, _ = neighbour_regress(sim, (np.asarray(train_targets, dtype=np.float64) - (g @ w + b))[idx],
                                temperature=r["temperature"])
    return pred + q @ w + b


def choose_residual(
    train_feats: np.ndarray, train_targets: np.ndarray, val_feats: np.ndarray,
    item_scores: Callable[[np.ndarray], np.ndarray], *, metric: str, k: int, temperature: float,
    ks: Sequence[int] = KNN_KS,
) -> dict[str, Any] | None:
    """`fit_residual`'s record where its mean validation score beats plain kNN's at
    (metric, k, temperature) by more than rounding (1e-6 relative), else None (plain kNN is
    served). Arguments as `choose_knn`."""
    r = fit_residual(train_feats, train_targets, val_feats, item_scores, metric=metric, ks=ks)
    g, q = embedding_array(train_feats, metric), embedding_array(val_feats, metric)
    idx, sim = nearest_neighbours(q, g, min(k, len(g)), metric=metric)
    plain, _ = neighbour_regress(sim, np.asarray(train_targets, dtype=np.float64)[idx], temperature=temperature)
    residual = residual_predict(r, train_feats, train_targets, val_feats, metric)
    res_score, plain_score = float(np.mean(item_scores(residual))), float(np.mean(item_scores(plain)))
    # a tie (a flat head: the same predictions up to rounding) keeps plain kNN, and older readers can serve it
    return r if res_score > plain_score + 1e-6 * max(1.0, abs(plain_score)) else None
