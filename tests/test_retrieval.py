"""supemb.predict.retrieval: hand-computed prediction metrics, retrieval
against hand-worked examples and brute force, ordinality, the per-epoch
report (and supemb.train.geometry's alignment and uniformity)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from toy_embeddings import brute_l2 as _brute_l2
from toy_embeddings import circle as _circle
from toy_embeddings import clusters as _clusters
from toy_embeddings import scaled_data as _scaled_data

from supemb.predict import neighbours
from supemb.predict.neighbours import knn_classify, knn_regress, l2_normalize, nearest_neighbours
from supemb.predict.retrieval import (
    accuracy,
    average_precision_at_r,
    balanced_accuracy,
    embedding_report,
    map_at_r,
    ordinality,
    precision_at_1,
    regression_metrics,
    spearman,
)
from supemb.train.geometry import alignment, uniformity

# ------------------------------------------------------------- regression


def test_regression_metrics_hand_computed() -> None:
    pred = [1.0, 2.0, 4.0, 3.0]
    target = [1.0, 3.0, 2.0, 4.0]
    m = regression_metrics(pred, target)
    # errors 0, -1, 2, -1: MAE 4/4, MSE 6/4; SS_tot around 2.5: 2.25+0.25+0.25+2.25 = 5
    assert m["mae"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(np.sqrt(1.5))
    assert m["r2"] == pytest.approx(1.0 - 6.0 / 5.0)
    assert set(m) == {"mae", "rmse", "r2"}
    assert all(type(v) is float for v in m.values())


def test_r2_perfect_mean_and_constant_target() -> None:
    y = np.array([3.0, -1.0, 7.5, 2.0, 0.0])
    assert regression_metrics(y, y)["r2"] == pytest.approx(1.0)
    assert regression_metrics(np.full_like(y, y.mean()), y)["r2"] == pytest.approx(0.0, abs=1e-12)
    assert regression_metrics(-y, y)["r2"] < 0.0
    const = np.full(4, 2.0)
    assert regression_metrics(const, const)["r2"] == 1.0
    assert regression_metrics(const + 1.0, const)["r2"] == 0.0


@pytest.mark.parametrize(
    "fn", [regression_metrics, accuracy, balanced_accuracy], ids=["regression", "acc", "bacc"]
)
def test_mismatched_lengths_raise(fn) -> None:
    with pytest.raises(ValueError, match="rows"):
        fn([1, 2, 3], [1, 2])


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="empty"):
        regression_metrics([], [])
    with pytest.raises(ValueError, match="NaN"):
        regression_metrics([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="integer"):
        accuracy([0.5, 1.0], [0, 1])
    with pytest.raises(ValueError, match=">= 0"):
        accuracy([-1, 1], [0, 1])


# --------------------------------------------------------- classification


def test_accuracy_and_balanced_accuracy_differ_on_long_tail() -> None:
    # 8 head samples, 2 tail samples; a model that always says "head".
    target = np.array([0] * 8 + [1] * 2)
    pred = np.zeros(10, dtype=int)
    assert accuracy(pred, target) == pytest.approx(0.8)
    assert balanced_accuracy(pred, target) == pytest.approx(0.5)
    # One tail hit, one head miss: recall 7/8 and 1/2.
    pred2 = pred.copy()
    pred2[8] = 1
    pred2[0] = 1
    assert accuracy(pred2, target) == pytest.approx(0.8)
    assert balanced_accuracy(pred2, target) == pytest.approx((7 / 8 + 1 / 2) / 2)


def test_balanced_accuracy_ignores_classes_only_predicted() -> None:
    assert balanced_accuracy([0, 2, 1, 1], [0, 0, 1, 1]) == pytest.approx((0.5 + 1.0) / 2)


# -------------------------------------------------------------- retrieval


def test_p_at_1_and_map_at_r_hand_worked_gallery() -> None:
    # Query 0 at 0°, label 0; gallery by angle: 10°(0) 20°(1) 30°(0) 40°(1) 50°(0).
    # R = 3; first 3 retrieved: hit, miss, hit -> AP = (1/1 + 2/3) / 3 = 5/9; P@1 = 1.
    # Query 1 at 100°, label 1: nearest 50°(0); R = 2, first two 50°(0) 40°(1)
    # -> AP = (1/2) / 2 = 1/4; P@1 = 0.
    gallery = _circle([10, 20, 30, 40, 50])
    g_lab = np.array([0, 1, 0, 1, 0])
    q = _circle([0, 100])
    q_lab = np.array([0, 1])
    assert map_at_r(q[:1], q_lab[:1], gallery, g_lab) == pytest.approx(5 / 9)
    assert precision_at_1(q[:1], q_lab[:1], gallery, g_lab) == 1.0
    assert map_at_r(q, q_lab, gallery, g_lab) == pytest.approx((5 / 9 + 1 / 4) / 2)
    assert precision_at_1(q, q_lab, gallery, g_lab) == pytest.approx(0.5)
    assert map_at_r(q[:1], q_lab[:1], gallery, g_lab) < precision_at_1(q[:1], q_lab[:1], gallery, g_lab)


def test_retrieval_leave_one_out_hand_worked() -> None:
    # Angles 0 10 22 30 45 with labels A A B A B (no ties in angle gaps).
    emb = _circle([0, 10, 22, 30, 45])
    lab = np.array([0, 0, 1, 0, 1])
    # Leave-one-out, first R retrieved by angle gap:
    #  0° (A, R=2): 10 A, 22 B  -> AP = (1/1) / 2 = 0.5, P@1 = 1
    #  10° (A, R=2): 0 A, 22 B  -> AP = 0.5,             P@1 = 1
    #  22° (B, R=1): 30 A       -> AP = 0,               P@1 = 0
    #  30° (A, R=2): 22 B, 45 B -> AP = 0,               P@1 = 0
    #  45° (B, R=1): 30 A       -> AP = 0,               P@1 = 0
    assert precision_at_1(emb, lab) == pytest.approx(2 / 5)
    assert map_at_r(emb, lab) == pytest.approx((0.5 + 0.5) / 5)


def test_retrieval_skips_queries_without_relevant_items() -> None:
    emb = _circle([0, 5, 90])
    lab = np.array([0, 0, 1])  # item 2 is alone in its class: R = 0
    assert precision_at_1(emb, lab) == 1.0
    assert map_at_r(emb, lab) == 1.0
    assert np.isnan(map_at_r(emb[2:], lab[2:]))
    # A query label absent from the gallery is skipped too.
    assert precision_at_1(emb, [0, 0, 5], emb[:2], [0, 0]) == 1.0
    with pytest.raises(ValueError, match="both"):
        map_at_r(emb, lab, gallery_emb=emb)


def test_retrieval_perfect_on_clusters_and_matches_brute_force() -> None:
    emb, lab = _clusters(6, 3)
    assert map_at_r(emb, lab) == pytest.approx(1.0)
    assert precision_at_1(emb, lab) == 1.0
    # Random embeddings: compare with a plain loop over queries.
    rng = np.random.default_rng(3)
    emb, lab = rng.normal(size=(40, 6)), rng.integers(0, 4, 40)
    e = l2_normalize(emb)
    aps = []
    for i in range(40):
        sim = e @ e[i]
        sim[i] = -np.inf
        order = np.argsort(-sim, kind="stable")
        r = int(np.sum(lab == lab[i])) - 1
        rel = lab[order[:r]] == lab[i]
        aps.append(sum(rel[: j + 1].sum() / (j + 1) for j in range(r) if rel[j]) / r)
    assert map_at_r(emb, lab) == pytest.approx(np.mean(aps))


def test_average_precision_at_r_from_any_ranking() -> None:
    # The ranking `supemb eval` gets from FAISS: query 0 (label 0, R = 3) retrieves 0 1 0 0,
    # query 1 (label 1, R = 2) retrieves 0 1 1 1; only the first R count.
    g_labels = np.array([0, 1, 0, 1, 0, 1])
    idx = np.array([[0, 1, 2, 4], [2, 1, 3, 5]])
    ap = average_precision_at_r(idx, np.array([0, 1]), g_labels, np.array([3, 2]))
    np.testing.assert_allclose(ap, [(1 + 2 / 3) / 3, (1 / 2) / 2])


# ------------------------------------------------------------- ordinality


def test_spearman_matches_scipy_with_ties() -> None:
    from scipy.stats import spearmanr

    rng = np.random.default_rng(9)
    a = rng.integers(0, 6, 200).astype(np.float64)  # many ties
    b = a + rng.normal(0, 2.0, 200)
    b[::7] = 1.5  # ties in b too
    assert spearman(a, b) == pytest.approx(float(spearmanr(a, b).statistic), rel=1e-12)
    assert spearman(a, -a) == pytest.approx(-1.0)


def test_ordinality_monotone_is_one_and_random_is_zero() -> None:
    rng = np.random.default_rng(0)
    y = rng.uniform(0, 80, 120)
    emb = _circle(y * 2.0)  # angle monotone in the target, gaps < 180°
    assert ordinality(emb, y) == pytest.approx(1.0)
    assert ordinality(np.hstack([emb * 5.0, emb * 5.0]), y, normalize=False) == pytest.approx(1.0)
    assert abs(ordinality(rng.normal(size=(120, 16)), y)) < 0.1
    assert ordinality(_circle(-y), y) == pytest.approx(1.0)  # the direction does not matter
    assert np.isnan(ordinality(emb, np.ones(120)))


def test_ordinality_subsampling_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    y = rng.uniform(0, 1, 300)
    emb = np.c_[y, rng.normal(0, 0.3, 300)] + 2.0
    a = ordinality(emb, y, max_pairs=2000, seed=5)
    assert a == ordinality(emb, y, max_pairs=2000, seed=5)
    assert a != ordinality(emb, y, max_pairs=2000, seed=6)
    assert abs(a - ordinality(emb, y)) < 0.1
    with pytest.raises(ValueError, match="rows"):
        ordinality(emb, y[:-1])
    with pytest.raises(ValueError, match="at least 2"):
        ordinality(emb[:1], y[:1])


# ------------------------------------------------------------------ report


def test_embedding_report_classification() -> None:
    g_emb, g_lab = _clusters(15, 3, seed=0)
    v_emb, v_lab = _clusters(5, 3, seed=1)  # labels 0 x5, 1 x5, 2 x5
    rep = embedding_report(g_emb, g_lab, v_emb, v_lab, "classification", k=5)
    assert set(rep) == {"knn_acc", "knn_bacc", "p_at_1", "map_at_r"}
    assert rep["knn_acc"] == 1.0 and rep["p_at_1"] == 1.0 and rep["map_at_r"] == pytest.approx(1.0)
    assert all(type(v) is float for v in rep.values())
    json.loads(json.dumps(rep, allow_nan=False))
    # One window of recording 0 (class 0) lands in cluster 1: window accuracy
    # drops, the recording's averaged vote is still right.
    moved = v_emb.copy()
    moved[0] = g_emb[g_lab == 1][0]
    groups = np.arange(15) // 5
    rep = embedding_report(g_emb, g_lab, moved, v_lab, "classification", k=5, val_groups=groups)
    assert rep["knn_acc"] == pytest.approx(14 / 15)
    assert rep["knn_bacc"] == pytest.approx((4 / 5 + 1 + 1) / 3)
    assert rep["rec_knn_acc"] == 1.0 and rep["rec_knn_bacc"] == 1.0
    with pytest.raises(ValueError, match="different targets"):
        embedding_report(g_emb, g_lab, v_emb, v_lab, "classification", val_groups=np.zeros(15, int))
    with pytest.raises(ValueError, match="rows"):
        embedding_report(g_emb, g_lab, v_emb, v_lab[:-1], "classification")


def test_embedding_report_regression_and_k_capped() -> None:
    g_y = np.linspace(0, 80, 81)
    v_y = np.random.default_rng(0).uniform(1.5, 78.5, 12)  # distinct gaps: no rank ties
    rep = embedding_report(_circle(g_y), g_y, _circle(v_y), v_y, "regression", k=3, temperature=0.01)
    assert set(rep) == {"knn_mae", "knn_rmse", "knn_r2", "knn_spread", "ordinality"}
    assert rep["knn_mae"] < 1.0 and rep["knn_r2"] > 0.99 and rep["ordinality"] == pytest.approx(1.0)
    json.loads(json.dumps(rep, allow_nan=False))
    # k larger than the gallery is capped, not an error.
    small = embedding_report(_circle(g_y[:4]), g_y[:4], _circle(v_y), v_y, "regression", k=50)
    assert np.isfinite(small["knn_mae"])
    # Recording-level: windows of a recording share a target; window preds are averaged.
    groups = np.repeat(np.arange(4), 3)
    rv = np.repeat([10.0, 20.0, 30.0, 40.0], 3)
    rep = embedding_report(_circle(g_y), g_y, _circle(rv + np.tile([-1.0, 0.0, 1.0], 4)), rv, "regression", k=1, val_groups=groups)
    assert rep["rec_knn_mae"] == pytest.approx(0.0, abs=1e-9)
    assert rep["knn_mae"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="task"):
        embedding_report(_circle(g_y), g_y, _circle(v_y), v_y, "ranking")  # type: ignore[arg-type]


def test_embedding_report_drops_undefined_metrics() -> None:
    # Validation classes never seen in the gallery: MAP@R and P@1 are undefined.
    g_emb, g_lab = _clusters(5, 2, seed=0)
    v_emb, _ = _clusters(2, 2, seed=1)
    rep = embedding_report(g_emb, g_lab, v_emb, np.array([2, 2, 3, 3]), "classification", k=3)
    assert "map_at_r" not in rep and "p_at_1" not in rep
    assert rep["knn_acc"] == 0.0


def test_embedding_report_matches_the_standalone_functions() -> None:
    # The report ranks once for kNN, P@1 and MAP@R; it must agree with the separate calls.
    rng = np.random.default_rng(7)
    g_emb, g_lab = rng.normal(size=(300, 8)), rng.integers(0, 5, 300)
    v_emb, v_lab = rng.normal(size=(80, 8)), rng.integers(0, 6, 80)  # class 5 is not in the gallery
    rep = embedding_report(g_emb, g_lab, v_emb, v_lab, "classification", k=7, temperature=0.2)
    pred, _ = knn_classify(v_emb, g_emb, g_lab, k=7, temperature=0.2)
    assert rep["knn_acc"] == pytest.approx(accuracy(pred, v_lab))
    assert rep["knn_bacc"] == pytest.approx(balanced_accuracy(pred, v_lab))
    assert rep["p_at_1"] == pytest.approx(precision_at_1(v_emb, v_lab, g_emb, g_lab))
    assert rep["map_at_r"] == pytest.approx(map_at_r(v_emb, v_lab, g_emb, g_lab))


def test_results_do_not_depend_on_the_block_size(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(8)
    emb, lab = rng.normal(size=(90, 6)), rng.integers(0, 4, 90)
    y = rng.normal(size=90)

    def run() -> tuple:
        return (
            nearest_neighbours(emb, emb, 5, exclude_self=True),
            map_at_r(emb, lab),
            precision_at_1(emb, lab),
            knn_regress(emb[:30], emb[30:], y[30:], k=4),
            embedding_report(emb[30:], lab[30:], emb[:30], lab[:30], "classification", k=4),
        )

    whole = run()
    monkeypatch.setattr(neighbours, "_BLOCK_ELEMENTS", 200)  # 2-3 query rows per block
    blocked = run()
    np.testing.assert_array_equal(whole[0][0], blocked[0][0])
    assert whole[1:3] == blocked[1:3]
    np.testing.assert_array_equal(whole[3][0], blocked[3][0])
    assert whole[4] == blocked[4]


def test_embedding_report_rejects_a_bad_k() -> None:
    emb, lab = _clusters(4, 2)
    with pytest.raises(ValueError, match="positive integer"):
        embedding_report(emb, lab, emb, lab, "classification", k=0)


# -------------------------------------------------------- the "l2" metric


def test_l2_retrieval_matches_brute_force() -> None:
    q, g = _scaled_data(25)
    rng = np.random.default_rng(26)
    lab = rng.integers(0, 4, len(g))
    # leave-one-out within g, ranked by Euclidean distance, against a loop
    order, _ = _brute_l2(g, g, len(g) - 1, exclude_self=True)
    aps, hits = [], []
    for i in range(len(g)):
        r = int(np.sum(lab == lab[i])) - 1
        rel = lab[order[i, :r]] == lab[i]
        aps.append(sum(rel[: j + 1].sum() / (j + 1) for j in range(r) if rel[j]) / r)
        hits.append(lab[order[i, 0]] == lab[i])
    assert map_at_r(g, lab, metric="l2") == pytest.approx(np.mean(aps))
    assert precision_at_1(g, lab, metric="l2") == pytest.approx(np.mean(hits))
    assert map_at_r(g, lab, metric="l2") != pytest.approx(map_at_r(g, lab))  # the geometry matters here


def test_l2_embedding_report_matches_the_standalone_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    q, g = _scaled_data(27, n_q=50, n_g=200)
    rng = np.random.default_rng(28)
    g_lab, v_lab = rng.integers(0, 5, 200), rng.integers(0, 5, 50)
    g_y, v_y = rng.normal(size=200), rng.normal(size=50)

    def reports() -> tuple[dict, dict]:
        return (embedding_report(g, g_lab, q, v_lab, "classification", k=7, temperature=0.5, metric="l2"),
                embedding_report(g, g_y, q, v_y, "regression", k=7, temperature=0.5, metric="l2"))

    cls, reg = reports()
    pred, _ = knn_classify(q, g, g_lab, k=7, temperature=0.5, metric="l2")
    assert cls["knn_acc"] == pytest.approx(accuracy(pred, v_lab))
    assert cls["p_at_1"] == pytest.approx(precision_at_1(q, v_lab, g, g_lab, metric="l2"))
    assert cls["map_at_r"] == pytest.approx(map_at_r(q, v_lab, g, g_lab, metric="l2"))
    value, spread = knn_regress(q, g, g_y, 7, temperature=0.5, metric="l2")
    assert reg["knn_mae"] == pytest.approx(regression_metrics(value, v_y)["mae"])
    assert reg["knn_spread"] == pytest.approx(float(np.mean(spread)))
    assert reg["ordinality"] == pytest.approx(ordinality(q, v_y, normalize=False))
    monkeypatch.setattr(neighbours, "_BLOCK_ELEMENTS", 300)  # one or two query rows per block
    for blocked, whole in zip(reports(), (cls, reg)):  # equal up to the last bits of a BLAS product
        assert blocked == pytest.approx(whole, rel=1e-12)
    with pytest.raises(ValueError, match="metric must be 'cosine' or 'l2'"):
        embedding_report(g, g_y, q, v_y, "regression", metric="dot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="metric must be"):
        nearest_neighbours(q, g, 3, metric="euclid")  # type: ignore[arg-type]


def test_cosine_is_the_default_and_unchanged() -> None:
    q, g = _scaled_data(29)
    rng = np.random.default_rng(30)
    lab, y = rng.integers(0, 3, len(g)), rng.normal(size=len(g))
    a = nearest_neighbours(q, g, 5)
    b = nearest_neighbours(q, g, 5, metric="cosine")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    sim = l2_normalize(q) @ l2_normalize(g).T  # brute-force cosine
    ref = np.argsort(-sim, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(a[0], ref)
    np.testing.assert_allclose(a[1], np.take_along_axis(sim, ref, 1), atol=1e-12)
    assert embedding_report(g, lab, q, lab[:40], "classification", k=5) == embedding_report(
        g, lab, q, lab[:40], "classification", k=5, metric="cosine")
    assert ordinality(q, y[:40]) == ordinality(q, y[:40], normalize=True) == ordinality(q, y[:40], metric="cosine")
    assert ordinality(q, y[:40], metric="l2") == ordinality(q, y[:40], normalize=False)


# ---------------------------------------------------- alignment, uniformity


def test_alignment_matches_a_loop() -> None:
    rng = np.random.default_rng(31)
    a, b = rng.normal(size=(25, 5)) * 4.0, rng.normal(size=(25, 5))
    for alpha in (2.0, 1.0, 0.5):
        want = np.mean([np.linalg.norm(x / np.linalg.norm(x) - z / np.linalg.norm(z)) ** alpha
                        for x, z in zip(a, b)])
        assert alignment(a, b, alpha=alpha) == pytest.approx(want, rel=1e-12)
    assert alignment(a, a * 7.0) == pytest.approx(0.0, abs=1e-12)  # computed on normalised rows
    assert alignment(a, -a) == pytest.approx(4.0)  # antipodal pairs: ||2u||^2
    with pytest.raises(ValueError, match="shape"):
        alignment(a, b[:-1])
    with pytest.raises(ValueError, match="alpha"):
        alignment(a, b, alpha=0)


def test_uniformity_matches_a_loop() -> None:
    rng = np.random.default_rng(32)
    x = rng.normal(size=(30, 4)) * rng.uniform(0.5, 3.0, (30, 1))
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    for t in (2.0, 0.5):
        terms = [np.exp(-t * np.sum((u[i] - u[j]) ** 2)) for i in range(30) for j in range(30) if i != j]
        assert uniformity(x, t=t) == pytest.approx(np.log(np.mean(terms)), rel=1e-12)
    assert uniformity(np.ones((6, 3))) == pytest.approx(0.0, abs=1e-12)  # one point
    assert uniformity(np.array([[1.0, 0.0], [-1.0, 0.0]]), t=2.0) == pytest.approx(-8.0)  # antipodal: -4t
    assert uniformity(x, t=500.0) > -np.inf  # log-sum-exp: no underflow to log(0)
    # Subsampled pairs: deterministic for a seed, close to the full value.
    big = rng.normal(size=(400, 8))
    sub = uniformity(big, max_pairs=20_000, seed=1)
    assert sub == uniformity(big, max_pairs=20_000, seed=1) != uniformity(big, max_pairs=20_000, seed=2)
    assert abs(sub - uniformity(big)) < 0.05  # 20k of the 79800 pairs: about 0.015 off
    with pytest.raises(ValueError, match="at least 2"):
        uniformity(x[:1])
    with pytest.raises(ValueError, match="t must be"):
        uniformity(x, t=-1.0)
