"""supemb.train.selection: the served geometry and kNN weighting chosen on validation."""

from __future__ import annotations

import numpy as np
import pytest

from supemb.predict.neighbours import embedding_array, knn_regress, nearest_neighbours
from supemb.train.linear_head import Targets
from supemb.train.selection import KNN_KS, KNN_TEMPERATURE_FACTORS, choose_knn, choose_residual, within_one_se


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
    return lambda pred: -np.abs(pred - yv)


def test_the_geometry_that_carries_the_target_is_chosen():
    for label_in, want in (("norm", "l2"), ("direction", "cosine")):
        x, y = _data(label_in, 300, 0)
        xv, yv = _data(label_in, 100, 1)
        metric, k, t = choose_knn(x, y, xv, _mae_score(yv), task="regression", n_classes=0,
                                  metrics_tried=("cosine", "l2"))
        assert metric == want, label_in
        assert k in KNN_KS and t > 0


def _grid(x, y, xv, yv):
    """{(k, temperature): per-item validation scores} of the whole grid, metric l2."""
    g, q = embedding_array(x, "l2"), embedding_array(xv, "l2")
    out = {}
    for kk in KNN_KS:
        _, sim = nearest_neighbours(q, g, kk, metric="l2")
        spread = float(np.median(sim[:, 0] - sim[:, -1]))
        for f in KNN_TEMPERATURE_FACTORS:
            t = float(f"{spread * f:.3g}")
            out[kk, t] = -np.abs(knn_regress(xv, x, y, kk, temperature=t, metric="l2")[0] - yv)
    return out


def test_k_is_the_best_of_the_grid_and_the_temperature_the_broadest_within_one_se():
    x, y = _data("norm", 200, 2)
    xv, yv = _data("norm", 80, 3)
    metric, k, t = choose_knn(x, y, xv, _mae_score(yv), task="regression", n_classes=0, metrics_tried=("l2",))
    grid = _grid(x, y, xv, yv)
    best = max(grid, key=lambda c: grid[c].mean())
    assert k == best[0]  # no k of the grid does better on validation
    assert t >= best[1] and within_one_se(grid[best], grid[k, t])
    # every broader temperature at that k is more than one standard error worse
    assert all(not within_one_se(grid[best], grid[k, tt]) for kk, tt in grid if kk == k and tt > t)


def test_one_standard_error_is_that_of_the_paired_differences():
    best = np.zeros(100)
    assert within_one_se(best, best)  # the best itself
    one_worse = best.copy()
    one_worse[0] = -1.0  # mean difference 0.01, standard error 0.01: within
    assert within_one_se(best, one_worse)
    two_worse = one_worse.copy()
    two_worse[1] = -1.0  # mean 0.02 > standard error 0.0141
    assert not within_one_se(best, two_worse)
    assert not within_one_se(best, best - 0.001)  # a constant loss has no spread: never within
    assert within_one_se(np.zeros(1), np.zeros(1)) and not within_one_se(np.zeros(1), -np.ones(1))
    assert within_one_se(np.zeros(0), np.zeros(0))


def test_a_temperature_that_only_names_the_first_neighbour_is_not_served():
    """Classes far apart: every temperature votes the same on validation, so the broadest
    is served and the probabilities are not all 0/1 (a 1-NN vote's would be)."""
    rng = np.random.default_rng(5)
    centres = rng.normal(0, 10, (3, 4))
    labels, vlabels = rng.integers(0, 3, 150), rng.integers(0, 3, 60)
    x, xv = centres[labels] + rng.normal(0, 1, (150, 4)), centres[vlabels] + rng.normal(0, 1, (60, 4))
    metric, k, t = choose_knn(x, labels, xv, lambda pred: (pred == vlabels).astype(float),
                              task="classification", n_classes=3, metrics_tried=("l2",), ks=[10])
    _, sim = nearest_neighbours(embedding_array(xv, "l2"), embedding_array(x, "l2"), 10, metric="l2")
    assert t == float(f"{float(np.median(sim[:, 0] - sim[:, -1])) * KNN_TEMPERATURE_FACTORS[-1]:.3g}")


def test_targets_item_scores_average_to_the_reported_metrics():
    """The per-item scores behind every choice made on validation average to the figures
    metrics.jsonl reports: accuracy, or minus the MAE (per recording for EEG)."""
    rng = np.random.default_rng(6)
    pred, truth, groups = rng.normal(size=40), rng.normal(size=40), np.repeat(np.arange(10), 4)
    for per_recording, n, key in ((False, 40, "p_mae"), (True, 10, "rec_p_mae")):
        tg = Targets("regression", 0, per_recording=per_recording)
        items = tg.item_scores(pred, truth, groups)
        assert len(items) == n and np.all(items <= 0)
        assert np.isclose(-items.mean(), tg.metrics(pred, truth, groups, "p")[key])
        assert tg.score(pred, truth, groups) == items.mean()
    tc = Targets("classification", 3)
    cls, cls_true = rng.integers(0, 3, 40), rng.integers(0, 3, 40)
    items = tc.item_scores(cls, cls_true, groups)
    assert set(np.unique(items)) == {0.0, 1.0}
    assert np.isclose(items.mean(), tc.metrics(cls, cls_true, groups, "p")["p_acc"])


def test_classification_and_cosine_embedding():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 150)
    x = np.eye(3)[labels] * rng.uniform(1, 50, (150, 1)) + rng.normal(0, 0.05, (150, 3))
    xv_labels = rng.integers(0, 3, 60)
    xv = np.eye(3)[xv_labels] * rng.uniform(1, 50, (60, 1)) + rng.normal(0, 0.05, (60, 3))
    metric, _, _ = choose_knn(x, labels, xv, lambda pred: (pred == xv_labels).astype(float),
                              task="classification", n_classes=3, metrics_tried=("cosine", "l2"))
    assert metric == "cosine"
    e = embedding_array(x, "cosine")
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-6)
    assert np.array_equal(embedding_array(x, "l2"), x.astype(np.float32))


def _trend(n: int, seed: int, wiggle: float):
    """Values = a linear trend along x0 (which kNN flattens at the ends) + `wiggle` x a local bump in x1."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, 3))
    y = 20 * x[:, 0] + wiggle * np.sin(6 * x[:, 1]) + rng.normal(0, 0.1, n)
    return x.astype(np.float32), y


def test_residual_knn_is_chosen_where_a_linear_trend_carries_the_values():
    x, y = _trend(300, 0, wiggle=3.0)
    xv, yv = _trend(150, 1, wiggle=3.0)
    metric, k, t = choose_knn(x, y, xv, _mae_score(yv), task="regression", n_classes=0, metrics_tried=("l2",))
    r = choose_residual(x, y, xv, _mae_score(yv), metric=metric, k=k, temperature=t)
    assert r is not None and r["k"] in KNN_KS and r["temperature"] > 0 and r["alpha"] > 0
    w, b = np.asarray(r["weight"]), r["bias"]
    assert w.shape == (3,) and w[0] == pytest.approx(20, rel=0.1) and abs(b) < 1
    # what it serves beats plain kNN on fresh data, and beats the head alone (the bump is not linear)
    xt, yt = _trend(300, 2, wiggle=3.0)
    plain, _ = knn_regress(xt, x, y, k, temperature=t, metric=metric)
    rp, _ = knn_regress(xt, x, y - (x @ w + b), r["k"], temperature=r["temperature"], metric=metric)
    served = rp + xt @ w + b
    assert np.abs(served - yt).mean() < 0.7 * np.abs(plain - yt).mean()
    assert np.abs(served - yt).mean() < 0.9 * np.abs(xt @ w + b - yt).mean()


def test_plain_knn_is_kept_where_no_linear_trend_helps():
    # values that depend on the direction only through a bump (no linear part): the head is ~flat
    rng = np.random.default_rng(3)

    def data(n):
        x = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
        return x, 5 * np.cos(3 * np.linalg.norm(x, axis=1))

    x, y = data(400)
    xv, yv = data(200)
    metric, k, t = choose_knn(x, y, xv, _mae_score(yv), task="regression", n_classes=0, metrics_tried=("l2",))
    assert choose_residual(x, y, xv, _mae_score(yv), metric=metric, k=k, temperature=t) is None
