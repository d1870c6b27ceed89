"""What every run chooses on its own validation split once its encoder is trained:
the served geometry (where the loss does not fix it) and the kNN weighting.

Numpy only. The trainer calls `choose_knn` at the end of a run and records the
result in model.json (`metric`, `knn_k`, `knn_temperature`); export copies it
into the bundle's manifest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from supemb.predict.neighbours import embedding_array, nearest_neighbours, neighbour_regress, neighbour_vote

# kNN temperature grid, in units of the median similarity gap between a query's 1st and k-th neighbour.
KNN_TEMPERATURE_FACTORS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0)
KNN_KS = (5, 10, 20, 40)  # kNN sizes tried on validation when --knn-k is not given


def choose_knn(
    train_feats: np.ndarray, train_targets: np.ndarray, val_feats: np.ndarray,
    score: Callable[[np.ndarray], float], *, task: str, n_classes: int,
    metrics_tried: Sequence[str], ks: Sequence[int] = KNN_KS,
) -> tuple[str, int, float]:
    """(metric, k, temperature) with the best `score(val predictions)` (higher is better).

    train_feats [G, D], val_feats [N, D]: raw encoder features; train_targets [G].
    Predictions are kNN values (regression) or class ids (classification) of the
    val items against the train gallery. Ties keep the earlier candidate.
    """
    ks = sorted({min(int(k), len(train_feats)) for k in ks})
    best: tuple[float, str, int, float] | None = None
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
                s = score(pred)
                if best is None or s > best[0] + 1e-12:
                    best = (s, metric, k, t)
    if best is None:
        raise ValueError("choose_knn needs at least one metric to try")
    return best[1], best[2], best[3]
