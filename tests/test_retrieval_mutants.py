"""supemb.predict.retrieval, the behaviour that mutation testing (`make mutation`,
docs/mutation.md) found unguarded: the message naming the wrong input, R² near its
special case, ranks, the pair sampler at its boundaries and over its whole range,
ordinality's edge cases, and every option and default of `embedding_report`
(which must also stay silent: it runs every epoch)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import rankdata
from toy_embeddings import circle as _circle
from toy_embeddings import clusters as _clusters

from supemb.predict.neighbours import knn_classify, knn_regress
from supemb.predict.retrieval import (
    _average_ranks,
    accuracy,
    balanced_accuracy,
    embedding_report,
    map_at_r,
    ordinality,
    pair_indices,
    precision_at_1,
    regression_metrics,
)

NAN = float("nan")
E3 = _circle([0, 10, 20])  # three embeddings
E2 = _circle([0, 10])


def _report(task: str, **kw):
    """embedding_report on three train and three val items, with some arguments replaced."""
    y = [1.0, 2.0, 3.0] if task == "regression" else [0, 1, 1]
    args = {"train_emb": E3, "train_targets": y, "val_emb": E3, "val_targets": y, "task": task, "k": 2, **kw}
    return embedding_report(**args)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: regression_metrics([[1.0, 2.0]], [1.0]), r"^pred must have shape \[N\]"),
    (lambda: regression_metrics([1.0], [NAN]), r"^target contains NaN or Inf values$"),
    (lambda: regression_metrics([1.0, 2.0], [1.0]), r"^pred has 2 rows but target has 1$"),
    (lambda: accuracy([0.5], [1]), r"^pred must hold integer class ids"),
    (lambda: accuracy([1], [-1]), r"^target must hold class ids >= 0, got -1$"),
    (lambda: accuracy([1, 0], [1]), r"^pred has 2 rows but target has 1$"),
    (lambda: balanced_accuracy([0.5], [1]), r"^pred must hold integer class ids"),
    (lambda: balanced_accuracy([1], [-1]), r"^target must hold class ids >= 0, got -1$"),
    (lambda: balanced_accuracy([1, 0], [1]), r"^pred has 2 rows but target has 1$"),
    (lambda: map_at_r(E3, [[0, 1, 1]]), r"^query_labels must have shape \[N\]"),
    (lambda: map_at_r(E3, [0, 1]), r"^query_labels has 2 rows but query_emb has 3$"),
    (lambda: map_at_r(E3, [0, 1, 1], E3, [0.5, 1, 1]), r"^gallery_labels must hold integer class ids"),
    (lambda: map_at_r(E3, [0, 1, 1], E3, [0, 1]), r"^gallery_labels has 2 rows but gallery_emb has 3$"),
    (lambda: precision_at_1(E3, [0, 1, 1], E3), r"^give both gallery_emb and gallery_labels, or neither$"),
    (lambda: ordinality([1.0, 2.0], [1.0, 2.0]), r"^emb must have shape \[N, D\]"),
    (lambda: ordinality(E3, np.zeros((3, 1, 1))), r"^target must have shape \[N\] or \[N, T\], got \(3, 1, 1\)$"),
    (lambda: ordinality(E3, [1.0, NAN, 2.0]), r"^target contains NaN or Inf values$"),
    (lambda: ordinality(E3, [1.0, 2.0]), r"^target has 2 rows but emb has 3$"),
    (lambda: ordinality(E3[:1], [1.0]), r"^ordinality needs at least 2 items, got 1$"),
    (lambda: ordinality(E3, [1.0, 2.0, 3.0], max_pairs=1), r"^max_pairs must be at least 2, got 1$"),
    (lambda: pair_indices(5, 0, 0), r"^max_pairs must be at least 1, got 0$"),
    (lambda: embedding_report(E3, [1.0, 2.0, 3.0], E3, [1.0, 2.0, 3.0], "ranking"),  # type: ignore[arg-type]
     r"^task must be 'regression' or 'classification', got 'ranking'$"),
    (lambda: _report("regression", metric="dot"), r"^metric must be"),
    (lambda: _report("regression", train_emb=E3[0]), r"^train_emb must have shape \[N, D\]"),
    (lambda: _report("regression", val_emb=E3[0]), r"^val_emb must have shape \[N, D\]"),
    (lambda: _report("regression", val_groups=[0, 1]), r"^val_groups has 2 rows but val_emb has 3$"),
    (lambda: _report("regression", train_targets=[1.0, NAN, 2.0]), r"^train_targets contains NaN"),
    (lambda: _report("regression", val_targets=[1.0, NAN, 2.0]), r"^val_targets contains NaN"),
    (lambda: _report("regression", val_targets=[1.0, 2.0]), r"^val_targets has 2 rows but val_emb has 3$"),
    (lambda: _report("classification", train_targets=[0, 0.5, 1]), r"^train_targets must hold integer class ids"),
    (lambda: _report("classification", val_targets=[0, 0.5, 1]), r"^val_targets must hold integer class ids"),
    (lambda: _report("classification", val_targets=[0, 1]), r"^val_targets has 2 rows but val_emb has 3$"),
    (lambda: _report("classification", train_targets=[0, 1]), r"^train_targets has 2 rows but train_emb has 3$"),
    (lambda: _report("classification", val_groups=[7, 7, 8], val_targets=[0, 1, 1]),
     r"^val_groups: windows of the same recording have different targets$"),
])
def test_each_check_names_the_wrong_input(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# -------------------------------------------------------------- metrics


def test_r2_with_a_small_spread_of_targets() -> None:
    """SS_tot in (0, 1]: still the ordinary R², not the constant-target special case."""
    m = regression_metrics([0.1, 0.4], [0.0, 0.5])
    assert m["r2"] == pytest.approx(1 - (0.01 + 0.01) / 0.125)
    assert m["mae"] == pytest.approx(0.1) and m["rmse"] == pytest.approx(0.1)


def test_average_ranks_are_scipys() -> None:
    x = np.array([3.0, 1.0, 3.0, 2.0, 3.0, 0.5, 1.0])
    np.testing.assert_array_equal(_average_ranks(x), rankdata(x))
    np.testing.assert_array_equal(_average_ranks(np.arange(4.0)), [1.0, 2.0, 3.0, 4.0])


def test_p_at_1_is_nan_when_no_query_has_a_relevant_item() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and quietly
        assert np.isnan(precision_at_1(E2, [0, 1], E3, [2, 2, 3]))
        assert np.isnan(map_at_r(E2, [0, 1], E3, [2, 2, 3]))
        assert np.isnan(map_at_r(E3, [0, 1, 2]))  # leave-one-out, every class a singleton


# ----------------------------------------------------------- pair sampler


def test_pair_indices_takes_all_pairs_up_to_max_pairs() -> None:
    i, j = pair_indices(4, 6, seed=0)  # exactly 6 pairs: all of them, once
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    for max_pairs in (1, 5):  # fewer: that many random pairs
        i, j = pair_indices(4, max_pairs, seed=0)
        assert len(i) == len(j) == max_pairs


def test_pair_indices_draws_over_the_whole_range_and_never_i_equals_j() -> None:
    n = 60  # 1770 pairs, 1500 drawn
    i, j = pair_indices(n, 1500, seed=3)
    assert len(i) == len(j) == 1500
    assert ((0 <= i) & (i < n) & (0 <= j) & (j < n)).all()
    assert (i != j).all()
    assert set(i.tolist()) == set(j.tolist()) == set(range(n))  # every item, first and last included, both ways
    again = pair_indices(n, 1500, seed=3)
    np.testing.assert_array_equal(again[0], i)  # seeded
    np.testing.assert_array_equal(again[1], j)
    assert not np.array_equal(pair_indices(n, 1500, seed=4)[0], i)


# ------------------------------------------------------------- ordinality


def test_ordinality_on_two_items_and_two_pairs() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(ordinality(E2, [1.0, 2.0]))  # one pair: no ranking to correlate
        assert ordinality(E3, [1.0, 2.0, 3.0], max_pairs=2, seed=2) == 1.0  # two sampled pairs are allowed


def test_ordinality_when_a_distance_spread_is_exactly_one() -> None:
    # cosine distances 1, 0, 1 and target distances 1, 2, 1 (both spreads exactly 1): perfectly ordered
    emb = _circle([0, 90, 0])
    assert ordinality(emb, [0.0, 1.0, 0.0]) == pytest.approx(1.0)
    assert ordinality(_circle([0, 10, 20]), [0.0, 1.0, 2.0]) == pytest.approx(1.0)


def test_ordinality_is_nan_and_silent_when_one_distance_is_constant() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(ordinality(_circle([0, 10, 20, 30]), [5.0, 5.0, 5.0, 5.0]))  # constant targets
        assert np.isnan(ordinality(np.ones((4, 3)), [1.0, 2.0, 3.0, 4.0]))  # one point


def test_ordinality_with_unsigned_integer_targets() -> None:
    """Target differences are taken in float: uint8 ages must not wrap around (1 - 2 = 255)."""
    emb = _circle([0, 10, 20, 40, 80])
    y = np.array([1, 2, 3, 5, 9])
    expected = ordinality(emb, y.astype(np.float64))
    assert ordinality(emb, y.astype(np.uint8)) == pytest.approx(expected)
    assert expected > 0.99


# ------------------------------------------------------ embedding_report


def test_embedding_report_defaults() -> None:
    rng = np.random.default_rng(5)
    g, v = rng.normal(size=(60, 6)), rng.normal(size=(40, 6))
    yg, yv = rng.normal(size=60) * 5, rng.normal(size=40) * 5
    cg, cv = rng.integers(0, 4, 60), rng.integers(0, 4, 40)
    for task, tg, tv, t_default, t_other in (("regression", yg, yv, 0.1, 1.1), ("classification", cg, cv, 0.07, 1.07)):
        default = embedding_report(g, tg, v, tv, task)
        assert default == embedding_report(g, tg, v, tv, task, k=20, temperature=t_default, max_pairs=200_000,
                                           seed=0, metric="cosine")
        assert default != embedding_report(g, tg, v, tv, task, temperature=t_other)
        # k is 20 unless told (a warm vote, where the 21st neighbour counts)
        warm = embedding_report(g, tg, v, tv, task, temperature=1.0)
        assert warm == embedding_report(g, tg, v, tv, task, temperature=1.0, k=20)
        assert warm != embedding_report(g, tg, v, tv, task, temperature=1.0, k=21)


def test_embedding_report_ordinality_uses_max_pairs_and_seed() -> None:
    rng = np.random.default_rng(6)
    g, v = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
    y = v[:, 0] + 0.5 * rng.normal(size=30)
    rep = embedding_report(g, rng.normal(size=30), v, y, "regression", k=3, max_pairs=40)
    assert rep["ordinality"] == pytest.approx(ordinality(v, y, max_pairs=40, seed=0))
    assert rep["ordinality"] != pytest.approx(ordinality(v, y))  # all 435 pairs: another figure
    other = embedding_report(g, rng.normal(size=30), v, y, "regression", k=3, max_pairs=40, seed=9)
    assert other["ordinality"] == pytest.approx(ordinality(v, y, max_pairs=40, seed=9))
    assert other["ordinality"] != pytest.approx(rep["ordinality"])


def test_embedding_report_votes_with_k_neighbours_even_when_classes_are_small() -> None:
    """k larger than any class's R: the vote still uses k neighbours (one ranking pass serves both)."""
    rng = np.random.default_rng(8)
    g, v = rng.normal(size=(12, 5)), rng.normal(size=(30, 5))
    g_lab = np.repeat(np.arange(6), 2)  # R = 2 for every class
    v_lab = rng.integers(0, 6, 30)
    rep = embedding_report(g, g_lab, v, v_lab, "classification", k=9, temperature=1.0)
    pred, _ = knn_classify(v, g, g_lab, k=9, temperature=1.0)
    assert rep["knn_acc"] == pytest.approx(accuracy(pred, v_lab))
    assert rep["knn_bacc"] == pytest.approx(balanced_accuracy(pred, v_lab))
    assert not np.array_equal(pred, knn_classify(v, g, g_lab, k=2, temperature=1.0)[0])  # k = 2 would differ


def test_embedding_report_counts_queries_with_a_single_relevant_item() -> None:
    """A class with one gallery item (R = 1) is retrieved or not: it counts in P@1 and MAP@R."""
    g_emb, g_lab = _circle([0, 90, 100]), np.array([0, 1, 1])
    v_emb, v_lab = _circle([5, 95]), np.array([0, 1])
    rep = embedding_report(g_emb, g_lab, v_emb, v_lab, "classification", k=1)
    assert rep["p_at_1"] == 1.0 and rep["map_at_r"] == pytest.approx((1.0 + 1.0) / 2)
    v_lab = np.array([1, 0])  # now wrong for both: the singleton class is never the nearest
    rep = embedding_report(g_emb, g_lab, v_emb, v_lab, "classification", k=1)
    assert rep["p_at_1"] == 0.0
    assert rep["map_at_r"] == pytest.approx((0.25 + 0.0) / 2)  # 5 deg: relevant 2nd of R = 2; 95 deg: R = 1, missed
    assert rep["map_at_r"] == map_at_r(v_emb, v_lab, g_emb, g_lab)
    assert rep["p_at_1"] == precision_at_1(v_emb, v_lab, g_emb, g_lab)


def test_embedding_report_is_silent_when_retrieval_is_undefined() -> None:
    g_emb, g_lab = _clusters(5, 2, seed=0)
    v_emb, _ = _clusters(2, 2, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" in every epoch's log
        rep = embedding_report(g_emb, g_lab, v_emb, np.array([2, 2, 3, 3]), "classification", k=3)
    assert "map_at_r" not in rep and "p_at_1" not in rep and rep["knn_acc"] == 0.0


def test_embedding_report_recording_metrics_use_the_recordings_targets() -> None:
    g = _circle([0, 10, 20, 30, 40])
    y = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    v = _circle([1, 2, 39])
    groups = np.array([3, 3, 1])  # recording 3: two windows; recording 1: one
    rep = embedding_report(g, y, v, np.array([0.0, 0.0, 4.0]), "regression", k=1, val_groups=groups)
    pred, _ = knn_regress(v, g, y, k=1)
    rec = regression_metrics([pred[2], pred[:2].mean()], [4.0, 0.0])  # recordings sorted by id
    assert {k: rep["rec_knn_" + k] for k in rec} == pytest.approx(rec)


def test_ordinality_default_subsample() -> None:
    """More than 200,000 pairs (`supemb eval` on over 633 items): 200,000 of them, drawn with seed 0."""
    rng = np.random.default_rng(13)
    emb = rng.normal(size=(700, 2))
    y = emb[:, 0] + rng.normal(size=700)
    got = ordinality(emb, y)
    assert got == ordinality(emb, y, max_pairs=200_000, seed=0)
    assert got != ordinality(emb, y, max_pairs=200_001, seed=0)
    assert got != ordinality(emb, y, max_pairs=200_000, seed=1)
