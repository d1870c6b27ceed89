"""Property-based tests (hypothesis) of the invariants a user relies on.

Each property is checked against an independent computation written here in
plain loops (never the function under test): the kNN regression and vote
(supemb.predict.neighbours), the per-recording aggregation, the retrieval
metrics (supemb.predict.retrieval), the RnC and SupCon losses, the EEG
windows and the split rule. Examples are derandomized and few, so the file
runs in seconds and the same way everywhere.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from supemb.data.image_table import ImageRecord
from supemb.data.splits import SPLITS, assign_splits, split_labels
from supemb.losses import RnCLoss, SupConLoss
from supemb.predict import neighbours as nb
from supemb.predict import retrieval as rt
from supemb.preprocess.eeg import make_windows, slice_windows

# Deterministic and quick: the same examples on every machine, no example database on disk.
PROPS = settings(derandomize=True, max_examples=40, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(PROPS, max_examples=12)  # the costlier ones (losses with autograd, mne)

# ------------------------------------------------------------------ helpers (the independent side)


def softmax_loop(sims: list[float], t: float) -> list[float]:
    """exp(s_j / t) / sum_k exp(s_k / t), term by term."""
    top = max(sims)
    e = [math.exp((s - top) / t) for s in sims]
    total = sum(e)
    return [x / total for x in e]


def weighted_mean_loop(y: list[float], w: list[float]) -> float:
    return sum(wi * yi for wi, yi in zip(w, y)) / sum(w)


def weighted_spread_loop(y: list[float], w: list[float]) -> float:
    m = weighted_mean_loop(y, w)
    return math.sqrt(sum(wi * (yi - m) ** 2 for wi, yi in zip(w, y)) / sum(w))


def weighted_median_loop(y: list[float], w: list[float]) -> float:
    """The minimiser of sum_j w_j |y_j - m|; where a whole interval minimises it
    (the cumulative weight is exactly 1/2 at a value), its midpoint."""
    cost = {v: sum(wi * abs(yi - v) for wi, yi in zip(w, y)) for v in set(y)}
    best = min(cost.values())
    tol = 1e-9 * (1.0 + sum(abs(v) for v in y))
    flat = [v for v, c in cost.items() if c <= best + tol]
    return 0.5 * (min(flat) + max(flat))


def brute_neighbours(q: np.ndarray, g: np.ndarray, k: int, metric: str, skip: int | None = None) -> list[int]:
    """The k most similar gallery rows of one query, ties by the lower index: a full sort."""
    sims = []
    for j in range(len(g)):
        if j == skip:
            continue
        if metric == "cosine":
            a, b = q / max(np.linalg.norm(q), 1e-12), g[j] / max(np.linalg.norm(g[j]), 1e-12)
            s = float(sum(x * y for x, y in zip(a, b)))
        else:
            s = -math.sqrt(sum((x - y) ** 2 for x, y in zip(q, g[j])))
        sims.append((-s, j))
    return [j for _, j in sorted(sims)[:k]]


def gaussian(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape)


# Similarities on a coarse grid, sorted decreasing: exact ties happen, near-ties do not
# (a weighted median at a near-exact half of the weight would be ambiguous).
def sim_rows(n: int, k: int) -> st.SearchStrategy[np.ndarray]:
    grid = st.integers(-16, 16).map(lambda i: i / 16)
    return st.lists(st.lists(grid, min_size=k, max_size=k), min_size=n, max_size=n).map(
        lambda rows: -np.sort(-np.array(rows, dtype=np.float64), axis=1))


@st.composite
def neighbourhoods(draw, max_n: int = 4, max_k: int = 7) -> tuple[np.ndarray, np.ndarray, float]:
    """(sim [n, k] sorted decreasing, targets [n, k], temperature)."""
    n = draw(st.integers(1, max_n))
    k = draw(st.integers(1, max_k))
    sim = draw(sim_rows(n, k))
    y = draw(st.lists(st.lists(st.integers(-50, 50).map(float), min_size=k, max_size=k), min_size=n, max_size=n))
    t = draw(st.sampled_from([0.1, 0.25, 1.0, 3.0]))
    return sim, np.array(y, dtype=np.float64), t


# ------------------------------------------------------------------ kNN regression


@PROPS
@given(neighbourhoods())
def test_softmax_weights_are_exp_over_temperature(case) -> None:
    sim, _, t = case
    w = nb.softmax_weights(sim, t)
    for row, want in zip(w, sim):
        assert row == pytest.approx(softmax_loop(list(want), t), rel=1e-12, abs=1e-15)


@PROPS
@given(neighbourhoods(), st.sampled_from(["softmax", "uniform"]))
def test_weighted_mean_median_and_spread_against_loops(case, weighting: str) -> None:
    sim, y, t = case
    mean, spread = nb.neighbour_regress(sim, y, weighting=weighting, temperature=t, reduce="mean")
    median, spread_m = nb.neighbour_regress(sim, y, weighting=weighting, temperature=t, reduce="median")
    for i in range(len(y)):
        w = softmax_loop(list(sim[i]), t) if weighting == "softmax" else [1.0] * len(y[i])
        assert mean[i] == pytest.approx(weighted_mean_loop(list(y[i]), w), abs=1e-9)
        assert spread[i] == pytest.approx(weighted_spread_loop(list(y[i]), w), abs=1e-7)
        assert median[i] == pytest.approx(weighted_median_loop(list(y[i]), w), abs=1e-9)
        assert spread_m[i] == spread[i]  # the spread is about the weighted mean either way


def test_weighted_median_follows_the_weights() -> None:
    """A heavy neighbour pulls the median to itself; uniform weights give np.median."""
    sim = np.array([[1.0, 0.0, 0.0]])
    y = np.array([[30.0, 10.0, 20.0]])
    med, _ = nb.neighbour_regress(sim, y, temperature=0.1, reduce="median")
    assert med[0] == 30.0
    med_u, _ = nb.neighbour_regress(sim, y, weighting="uniform", reduce="median")
    assert med_u[0] == 20.0
    even = np.array([[1.0, 2.0, 3.0, 10.0]])
    assert nb.neighbour_regress(np.zeros((1, 4)), even, reduce="median")[0][0] == 2.5


@PROPS
@given(neighbourhoods(), st.integers(-1000, 1000).map(float), st.sampled_from(["mean", "median"]))
def test_agreeing_neighbours_give_their_target_and_zero_spread(case, c: float, reduce: str) -> None:
    sim, _, t = case
    y = np.full(sim.shape, c + 0.1)  # 0.1: not exactly representable, the sum of weights is not 1 either
    pred, spread = nb.neighbour_regress(sim, y, temperature=t, reduce=reduce)
    assert np.all(pred == c + 0.1)
    assert np.all(spread == 0.0)


@PROPS
@given(neighbourhoods(), st.sampled_from([-3.0, -1.0, -0.5, 0.25, 2.0, 7.0]), st.integers(-100, 100).map(float),
       st.sampled_from(["mean", "median"]))
def test_affine_targets_give_affine_predictions(case, a: float, b: float, reduce: str) -> None:
    sim, y, t = case
    pred, spread = nb.neighbour_regress(sim, y, temperature=t, reduce=reduce)
    pred2, spread2 = nb.neighbour_regress(sim, a * y + b, temperature=t, reduce=reduce)
    np.testing.assert_allclose(pred2, a * pred + b, atol=1e-8)
    np.testing.assert_allclose(spread2, abs(a) * spread, atol=1e-8)


@st.composite
def galleries(draw, metric: bool = True) -> dict:
    """Random continuous embeddings (no ties), the shapes and options drawn by hypothesis."""
    g = draw(st.integers(2, 12))
    d = draw(st.integers(2, 4))  # in one dimension every cosine similarity is +-1: all ties
    n = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    return {"query": rng.normal(size=(n, d)), "gallery": rng.normal(size=(g, d)),
            "targets": rng.integers(0, 80, size=g).astype(np.float64),
            "k": draw(st.integers(1, g - 1)), "metric": draw(st.sampled_from(["cosine", "l2"])),
            "t": draw(st.sampled_from([0.05, 0.1, 1.0])), "perm": rng.permutation(g)}


@PROPS
@given(galleries(), st.sampled_from(["mean", "median"]))
def test_knn_regress_is_the_loop_and_ignores_gallery_order(case, reduce: str) -> None:
    q, g, y, k, metric, t, perm = (case[key] for key in ("query", "gallery", "targets", "k", "metric", "t", "perm"))
    pred, spread = nb.knn_regress(q, g, y, k, temperature=t, reduce=reduce, metric=metric)
    pred_p, spread_p = nb.knn_regress(q, g[perm], y[perm], k, temperature=t, reduce=reduce, metric=metric)
    np.testing.assert_allclose(pred_p, pred, atol=1e-9)
    np.testing.assert_allclose(spread_p, spread, atol=1e-9)
    for i in range(len(q)):
        found = brute_neighbours(q[i], g, k, metric)
        if metric == "cosine":
            sims = [float(q[i] @ g[j] / np.linalg.norm(q[i]) / np.linalg.norm(g[j])) for j in found]
        else:
            sims = [-float(np.linalg.norm(q[i] - g[j])) for j in found]
        w = softmax_loop(sims, t)
        ys = [float(y[j]) for j in found]
        want = weighted_mean_loop(ys, w) if reduce == "mean" else weighted_median_loop(ys, w)
        assert pred[i] == pytest.approx(want, abs=1e-7)
        assert spread[i] == pytest.approx(weighted_spread_loop(ys, w), abs=1e-6)


@PROPS
@given(galleries())
def test_leave_one_out_skips_itself_and_follows_a_permutation(case) -> None:
    g, y, k, metric, perm = (case[key] for key in ("gallery", "targets", "k", "metric", "perm"))
    k = min(k, len(g) - 1)
    pred, _ = nb.knn_regress(g, g, y, k, exclude_self=True, metric=metric)
    pred_p, _ = nb.knn_regress(g[perm], g[perm], y[perm], k, exclude_self=True, metric=metric)
    np.testing.assert_allclose(pred_p, pred[perm], atol=1e-9)
    idx, _ = nb.nearest_neighbours(g, g, k, exclude_self=True, metric=metric)
    for i in range(len(g)):
        assert idx[i].tolist() == brute_neighbours(g[i], g, k, metric, skip=i)


# ------------------------------------------------------------------ classification vote


@PROPS
@given(neighbourhoods(), st.integers(1, 5), st.data())
def test_vote_sums_the_weights_of_each_class(case, n_classes: int, data) -> None:
    sim, _, t = case
    labels = np.array(data.draw(st.lists(st.lists(st.integers(0, n_classes - 1), min_size=sim.shape[1],
                                                  max_size=sim.shape[1]), min_size=len(sim), max_size=len(sim))))
    probs = nb.neighbour_vote(sim, labels, n_classes, t)
    for i in range(len(sim)):
        w = softmax_loop(list(sim[i]), t)
        want = [sum(wj for wj, lj in zip(w, labels[i]) if lj == c) for c in range(n_classes)]
        assert probs[i] == pytest.approx(want, abs=1e-12)
        assert math.fsum(probs[i]) == pytest.approx(1.0, abs=1e-12)


@PROPS
@given(galleries(), st.integers(2, 4))
def test_knn_classify_permutation_and_unanimity(case, n_classes: int) -> None:
    q, g, k, metric, t, perm = (case[key] for key in ("query", "gallery", "k", "metric", "t", "perm"))
    labels = case["targets"].astype(np.int64) % n_classes
    pred, probs = nb.knn_classify(q, g, labels, k, n_classes=n_classes, temperature=t, metric=metric)
    pred_p, probs_p = nb.knn_classify(q, g[perm], labels[perm], k, n_classes=n_classes, temperature=t,
                                      metric=metric)
    np.testing.assert_allclose(probs_p, probs, atol=1e-12)
    assert np.array_equal(pred_p, pred)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    assert np.array_equal(pred, probs.argmax(axis=1))
    same = np.full(len(g), n_classes - 1)  # a unanimous neighbourhood: probability 1 for its class
    pred1, probs1 = nb.knn_classify(q, g, same, k, n_classes=n_classes, temperature=t, metric=metric)
    assert np.all(pred1 == n_classes - 1) and np.all(probs1[:, :-1] == 0.0)
    np.testing.assert_allclose(probs1[:, -1], 1.0, atol=1e-12)


# ------------------------------------------------------------------ rows -> inputs


@st.composite
def owned_rows(draw, dim: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(values [R] or [R, D], owner [R] in 0..n-1, n); some inputs may own no rows."""
    n = draw(st.integers(1, 5))
    owner = np.array(draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=14)), dtype=np.int64)
    seed = draw(st.integers(0, 2**16))
    shape = (len(owner),) if dim is None else (len(owner), dim)
    return gaussian(seed, *shape) * 10, owner, n


@PROPS
@given(owned_rows(dim=3))
def test_group_mean_and_recording_embeddings_per_input(case) -> None:
    v, owner, n = case
    got = nb.group_mean(v, owner, n)
    got_scalar = nb.group_mean(v[:, 0], owner, n)
    cos = nb.recording_embeddings(v, owner, n, "cosine")
    l2 = nb.recording_embeddings(v, owner, n, "l2")
    for i in range(n):
        rows = [v[r] for r in range(len(v)) if owner[r] == i]
        want = np.sum(rows, axis=0) / len(rows) if rows else np.zeros(3)
        np.testing.assert_allclose(got[i], want, atol=1e-12)
        assert got_scalar[i] == pytest.approx(want[0], abs=1e-12)
        np.testing.assert_allclose(l2[i], want, rtol=1e-6, atol=1e-5)
        norm = math.sqrt(sum(x * x for x in want))
        np.testing.assert_allclose(cos[i], want / norm if norm > 0 else want, atol=1e-6)


@PROPS
@given(owned_rows(), st.sampled_from(["mean", "median"]))
def test_aggregate_by_group_and_rows_by_owner(case, how: str) -> None:
    v, owner, _ = case
    ids = owner * 7 - 3  # any ids, not positions
    groups, agg = nb.aggregate_by_group(v, ids, how)
    assert groups.tolist() == sorted(set(ids.tolist()))
    for gid, a in zip(groups, agg):
        members = sorted(v[r] for r in range(len(v)) if ids[r] == gid)
        m = len(members)
        want = sum(members) / m if how == "mean" else (members[(m - 1) // 2] + members[m // 2]) / 2
        assert a == pytest.approx(want, abs=1e-9)
    listed = nb.rows_by_owner(owner)
    assert [pos for pos, _ in listed] == sorted(set(owner.tolist()))
    for pos, rows in listed:
        assert rows.tolist() == [r for r in range(len(owner)) if owner[r] == pos]


@PROPS
@given(st.data(), st.sampled_from(["mean", "median"]))
def test_predict_inputs_is_the_law_of_total_variance(data, reduce: str) -> None:
    sim, y, t = data.draw(neighbourhoods(max_n=8))
    n = data.draw(st.integers(1, 4))
    owner = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=len(sim), max_size=len(sim))))
    out = nb.predict_inputs(sim, y, owner, n, "regression", temperature=t, reduce=reduce)
    assert out.probabilities is None
    for i in range(n):
        rows = [r for r in range(len(sim)) if owner[r] == i]
        if not rows:
            assert out.values[i] == 0.0 and out.uncertainty[i] == 0.0
            continue
        preds, spreads = [], []
        for r in rows:
            w = softmax_loop(list(sim[r]), t)
            ys = list(y[r])
            preds.append(weighted_mean_loop(ys, w) if reduce == "mean" else weighted_median_loop(ys, w))
            spreads.append(weighted_spread_loop(ys, w))
        value = sum(preds) / len(rows)
        unc = math.sqrt(sum(s**2 + (p - value) ** 2 for s, p in zip(spreads, preds)) / len(rows))
        assert out.values[i] == pytest.approx(value, abs=1e-9)
        assert out.uncertainty[i] == pytest.approx(unc, abs=1e-6)


@PROPS
@given(st.data())
def test_predict_inputs_classification_averages_the_votes(data) -> None:
    sim, _, t = data.draw(neighbourhoods(max_n=6))
    n = data.draw(st.integers(1, 3))
    owner = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=len(sim), max_size=len(sim))))
    labels = np.array(data.draw(st.lists(st.lists(st.integers(0, 2), min_size=sim.shape[1], max_size=sim.shape[1]),
                                         min_size=len(sim), max_size=len(sim))))
    out = nb.predict_inputs(sim, labels, owner, n, "classification", n_classes=3, temperature=t)
    for i in range(n):
        rows = [r for r in range(len(sim)) if owner[r] == i]
        want = [0.0, 0.0, 0.0]
        for r in rows:
            for wj, lj in zip(softmax_loop(list(sim[r]), t), labels[r]):
                want[lj] += wj / len(rows)
        assert out.probabilities[i] == pytest.approx(want, abs=1e-12)
        assert out.uncertainty[i] == pytest.approx(1.0 - max(want) if rows else 1.0, abs=1e-12)


# ------------------------------------------------------------------ retrieval metrics


def ranking_loop(q: np.ndarray, g: np.ndarray, metric: str, skip: int | None) -> list[int]:
    return brute_neighbours(q, g, len(g), metric, skip)


def map_at_r_loop(q, ql, g, gl, metric: str, loo: bool) -> tuple[float, float]:
    """(MAP@R, P@1) by the definition: R relevant items, AP over the first R retrieved."""
    aps, hits = [], []
    for i in range(len(q)):
        ranking = ranking_loop(q[i], g, metric, i if loo else None)
        r = sum(1 for j in ranking if gl[j] == ql[i])
        if r == 0:
            continue
        found, ap = 0, 0.0
        for pos, j in enumerate(ranking[:r], start=1):
            if gl[j] == ql[i]:
                found += 1
                ap += found / pos
        aps.append(ap / r)
        hits.append(float(gl[ranking[0]] == ql[i]))
    return (sum(aps) / len(aps), sum(hits) / len(hits)) if aps else (math.nan, math.nan)


@st.composite
def labelled_sets(draw) -> dict:
    """Embeddings drawn from a small pool of vectors (exact duplicates: tied similarities) and labels."""
    pool = gaussian(draw(st.integers(0, 2**16)), draw(st.integers(2, 6)), draw(st.integers(1, 3)))
    n = draw(st.integers(2, 10))
    g = draw(st.integers(2, 10))
    pick = st.integers(0, len(pool) - 1)
    return {"q": pool[draw(st.lists(pick, min_size=n, max_size=n))],
            "ql": np.array(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))),
            "g": pool[draw(st.lists(pick, min_size=g, max_size=g))],
            "gl": np.array(draw(st.lists(st.integers(0, 3), min_size=g, max_size=g))),
            "metric": draw(st.sampled_from(["cosine", "l2"]))}


@PROPS
@given(labelled_sets(), st.booleans())
def test_map_at_r_and_precision_at_1_against_the_definition(case, loo: bool) -> None:
    q, ql, metric = case["q"], case["ql"], case["metric"]
    g, gl = (q, ql) if loo else (case["g"], case["gl"])
    want_map, want_p1 = map_at_r_loop(q, ql, g, gl, metric, loo)
    args = (q, ql) if loo else (q, ql, g, gl)
    got_map, got_p1 = rt.map_at_r(*args, metric=metric), rt.precision_at_1(*args, metric=metric)
    if math.isnan(want_map):
        assert math.isnan(got_map) and math.isnan(got_p1)
    else:
        assert got_map == pytest.approx(want_map, abs=1e-12)
        assert got_p1 == pytest.approx(want_p1, abs=1e-12)


@PROPS
@given(st.data())
def test_average_precision_at_r_of_a_given_ranking(data) -> None:
    g = data.draw(st.integers(1, 8))
    gl = np.array(data.draw(st.lists(st.integers(0, 2), min_size=g, max_size=g)))
    n = data.draw(st.integers(1, 4))
    ql = np.array(data.draw(st.lists(st.sampled_from(sorted(set(gl.tolist()))), min_size=n, max_size=n)))
    idx = np.array([data.draw(st.permutations(range(g))) for _ in range(n)])
    r = np.array([int(np.sum(gl == c)) for c in ql])
    got = rt.average_precision_at_r(idx, ql, gl, r)
    for i in range(n):
        hits, total = 0, 0.0
        for pos in range(1, r[i] + 1):
            if gl[idx[i, pos - 1]] == ql[i]:
                hits += 1
                total += hits / pos
        assert got[i] == pytest.approx(total / r[i], abs=1e-12)


def _ranks_loop(x: list[float]) -> list[float]:
    """Average ranks, 1-based: each value's rank is the mean of the positions its ties occupy."""
    out = []
    for v in x:
        below = sum(1 for u in x if u < v)
        equal = sum(1 for u in x if u == v)
        out.append(below + (equal + 1) / 2)
    return out


@PROPS
@given(st.integers(0, 2**16), st.integers(3, 9), st.sampled_from(["cosine", "l2"]), st.integers(2, 5))
def test_ordinality_is_spearman_over_all_pairs(seed: int, n: int, metric: str, levels: int) -> None:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, 3))
    y = rng.integers(0, levels, size=n).astype(np.float64)  # tied target distances
    d_emb, d_y = [], []
    for i in range(n):
        for j in range(i + 1, n):
            if metric == "cosine":
                a, b = emb[i] / np.linalg.norm(emb[i]), emb[j] / np.linalg.norm(emb[j])
                d_emb.append(1.0 - float(sum(a * b)))
            else:
                d_emb.append(math.sqrt(sum((emb[i] - emb[j]) ** 2)))
            d_y.append(abs(y[i] - y[j]))
    got = rt.ordinality(emb, y, metric=metric)
    if len(set(d_y)) == 1:
        assert math.isnan(got)
        return
    ra, rb = _ranks_loop(d_emb), _ranks_loop(d_y)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((a - ma) * (b - mb) for a, b in zip(ra, rb))
    want = cov / math.sqrt(sum((a - ma) ** 2 for a in ra) * sum((b - mb) ** 2 for b in rb))
    assert got == pytest.approx(want, abs=1e-12)


# ------------------------------------------------------------------ losses


@st.composite
def loss_batches(draw, max_batch: int = 6) -> tuple[torch.Tensor, list[int], list[int]]:
    """(features [B, V, D] float64, integer targets [B] with ties, a permutation of the batch)."""
    views = draw(st.integers(1, 2))
    batch = draw(st.integers(2 if views == 1 else 1, max_batch))
    seed = draw(st.integers(0, 2**16))
    feats = torch.from_numpy(gaussian(seed, batch, views, draw(st.integers(2, 4))))
    y = draw(st.lists(st.integers(0, 4), min_size=batch, max_size=batch))
    perm = draw(st.permutations(range(batch)))
    return feats, y, list(perm)


@FEW
@given(loss_batches(), st.sampled_from(["l2", "cosine"]), st.integers(-64, 64), st.sampled_from([0.5, 1.0, 4.0]))
def test_rnc_permutation_shift_and_scale_invariance(case, similarity: str, shift: int, scale: float) -> None:
    x, y, perm = case
    loss = RnCLoss(temperature=0.7, similarity=similarity)
    yt = torch.tensor(y, dtype=torch.float64)
    base = loss(x, yt)
    assert torch.isfinite(base)
    assert loss(x[perm], yt[perm]).item() == pytest.approx(base.item(), abs=1e-10)
    # only the order of label distances matters: a shift, or a positive scale (exact in binary), changes nothing
    assert loss(x, yt + shift).item() == pytest.approx(base.item(), abs=1e-10)
    assert loss(x, yt * scale).item() == pytest.approx(base.item(), abs=1e-10)


@FEW
@given(loss_batches(), st.sampled_from(["out", "in"]), st.sampled_from(["all", "one"]), st.data())
def test_supcon_permutation_and_relabelling_invariance(case, variant: str, mode: str, data) -> None:
    x, y, perm = case
    loss = SupConLoss(temperature=0.3, variant=variant, contrast_mode=mode)
    labels = torch.tensor(y)
    base = loss(x, labels)
    assert torch.isfinite(base)
    assert loss(x[perm], labels[perm]).item() == pytest.approx(base.item(), abs=1e-10)
    new_names = data.draw(st.lists(st.integers(0, 1000), min_size=5, max_size=5, unique=True))
    relabelled = torch.tensor([new_names[c] for c in y])
    assert loss(x, relabelled).item() == pytest.approx(base.item(), abs=1e-10)


@pytest.mark.parametrize("batch, views", [(2, 1), (1, 2), (4, 2), (5, 1)])
def test_losses_stay_finite_on_degenerate_batches(batch: int, views: int) -> None:
    """Identical features, one label / one target for all, every label distinct: finite loss and gradient."""
    for feats in (torch.ones(batch, views, 3, dtype=torch.float64), torch.zeros(batch, views, 3, dtype=torch.float64),
                  torch.from_numpy(gaussian(batch, batch, views, 3))):
        for labels in (torch.zeros(batch, dtype=torch.long), torch.arange(batch)):
            for loss in (SupConLoss(variant="out"), SupConLoss(variant="in"), RnCLoss(), RnCLoss(similarity="cosine")):
                x = feats.clone().requires_grad_(True)
                value = loss(x, labels.to(torch.float64) if isinstance(loss, RnCLoss) else labels)
                (grad,) = torch.autograd.grad(value, x)
                assert torch.isfinite(value) and torch.isfinite(grad).all(), (loss, feats[0, 0], labels)


# ------------------------------------------------------------------ EEG windows


def windows_loop(t: int, w: int, s: int, o: int) -> list[int]:
    starts, start = [], o
    while start + w <= t:
        starts.append(start)
        start += s
    return starts


@PROPS
@given(st.integers(0, 3000), st.integers(1, 400), st.integers(1, 400), st.integers(0, 500),
       st.sampled_from([1.0, 100.0, 128.0, 250.0, 256.0, 333.3, 1000.0]))
def test_window_count_closed_form_in_samples(t: int, w: int, s: int, o: int, sfreq: float) -> None:
    starts = make_windows(t, sfreq, w / sfreq, s / sfreq, o / sfreq)
    n = (t - o - w) // s + 1 if t - o >= w else 0
    assert starts.dtype == np.int64 and len(starts) == n
    assert starts.tolist() == [o + k * s for k in range(n)] == windows_loop(t, w, s, o)
    assert all(0 <= a and a + w <= t for a in starts)
    x = np.arange(2 * t, dtype=np.float64).reshape(2, t)
    cut = slice_windows(x, starts, w)
    assert cut.shape == (n, 2, w)
    for a, win in zip(starts, cut):
        assert np.array_equal(win, x[:, a:a + w])


@PROPS
@given(st.integers(0, 5000), st.floats(0.01, 20.0), st.floats(0.01, 20.0), st.floats(0.0, 10.0),
       st.floats(1.0, 1000.0))
def test_window_count_for_any_seconds_and_rate(t: int, window_s: float, stride_s: float, offset_s: float,
                                               sfreq: float) -> None:
    w, s, o = (int(round(v * sfreq)) for v in (window_s, stride_s, offset_s))
    assume(w >= 1 and s >= 1)
    starts = make_windows(t, sfreq, window_s, stride_s, offset_s)
    assert starts.tolist() == windows_loop(t, w, s, o)


@FEW
@given(st.integers(20, 400), st.integers(5, 60), st.integers(1, 60), st.integers(0, 40),
       st.sampled_from([50.0, 100.0, 128.0]))
def test_eeg_plugin_decoder_cuts_the_signal_it_is_given(t: int, w: int, s: int, o: int, sfreq: float) -> None:
    """The plug-in's decoder (read -> pick channels -> windows) on a synthetic mne Raw without filters:
    each window is the recording's own samples at O + kS, channels in the spec's order."""
    import mne

    from supemb import modalities
    from supemb.errors import UserError
    from supemb.modalities.eeg import OPS, steps_for
    from supemb.preprocess.eeg import EEGSpec
    from supemb.preprocess.steps import Pipeline

    spec = EEGSpec(channels=("CZ", "C3"), sfreq=sfreq, l_freq=None, h_freq=None, scaling="fixed", unit_uv=1.0,
                   clip_uv=1e6, window_s=w / sfreq, stride_s=s / sfreq, offset_s=o / sfreq)
    decode = modalities.get("eeg").decoder(Pipeline("eeg", steps_for(spec), OPS))
    x = np.stack([np.arange(t) + 1000.0 * c for c in range(3)])  # microvolts, every sample distinct
    raw = mne.io.RawArray(x * 1e-6, mne.create_info(["C3", "C4", "Cz"], sfreq, "eeg"), verbose="error")
    want = windows_loop(t, w, s, o)
    if not want:
        with pytest.raises(UserError, match="too short"):
            decode(raw)
        return
    got = decode(raw)
    assert got.shape == (len(want), 2, w) and got.dtype == np.float32
    for a, win in zip(want, got):
        np.testing.assert_allclose(win, x[[2, 0], a:a + w], atol=1e-3)


# ------------------------------------------------------------------ splits


def check_documented_sizes(splits: list[str], val: float, test: float) -> None:
    """The docstring's rule: round(n * frac) items to val and to test, keeping at least one training
    item; when the rounded sizes leave none, val and test give way until exactly one is left."""
    n = len(splits)
    if n == 0:
        return
    n_val, n_test = splits.count("val"), splits.count("test")
    assert n_val + n_test + splits.count("train") == n
    if round(n * val) + round(n * test) < n:
        assert (n_val, n_test) == (round(n * val), round(n * test))
    else:
        assert splits.count("train") == 1 and n_val <= round(n * val) and n_test <= round(n * test)


fractions = st.tuples(st.sampled_from([0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.45]),
                      st.sampled_from([0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.45]))


@PROPS
@given(st.integers(0, 60), fractions, st.integers(0, 2**31))
def test_split_labels_sizes_and_determinism(n: int, fracs, seed: int) -> None:
    val, test = fracs
    labels = split_labels(n, val_frac=val, test_frac=test, seed=seed)
    assert len(labels) == n and set(labels) <= set(SPLITS)  # complete: one split per item, nothing else
    check_documented_sizes(labels, val, test)
    assert labels == split_labels(n, val_frac=val, test_frac=test, seed=seed)
    if n >= 20 and labels.count("train") < n:  # the seed decides which items: three seeds, not one draw
        others = [split_labels(n, val_frac=val, test_frac=test, seed=seed + d) for d in (1, 2)]
        assert any(o != labels for o in others)


@st.composite
def image_records(draw) -> list[ImageRecord]:
    n = draw(st.integers(1, 40))
    classes = draw(st.lists(st.sampled_from("abcd"), min_size=n, max_size=n))
    fixed = draw(st.lists(st.sampled_from([None, None, None, "train", "val", "test"]), min_size=n, max_size=n))
    return [ImageRecord(Path(f"img{i:03d}.png"), c, f) for i, (c, f) in enumerate(zip(classes, fixed))]


@PROPS
@given(image_records(), fractions, st.integers(0, 1000), st.booleans(), st.randoms(use_true_random=False))
def test_assign_splits_disjoint_complete_seeded_and_order_free(records, fracs, seed: int, stratify: bool,
                                                                rnd) -> None:
    val, test = fracs
    full = assign_splits(records, val_frac=val, test_frac=test, seed=seed, stratify=stratify)
    out = assign_splits(records, val_frac=val, test_frac=test, seed=seed, stratify=stratify, val_from_train=False)
    if any(r.split == "val" for r in out) or val == 0:
        assert full == out  # val drawn as documented: nothing taken from train
    else:  # no val: only training items change, to val (at least one where two or more) or a drawn one to test
        changed = [(o, f) for o, f in zip(out, full) if o.split != f.split]
        assert all(o.split == "train" and f.split in ("val", "test") for o, f in changed)
        assert all(f.split == "val" for (o, f), r in zip(zip(out, full), records) if o != f and r.split == "train")
        assert any(f.split == "val" for f in full) or sum(o.split == "train" for o in out) <= (
            len({o.target for o in out if o.split == "train"}) if stratify else 1)
    assert [r.path for r in out] == [r.path for r in records] and [r.target for r in out] == [r.target for r in records]
    assert all(r.split in SPLITS for r in out)  # complete, and one split each: disjoint
    assert all(o.split == r.split for o, r in zip(out, records) if r.split is not None)  # given splits kept
    assert out == assign_splits(records, val_frac=val, test_frac=test, seed=seed, stratify=stratify,
                                val_from_train=False)
    shuffled = list(records)
    rnd.shuffle(shuffled)
    for fallback, want in ((False, out), (True, full)):
        again = {r.path: r.split for r in assign_splits(shuffled, val_frac=val, test_frac=test, seed=seed,
                                                        stratify=stratify, val_from_train=fallback)}
        assert again == {r.path: r.split for r in want}
    drawn = [(o, r) for o, r in zip(out, records) if r.split is None]
    groups = sorted({o.target for o, _ in drawn}) if stratify else [None]
    for c in groups:
        members = [o for o, _ in drawn if c is None or o.target == c]
        splits = [o.split for o in members]
        check_documented_sizes(splits, val, test)
        m = len(members)
        if stratify and round(m * val) >= 1 and round(m * test) >= 1 and round(m * val) + round(m * test) < m:
            assert "val" in splits and "test" in splits  # a class large enough reaches val and test
