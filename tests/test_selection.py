"""supemb.train.selection: the served geometry and kNN weighting chosen on validation."""

from __future__ import annotations

import numpy as np

from supemb.predict.neighbours import embedding_array, knn_regress, nearest_neighbours
from supemb.train.selection import KNN_KS, KNN_TEMPERATURE_FACTORS, choose_knn


def _data(label_in: str, n: int, seed: int):
    """Targets carried by the feature norm ("norm": only L2 sees them) or by the direction
    ("direction", with a large random norm as nuisance: only cosine ignores it)."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(0, 10, n)
    if label_in == "norm":
        x = (1 + y)[:, None] * np.array([1.0, 0.0, 0.0]) + rng.normal(0, 0.05, (n, 3))
    else:
        angle = y / 10 * np.pi / 2
        x = np.stack([np.cos(angle), np.sin(angle), np.zeros(n)], 1) * rng.uniform(1, 30, n)[:, None]
    return x.astype(np.float32), y


def _mae_score(yv):
    return lambda pred: -float(np.abs(pred - yv).mean())


def test_the_geometry_that_carries_the_target_is_chosen():
    for label_in, want in (("norm", "l2"), ("direction", "cosine")):
        x, y = _data(label_in, 300, 0)
        xv, yv = _data(label_in, 100, 1)
        metric, k, t = choose_knn(x, y, xv, _mae_score(yv), task="regression", n_classes=0,
                                  metrics_tried=("cosine", "l2"))
        assert metric == want, label_in
        assert k in KNN_KS and t > 0


def test_the_choice_is_the_best_of_the_grid():
    x, y = _data("norm", 200, 2)
    xv, yv = _data("norm", 80, 3)
    metric, k, t = choose_knn(x, y, xv, _mae_score(yv), task="regression", n_classes=0, metrics_tried=("l2",))
    chosen = -_mae_score(yv)(knn_regress(xv, x, y, k, temperature=t, metric="l2")[0])
    # no (k, factor) of the grid does better on validation
    g, q = embedding_array(x, "l2"), embedding_array(xv, "l2")
    for kk in KNN_KS:
        _, sim = nearest_neighbours(q, g, kk, metric="l2")
        spread = float(np.median(sim[:, 0] - sim[:, -1]))
        for f in KNN_TEMPERATURE_FACTORS:
            pred = knn_regress(xv, x, y, kk, temperature=float(f"{spread * f:.3g}"), metric="l2")[0]
            assert np.abs(pred - yv).mean() >= chosen - 1e-9


def test_classification_and_cosine_embedding():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 150)
    x = np.eye(3)[labels] * rng.uniform(1, 50, (150, 1)) + rng.normal(0, 0.05, (150, 3))
    xv_labels = rng.integers(0, 3, 60)
    xv = np.eye(3)[xv_labels] * rng.uniform(1, 50, (60, 1)) + rng.normal(0, 0.05, (60, 3))
    metric, _, _ = choose_knn(x, labels, xv, lambda pred: float((pred == xv_labels).mean()),
                              task="classification", n_classes=3, metrics_tried=("cosine", "l2"))
    assert metric == "cosine"
    e = embedding_array(x, "cosine")
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-6)
    assert np.array_equal(embedding_array(x, "l2"), x.astype(np.float32))
