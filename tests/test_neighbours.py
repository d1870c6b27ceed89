"""supemb.predict.neighbours: exact kNN search against brute force and toy
geometry, the vote and regression weights by hand, and the per-input
aggregation that serving uses (rows -> inputs, recordings)."""

from __future__ import annotations

import numpy as np
import pytest
from toy_embeddings import brute_l2 as _brute_l2
from toy_embeddings import circle as _circle
from toy_embeddings import clusters as _clusters
from toy_embeddings import scaled_data as _scaled_data

from supemb.predict.neighbours import (
    aggregate_by_group,
    embedding_array,
    group_mean,
    knn_classify,
    knn_regress,
    l2_normalize,
    nearest_neighbours,
    neighbour_vote,
    predict_inputs,
    recording_embeddings,
    rows_by_owner,
    softmax_weights,
)
from supemb.predict.retrieval import accuracy

# -------------------------------------------------------------------- kNN


def test_nearest_neighbours_order_and_ties() -> None:
    gallery = _circle([40, 10, 10, 80, -20])  # items 1 and 2 coincide
    idx, sim = nearest_neighbours(_circle([0]), gallery, k=4)
    assert idx.tolist() == [[1, 2, 4, 0]]  # tie between 1 and 2 -> lower index first
    assert np.all(np.diff(sim[0]) <= 0)
    assert sim[0, 0] == pytest.approx(np.cos(np.deg2rad(10)))
    # k equal to the gallery size sorts everything.
    idx_all, _ = nearest_neighbours(_circle([0]), gallery, k=5)
    assert idx_all.tolist() == [[1, 2, 4, 0, 3]]


def test_nearest_neighbours_scale_invariant_and_checks() -> None:
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(7, 5)), rng.normal(size=(30, 5))
    a, _ = nearest_neighbours(q, g, 6)
    b, _ = nearest_neighbours(q * 10.0, g * rng.uniform(0.1, 5, (30, 1)), 6)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="k = 31"):
        nearest_neighbours(q, g, 31)
    with pytest.raises(ValueError, match="k = 30 but only 29"):
        nearest_neighbours(g, g, 30, exclude_self=True)
    with pytest.raises(ValueError, match="positive integer"):
        nearest_neighbours(q, g, 0)
    with pytest.raises(ValueError, match="dimension"):
        nearest_neighbours(q, g[:, :4], 3)
    with pytest.raises(ValueError, match="exclude_self"):
        nearest_neighbours(q, g, 3, exclude_self=True)


def test_knn_classify_separable_clusters() -> None:
    g_emb, g_lab = _clusters(20, 4, seed=0)
    q_emb, q_lab = _clusters(10, 4, seed=1)
    pred, probs = knn_classify(q_emb, g_emb, g_lab, k=10)
    assert accuracy(pred, q_lab) == 1.0
    assert probs.shape == (40, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(probs >= 0)
    # n_classes widens the probability table; unseen classes get zero.
    _, probs6 = knn_classify(q_emb, g_emb, g_lab, k=10, n_classes=6)
    assert probs6.shape == (40, 6) and np.all(probs6[:, 4:] == 0)
    with pytest.raises(ValueError, match="n_classes"):
        knn_classify(q_emb, g_emb, g_lab, k=10, n_classes=3)
    with pytest.raises(ValueError, match="rows"):
        knn_classify(q_emb, g_emb, g_lab[:-1], k=10)


def test_knn_classify_weights_are_exp_similarity() -> None:
    # Query at 0°: neighbours at 10° (class 1), 20° and 30° (class 0).
    gallery = _circle([10, 20, 30])
    labels = np.array([1, 0, 0])
    t = 0.05
    _, probs = knn_classify(_circle([0]), gallery, labels, k=3, temperature=t)
    w = np.exp(np.cos(np.deg2rad([10, 20, 30])) / t)
    assert probs[0, 1] == pytest.approx(w[0] / w.sum())
    # Small temperature -> 1-NN wins; large -> majority wins.
    pred_cold, _ = knn_classify(_circle([0]), gallery, labels, k=3, temperature=0.001)
    pred_hot, _ = knn_classify(_circle([0]), gallery, labels, k=3, temperature=100.0)
    assert pred_cold.tolist() == [1] and pred_hot.tolist() == [0]


def test_knn_regress_recovers_targets_on_a_manifold() -> None:
    # A 1-D manifold (an arc) whose angle is the target.
    g_y = np.linspace(0.0, 90.0, 181)
    q_y = np.random.default_rng(0).uniform(5.0, 85.0, 50)
    for reduce in ("mean", "median"):
        for weighting in ("softmax", "uniform"):
            pred, spread = knn_regress(
                _circle(q_y), _circle(g_y), g_y, k=4, weighting=weighting, reduce=reduce, temperature=0.01
            )
            np.testing.assert_allclose(pred, q_y, atol=1.0)
            assert np.all(spread < 1.0)


def test_knn_regress_spread_zero_when_neighbours_agree_and_median_is_robust() -> None:
    gallery = _circle([1, 2, 3, 4, 50])
    targets = np.array([10.0, 10.0, 10.0, 10.0, 99.0])
    pred, spread = knn_regress(_circle([0]), gallery, targets, k=4)
    assert pred[0] == pytest.approx(10.0) and spread[0] == pytest.approx(0.0, abs=1e-12)
    # With the outlier among the neighbours: uniform mean is pulled, median is not.
    gallery = _circle([1, 2, 3, 4])
    targets = np.array([10.0, 10.0, 10.0, 50.0])
    mean, spread = knn_regress(_circle([0]), gallery, targets, k=4, weighting="uniform")
    med, _ = knn_regress(_circle([0]), gallery, targets, k=4, weighting="uniform", reduce="median")
    assert mean[0] == pytest.approx(20.0)
    assert spread[0] == pytest.approx(np.sqrt((3 * 10.0**2 + 30.0**2) / 4))
    assert med[0] == pytest.approx(10.0)
    # Uniform median of an even k averages the two middle values, as np.median.
    med2, _ = knn_regress(_circle([0]), gallery, np.array([1.0, 2.0, 4.0, 8.0]), k=4, weighting="uniform", reduce="median")
    assert med2[0] == pytest.approx(3.0)


def test_knn_regress_options_checked() -> None:
    g = _circle([0, 10, 20])
    with pytest.raises(ValueError, match="weighting"):
        knn_regress(g, g, [1.0, 2.0, 3.0], k=2, weighting="idw")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduce"):
        knn_regress(g, g, [1.0, 2.0, 3.0], k=2, reduce="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature"):
        knn_regress(g, g, [1.0, 2.0, 3.0], k=2, temperature=0.0)
    with pytest.raises(ValueError, match="rows"):
        knn_regress(g, g, [1.0, 2.0], k=2)


def test_exclude_self_retrieves_the_duplicate_not_itself() -> None:
    emb = _circle([0, 0, 90, 180])  # items 0 and 1 are the same point
    idx, sim = nearest_neighbours(emb, emb, k=1, exclude_self=True)
    assert idx[:2, 0].tolist() == [1, 0]
    assert sim[0, 0] == pytest.approx(1.0)
    assert np.all(idx[:, 0] != np.arange(4))
    # Without the flag an item finds itself (or its twin) first.
    idx_in, _ = nearest_neighbours(emb, emb, k=1)
    assert idx_in[2, 0] == 2
    # Leave-one-out kNN regression: item 0 predicts from its twin only.
    targets = np.array([5.0, 7.0, 100.0, 200.0])
    pred, _ = knn_regress(emb, emb, targets, k=1, exclude_self=True)
    assert pred[0] == pytest.approx(7.0) and pred[1] == pytest.approx(5.0)


# -------------------------------------------------------- the "l2" metric


@pytest.mark.parametrize("k", [1, 5, 150])
def test_l2_nearest_neighbours_match_brute_force(k: int) -> None:
    q, g = _scaled_data(20)
    idx, sim = nearest_neighbours(q, g, k, metric="l2")
    ref_idx, ref_sim = _brute_l2(q, g, k)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sim, ref_sim, rtol=1e-10, atol=1e-9)
    assert np.all(sim <= 0) and np.all(np.diff(sim, axis=1) <= 0)
    # Not normalised: the cosine neighbours of the same rows are different ones.
    assert not np.array_equal(idx, nearest_neighbours(q, g, k, metric="cosine")[0])  # (at k = G: the order)


def test_l2_exclude_self_and_duplicates() -> None:
    q, _ = _scaled_data(21, n_q=60)
    q[17] = q[3]  # an exact duplicate stays a neighbour (at distance 0), itself does not
    idx, sim = nearest_neighbours(q, q, 4, exclude_self=True, metric="l2")
    ref_idx, ref_sim = _brute_l2(q, q, 4, exclude_self=True)
    # 3 and 17 tie as neighbours of any other row; which comes first depends on
    # the last bits of a BLAS product, so compare with 17 counted as 3.
    same = {17: 3}
    np.testing.assert_array_equal(np.vectorize(lambda i: same.get(i, i))(idx),
                                  np.vectorize(lambda i: same.get(i, i))(ref_idx))
    np.testing.assert_allclose(sim, ref_sim, atol=1e-9)
    assert idx[3, 0] == 17 and idx[17, 0] == 3 and sim[3, 0] == pytest.approx(0.0, abs=1e-7)
    assert all(i not in row for i, row in enumerate(idx))


def test_l2_is_not_scale_invariant_and_scaling_both_scales_distances() -> None:
    q, g = _scaled_data(22)
    _, sim = nearest_neighbours(q, g, 5, metric="l2")
    idx2, sim2 = nearest_neighbours(q * 3.0, g * 3.0, 5, metric="l2")
    np.testing.assert_array_equal(idx2, nearest_neighbours(q, g, 5, metric="l2")[0])
    np.testing.assert_allclose(sim2, 3.0 * sim, rtol=1e-9)


def test_l2_knn_classify_and_regress_match_brute_force() -> None:
    q, g = _scaled_data(23)
    rng = np.random.default_rng(24)
    lab, y = rng.integers(0, 4, len(g)), rng.normal(size=len(g))
    t, k = 0.7, 6
    ref_idx, ref_sim = _brute_l2(q, g, k)
    w = np.exp(ref_sim / t)
    w /= w.sum(axis=1, keepdims=True)
    ref_probs = np.zeros((len(q), 4))
    for i in range(len(q)):
        for j in range(k):
            ref_probs[i, lab[ref_idx[i, j]]] += w[i, j]
    pred, probs = knn_classify(q, g, lab, k, n_classes=4, temperature=t, metric="l2")
    np.testing.assert_allclose(probs, ref_probs, atol=1e-12)
    np.testing.assert_array_equal(pred, ref_probs.argmax(axis=1))
    value, spread = knn_regress(q, g, y, k, temperature=t, metric="l2")
    ref_value = (w * y[ref_idx]).sum(axis=1)
    np.testing.assert_allclose(value, ref_value, atol=1e-12)
    np.testing.assert_allclose(spread, np.sqrt((w * (y[ref_idx] - ref_value[:, None]) ** 2).sum(axis=1)), atol=1e-12)


# ------------------------------------------------------ the embedding


def test_l2_normalize_and_embedding_array() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [-2.0, 0.0]])
    np.testing.assert_allclose(l2_normalize(x), [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]])  # zeros stay zeros
    assert l2_normalize(x).dtype == np.float64
    cos = embedding_array(x, "cosine")
    assert cos.dtype == np.float32
    np.testing.assert_allclose(cos, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]], rtol=1e-6)
    assert np.array_equal(embedding_array(x, "l2"), x.astype(np.float32))  # raw features for l2
    with pytest.raises(ValueError, match="emb_a"):
        l2_normalize(np.full((2, 2), np.nan), "emb_a")
    with pytest.raises(ValueError, match="metric must be"):
        embedding_array(x, "dot")


def test_softmax_weights_and_vote_by_hand() -> None:
    sim = np.array([[0.9, 0.5, 0.1]])
    w = softmax_weights(sim, 0.2)
    e = np.exp(np.array([0.9, 0.5, 0.1]) / 0.2)
    np.testing.assert_allclose(w[0], e / e.sum(), rtol=1e-12)
    probs = neighbour_vote(sim, np.array([[2, 0, 2]]), 4, 0.2)
    np.testing.assert_allclose(probs[0], [e[1] / e.sum(), 0.0, (e[0] + e[2]) / e.sum(), 0.0], rtol=1e-12)
    with pytest.raises(ValueError, match="temperature"):
        softmax_weights(sim, -1.0)


# ------------------------------------------------------ rows -> inputs


def test_group_mean_and_rows_by_owner() -> None:
    owner = np.array([2, 0, 2, 2, 0])
    v = np.array([1.0, 10.0, 2.0, 6.0, 20.0])
    np.testing.assert_allclose(group_mean(v, owner, 4), [15.0, 0.0, 3.0, 0.0])  # inputs 1, 3: no rows
    m = group_mean(np.stack([v, -v], 1), owner, 3)
    assert m.shape == (3, 2)
    np.testing.assert_allclose(m[:, 1], [-15.0, 0.0, -3.0])
    got = rows_by_owner(owner)
    assert [pos for pos, _ in got] == [0, 2]
    assert [rows.tolist() for _, rows in got] == [[1, 4], [0, 2, 3]]


def test_aggregate_by_group() -> None:
    vals = np.array([1.0, 3.0, 10.0, 20.0, 30.0, 100.0, 5.0])
    rec = np.array([4, 4, 1, 1, 1, 1, 4])
    ids, mean = aggregate_by_group(vals, rec)
    assert ids.tolist() == [1, 4]
    np.testing.assert_allclose(mean, [40.0, 3.0])
    _, med = aggregate_by_group(vals, rec, how="median")
    np.testing.assert_allclose(med, [25.0, 3.0])
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    ids, agg = aggregate_by_group(probs, np.array([0, 0, 2]))
    assert ids.tolist() == [0, 2] and agg.shape == (2, 2)
    np.testing.assert_allclose(agg, [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ValueError, match="how"):
        aggregate_by_group(vals, rec, how="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="group ids"):
        aggregate_by_group([1.0, 2.0], [0])


def test_recording_embeddings_cosine_and_l2() -> None:
    rows = np.array([[2.0, 0.0], [0.0, 4.0], [1.0, 1.0], [3.0, 3.0]])
    owner = np.array([0, 0, 2, 2])
    l2 = recording_embeddings(rows, owner, 3, "l2")
    assert l2.dtype == np.float32
    np.testing.assert_allclose(l2, [[1.0, 2.0], [0.0, 0.0], [2.0, 2.0]])  # plain means; no rows: zeros
    cos = recording_embeddings(rows, owner, 3, "cosine")
    np.testing.assert_allclose(cos, [[1 / np.sqrt(5), 2 / np.sqrt(5)], [0.0, 0.0], [np.sqrt(0.5)] * 2], rtol=1e-6)


def test_predict_inputs_regression_pools_windows_by_total_variance() -> None:
    # input 0: two rows (windows) with different neighbours; input 1: one row; input 2: none.
    sim = np.array([[0.9, 0.8], [0.7, 0.1], [0.5, 0.5]])
    targets = np.array([[10.0, 20.0], [30.0, 30.0], [4.0, 8.0]])
    owner = np.array([0, 0, 1])
    out = predict_inputs(sim, targets, owner, 3, "regression", temperature=0.1)
    assert out.probabilities is None
    w = np.exp(np.array([0.9, 0.8]) / 0.1)
    w /= w.sum()
    row0 = w @ [10.0, 20.0]
    spread0 = np.sqrt(w @ (np.array([10.0, 20.0]) - row0) ** 2)
    value0 = (row0 + 30.0) / 2
    var0 = (spread0**2 + (row0 - value0) ** 2 + 0.0 + (30.0 - value0) ** 2) / 2
    np.testing.assert_allclose(out.values, [value0, 6.0, 0.0], rtol=1e-12)
    np.testing.assert_allclose(out.uncertainty, [np.sqrt(var0), 2.0, 0.0], rtol=1e-12)
    # the median of a row's neighbours, and uniform weights
    med = predict_inputs(sim[2:], np.array([[4.0, 8.0]]), [0], 1, "regression", weighting="uniform", reduce="median")
    assert med.values.tolist() == [6.0]


def test_predict_inputs_offset_is_added_per_row_before_pooling() -> None:
    # a residual kNN: each row's kNN of the residuals plus the head's value for that row;
    # the rows' disagreement is measured after the offset, so it enters the uncertainty
    sim = np.array([[0.9, 0.8], [0.7, 0.1]])
    resid = np.array([[1.0, -1.0], [0.0, 0.0]])
    plain = predict_inputs(sim, resid, [0, 0], 1, "regression", temperature=0.1)
    out = predict_inputs(sim, resid, [0, 0], 1, "regression", temperature=0.1, offset=np.array([10.0, 20.0]))
    assert out.values[0] == pytest.approx(plain.values[0] + 15.0)
    w = np.exp(np.array([0.9, 0.8]) / 0.1)
    w /= w.sum()
    row0, row1 = w @ [1.0, -1.0] + 10.0, 20.0
    value = (row0 + row1) / 2
    spread0 = np.sqrt(w @ (np.array([1.0, -1.0]) - (row0 - 10.0)) ** 2)
    assert out.uncertainty[0] == pytest.approx(np.sqrt((spread0**2 + (row0 - value) ** 2 + (row1 - value) ** 2) / 2))
    scalar = predict_inputs(sim, resid, [0, 0], 1, "regression", temperature=0.1, offset=3.0)
    assert scalar.values[0] == pytest.approx(plain.values[0] + 3.0)
    assert scalar.uncertainty[0] == pytest.approx(plain.uncertainty[0])


def test_predict_inputs_classification_averages_the_votes() -> None:
    sim = np.array([[0.9, 0.1], [0.5, 0.5], [1.0, 0.0]])
    labels = np.array([[1, 0], [2, 2], [0, 1]])
    out = predict_inputs(sim, labels, np.array([1, 1, 0]), 2, "classification", n_classes=3, temperature=0.07)
    assert out.values is None
    p0 = neighbour_vote(sim[:2], labels[:2], 3, 0.07).mean(axis=0)
    np.testing.assert_allclose(out.probabilities[1], p0, rtol=1e-12)
    np.testing.assert_allclose(out.probabilities.sum(axis=1), 1.0)
    np.testing.assert_allclose(out.uncertainty, 1.0 - out.probabilities.max(axis=1))
    default = predict_inputs(sim, labels, np.array([1, 1, 0]), 2, "classification", n_classes=3)
    np.testing.assert_allclose(default.probabilities, out.probabilities)  # 0.07 is the default for classes
    with pytest.raises(ValueError, match="task"):
        predict_inputs(sim, labels, np.array([0, 0, 0]), 1, "ranking")
