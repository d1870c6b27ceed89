"""supemb.predict.neighbours, the behaviour that mutation testing (`make mutation`,
docs/mutation.md) found unguarded: what each check rejects and the one-line message
naming the argument, the float64 / int64 contracts, the documented defaults, ties in
the ranking beyond a handful of items, rounding in the L2 distance, the weighted
median against a direct computation, and `predict_inputs` honouring every option."""

from __future__ import annotations

import numpy as np
import pytest
from toy_embeddings import circle as _circle

from supemb.predict.neighbours import (
    aggregate_by_group,
    as_embeddings,
    as_labels,
    as_values,
    check_k,
    check_metric,
    check_temperature,
    knn_classify,
    knn_regress,
    l2_normalize,
    metric_pair,
    nearest_neighbours,
    neighbour_regress,
    neighbour_vote,
    predict_inputs,
    same_length,
    softmax_weights,
)

# ------------------------------------------------------------------ checks

NAN = float("nan")


@pytest.mark.parametrize(("call", "message"), [
    (lambda: as_values(np.zeros((2, 2)), "ages"), r"^ages must have shape \[N\], got \(2, 2\)$"),
    (lambda: as_values(np.zeros((2, 1, 1)), "ages"), r"^ages must have shape \[N\], got \(2, 1, 1\)$"),
    (lambda: as_values([], "ages"), r"^ages is empty$"),
    (lambda: as_values([1.0, NAN], "ages"), r"^ages contains NaN or Inf values$"),
    (lambda: as_labels(np.zeros((2, 2), int), "ids"), r"^ids must have shape \[N\], got \(2, 2\)$"),
    (lambda: as_labels(np.array([], int), "ids"), r"^ids is empty$"),
    (lambda: as_labels(np.array(["a", "b"]), "ids"), r"^ids must hold integer class ids, got dtype <U1$"),
    (lambda: as_labels([0.0, 0.5], "ids"), r"^ids must hold integer class ids, got non-integer values$"),
    (lambda: as_labels([0.0, NAN], "ids"), r"^ids must hold integer class ids, got non-integer values$"),
    (lambda: as_labels([2, -1], "ids"), r"^ids must hold class ids >= 0, got -1$"),
    (lambda: as_embeddings(np.zeros(3), "emb"), r"^emb must have shape \[N, D\], got \(3,\)$"),
    (lambda: as_embeddings(np.zeros((0, 3)), "emb"), r"^emb is empty: shape \(0, 3\)$"),
    (lambda: as_embeddings(np.zeros((3, 0)), "emb"), r"^emb is empty: shape \(3, 0\)$"),
    (lambda: as_embeddings([[1.0, np.inf]], "emb"), r"^emb contains NaN or Inf values$"),
    (lambda: same_length(np.zeros(2), np.zeros(3), "pred", "target"), r"^pred has 2 rows but target has 3$"),
    (lambda: check_metric("dot"), r"^metric must be 'cosine' or 'l2', got 'dot'$"),
    (lambda: check_k(0, 5), r"^k must be a positive integer, got 0$"),
    (lambda: check_k(True, 5), r"^k must be a positive integer, got True$"),
    (lambda: check_k(2.5, 5), r"^k must be a positive integer, got 2.5$"),
    (lambda: check_k(6, 5), r"^k = 6 but only 5 gallery items can be neighbours$"),
    (lambda: check_temperature(0.0), r"^temperature must be a positive number, got 0.0$"),
    (lambda: check_temperature(-1), r"^temperature must be a positive number, got -1$"),
    (lambda: check_temperature(np.inf), r"^temperature must be a positive number, got inf$"),
    (lambda: check_temperature(NAN), r"^temperature must be a positive number, got nan$"),
    (lambda: l2_normalize([[NAN, 1.0]]), r"^emb contains NaN or Inf values$"),  # the default name
])
def test_each_check_rejects_with_a_message_naming_the_argument(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_checks_convert_what_they_accept() -> None:
    v = as_values([1, 2], "v")
    assert v.dtype == np.float64 and v.tolist() == [1.0, 2.0]
    col = as_values(np.array([[3.0], [4.0]]), "v")  # an [N, 1] column
    assert col.shape == (2,) and col.tolist() == [3.0, 4.0]
    for ids in ([True, False, True], np.array([1, 0, 1], np.uint8), [1.0, 0.0, 1.0], np.array([1, 0, 1], np.int32)):
        got = as_labels(ids, "ids")
        assert got.dtype == np.int64 and got.tolist() == [1, 0, 1], ids
    e = as_embeddings([[1, 2], [3, 4]], "e")
    assert e.dtype == np.float64 and e.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert as_embeddings(np.float32([[0.1], [0.2]]), "e").dtype == np.float64  # D = 1 is fine, and float64
    assert as_embeddings(np.float32([[0.1], [0.2]]), "e").shape == (2, 1)
    k = check_k(np.int64(3), 5)
    assert k == 3 and type(k) is int
    assert check_k(5, 5) == 5
    assert check_temperature(np.float32(0.5)) == 0.5 and type(check_temperature(1)) is float
    assert check_metric("l2") == "l2" and check_metric("cosine") == "cosine"


def test_knn_functions_name_the_input_that_is_wrong() -> None:
    g = _circle([0, 10, 20])
    with pytest.raises(ValueError, match=r"^gallery_labels has 2 rows but gallery_emb has 3$"):
        knn_classify(g, g, [0, 1], k=1)
    with pytest.raises(ValueError, match=r"^gallery_labels must have shape \[N\]"):
        knn_classify(g, g, [[0, 1, 1]], k=1)
    with pytest.raises(ValueError, match=r"^gallery_emb must have shape \[N, D\]"):
        knn_classify(g, g[0], [0, 1, 1], k=1)
    with pytest.raises(ValueError, match=r"^n_classes = 1 but the labels go up to 1$"):
        knn_classify(g, g, [0, 1, 1], k=1, n_classes=1)
    with pytest.raises(ValueError, match=r"^gallery_targets has 2 rows but gallery_emb has 3$"):
        knn_regress(g, g, [1.0, 2.0], k=1)
    with pytest.raises(ValueError, match=r"^gallery_targets must have shape \[N\]"):
        knn_regress(g, g, np.ones((3, 2)), k=1)
    with pytest.raises(ValueError, match=r"^gallery_emb must have shape \[N, D\]"):
        knn_regress(g, g[0], [1.0, 2.0, 3.0], k=1)
    with pytest.raises(ValueError, match=r"^query_emb must have shape \[N, D\]"):
        metric_pair(g[0], g)
    with pytest.raises(ValueError, match=r"^gallery_emb contains NaN"):
        metric_pair(g, g + NAN)
    with pytest.raises(ValueError, match=r"^query_emb has dimension 2 but gallery_emb has 3$"):
        metric_pair(g, np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"exclude_self needs the query set to be the gallery, got 1 queries and 3"):
        metric_pair(g[:1], g, exclude_self=True)


# ---------------------------------------------------------- the defaults


def test_documented_defaults() -> None:
    rng = np.random.default_rng(3)
    q, g = rng.normal(size=(4, 5)), rng.normal(size=(9, 5))
    y = rng.normal(size=9) * 10
    labels = rng.integers(0, 3, size=9)
    # metric_pair: cosine (unit rows) unless told otherwise
    qq, gg = metric_pair(q, g)
    np.testing.assert_allclose(np.linalg.norm(qq, axis=1), 1.0)
    np.testing.assert_array_equal(qq, metric_pair(q, g, metric="cosine")[0])
    # knn_classify: temperature 0.07; knn_regress: softmax weights, temperature 0.1, the mean
    _, probs = knn_classify(q, g, labels, k=5)
    np.testing.assert_allclose(probs, knn_classify(q, g, labels, k=5, temperature=0.07)[1], rtol=1e-12)
    assert not np.allclose(probs, knn_classify(q, g, labels, k=5, temperature=1.07)[1])
    pred, spread = knn_regress(q, g, y, k=5)
    ref = knn_regress(q, g, y, k=5, weighting="softmax", temperature=0.1, reduce="mean")
    np.testing.assert_allclose(pred, ref[0], rtol=1e-12)
    np.testing.assert_allclose(spread, ref[1], rtol=1e-12)
    assert not np.allclose(pred, knn_regress(q, g, y, k=5, temperature=1.1)[0])
    # neighbour_regress and neighbour_vote on found neighbours: the same defaults
    sim = np.array([[0.9, 0.6, 0.2]])
    yk = np.array([[1.0, 2.0, 10.0]])
    w = np.exp(sim[0] / 0.1) / np.exp(sim[0] / 0.1).sum()
    got, _ = neighbour_regress(sim, yk)
    assert got[0] == pytest.approx(w @ yk[0], rel=1e-12)
    wv = np.exp(sim[0] / 0.07) / np.exp(sim[0] / 0.07).sum()
    np.testing.assert_allclose(neighbour_vote(sim, np.array([[0, 1, 1]]), 2)[0], [wv[0], wv[1] + wv[2]], rtol=1e-12)


def test_float64_and_int64_results() -> None:
    sim32 = np.float32([[0.9, 0.3], [0.5, 0.1]])
    w = softmax_weights(sim32, 0.1)
    assert w.dtype == np.float64
    np.testing.assert_allclose(w, softmax_weights(sim32.astype(np.float64), 0.1), rtol=1e-15)
    g = _circle([0, 30, 60, 90])
    pred, probs = knn_classify(g, g, [0, 0, 1, 1], k=2)
    assert pred.dtype == np.int64 and probs.dtype == np.float64
    assert pred.tolist() == [0, 0, 1, 1]


# ------------------------------------------------------------- ranking


def test_top_two_are_two_different_neighbours() -> None:
    idx, sim = nearest_neighbours(_circle([0, 90]), _circle([80, 5, 40, 100, -20]), k=2)
    assert idx.tolist() == [[1, 4], [0, 3]]
    np.testing.assert_allclose(sim, np.cos(np.deg2rad([[5, 20], [10, 10]])))


@pytest.mark.parametrize("k", [20, 24])  # fewer than the gallery (partial selection) and all of it
def test_many_ties_are_broken_by_gallery_index(k: int) -> None:
    """More than 16 tied items: numpy's default sort is not stable there, the ranking must be."""
    angles = np.tile([60.0, 0.0, 30.0, 0.0, 60.0, 30.0], 4)  # 24 items, three similarities, 8 ties each
    gallery = _circle(angles)
    idx, sim = nearest_neighbours(_circle([0.0, 60.0]), gallery, k=k)
    for row, q in enumerate([0.0, 60.0]):
        expected = sorted(range(len(angles)), key=lambda i: (abs(angles[i] - q), i))[:k]
        assert idx[row].tolist() == expected
        np.testing.assert_allclose(sim[row], np.cos(np.deg2rad(np.abs(angles[expected] - q))), atol=1e-12)


def test_l2_distance_of_an_item_to_itself_is_zero_not_nan() -> None:
    """|q|^2 + |g|^2 - 2<q, g> rounds below zero for some q = g: clamped before the square root."""
    x = np.random.default_rng(0).normal(size=(40, 33)) * 3
    sq = np.einsum("nd,nd->n", x, x)
    d_self = (x @ x.T * -2.0 + sq[:, None] + sq[None, :]).diagonal()
    assert (d_self < 0).any()  # the data does round below zero (for 40 rows of 33 dimensions, reliably)
    idx, sim = nearest_neighbours(x, x, k=5, metric="l2")
    assert np.isfinite(sim).all()
    assert idx[:, 0].tolist() == list(range(40))
    np.testing.assert_allclose(sim[:, 0], 0.0, atol=1e-6)
    ref = -np.linalg.norm(x[:, None, :] - x[None, idx[0], :], axis=2)[0]
    np.testing.assert_allclose(sim[0], ref, rtol=1e-9, atol=1e-6)


# ------------------------------------------------------ weighted median


def _median_by_hand(values: np.ndarray, weights: np.ndarray) -> float:
    """The smallest value whose cumulative weight (values ascending) reaches half the total."""
    pairs = sorted(zip(values.tolist(), weights.tolist()))
    total, acc = sum(weights.tolist()), 0.0
    for value, weight in pairs:
        acc += weight
        if acc >= total / 2:
            return value
    raise AssertionError("unreachable")


def test_weighted_median_against_a_direct_computation() -> None:
    rng = np.random.default_rng(7)
    sim = -np.sort(-rng.uniform(-1, 1, size=(60, 7)), axis=1)
    yk = rng.normal(size=(60, 7)) * 10
    for t in (0.05, 0.5, 5.0):
        med, spread = neighbour_regress(sim, yk, temperature=t, reduce="median")
        w = softmax_weights(sim, t)
        expected = [_median_by_hand(yk[r], w[r]) for r in range(len(yk))]
        np.testing.assert_array_equal(med, expected)
        # the spread is about the weighted mean, whichever value is reported
        mean = np.sum(w * yk, axis=1)
        np.testing.assert_allclose(spread, np.sqrt(np.sum(w * (yk - mean[:, None]) ** 2, axis=1)), rtol=1e-12)
    # rows whose medians sit at different ranks: a low temperature puts it on the nearest neighbour
    med, _ = neighbour_regress(np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5]]), np.array([[9.0, 1.0, 2.0], [9.0, 1.0, 2.0]]),
                               temperature=0.01, reduce="median")
    assert med.tolist() == [9.0, 2.0]


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])
def test_uniform_weighted_median_is_np_median(k: int) -> None:
    yk = np.random.default_rng(k).integers(0, 5, size=(30, k)).astype(np.float64)  # ties included
    med, _ = neighbour_regress(np.zeros((30, k)), yk, weighting="uniform", reduce="median")
    np.testing.assert_allclose(med, np.median(yk, axis=1), rtol=1e-12)


def test_median_per_group_is_taken_per_column() -> None:
    vals = np.array([[1.0, 10.0], [2.0, 30.0], [3.0, 20.0], [7.0, 0.0]])
    ids, med = aggregate_by_group(vals, np.array([5, 5, 5, 2]), how="median")
    assert ids.tolist() == [2, 5]
    assert med.dtype == np.float64 and med.tolist() == [[7.0, 0.0], [2.0, 20.0]]


# ------------------------------------------------------- predict_inputs


def test_predict_inputs_honours_every_regression_option() -> None:
    rng = np.random.default_rng(11)
    sim = -np.sort(-rng.uniform(0, 1, size=(6, 5)), axis=1)
    yk = rng.normal(size=(6, 5)) * 10
    owner = np.arange(6)  # one row per input: the input's value is the row's
    seen = {}
    for weighting in ("softmax", "uniform"):
        for reduce in ("mean", "median"):
            for t in (None, 0.1, 1.0):
                out = predict_inputs(sim, yk, owner, 6, "regression", temperature=t, weighting=weighting, reduce=reduce)
                pred, spread = neighbour_regress(sim, yk, weighting=weighting, temperature=0.1 if t is None else t,
                                                 reduce=reduce)
                np.testing.assert_allclose(out.values, pred, rtol=1e-12)
                np.testing.assert_allclose(out.uncertainty, spread, rtol=1e-12)
                seen[weighting, reduce, t] = out.values
    # each option changes the answer here, so one that is ignored cannot pass the comparisons above
    assert not np.allclose(seen["softmax", "mean", 0.1], seen["softmax", "mean", 1.0])
    assert not np.allclose(seen["softmax", "mean", 0.1], seen["uniform", "mean", 0.1])
    assert not np.allclose(seen["softmax", "mean", 0.1], seen["softmax", "median", 0.1])
    assert not np.allclose(seen["uniform", "mean", 0.1], seen["uniform", "median", 0.1])


def test_predict_inputs_honours_the_classification_temperature() -> None:
    sim = np.array([[0.9, 0.6, 0.5]])
    labels = np.array([[0, 1, 1]])
    cold = predict_inputs(sim, labels, [0], 1, "classification", n_classes=2)
    warm = predict_inputs(sim, labels, [0], 1, "classification", n_classes=2, temperature=1.0)
    np.testing.assert_allclose(warm.probabilities, neighbour_vote(sim, labels, 2, 1.0), rtol=1e-12)
    np.testing.assert_allclose(cold.probabilities, neighbour_vote(sim, labels, 2, 0.07), rtol=1e-12)
    assert warm.probabilities[0, 1] > 0.5 > cold.probabilities[0, 1]
    assert warm.uncertainty[0] == pytest.approx(1.0 - warm.probabilities[0].max())


def test_blocks_cover_every_query_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a few query rows per block, every row is still searched (against a brute-force ranking)."""
    from supemb.predict import neighbours

    rng = np.random.default_rng(12)
    q, g = rng.normal(size=(37, 4)), rng.normal(size=(20, 4))
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    want = np.argsort(-(qn @ gn.T), axis=1, kind="stable")[:, :3]
    monkeypatch.setattr(neighbours, "_BLOCK_ELEMENTS", 50)  # 2 query rows per block
    np.full((37, 3), -1, dtype=np.int64)  # (dirty memory for the result, should a block be skipped)
    idx, sim = nearest_neighbours(q, g, k=3)
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(sim, np.take_along_axis(qn @ gn.T, want, axis=1), rtol=1e-12)
