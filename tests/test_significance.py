"""experiments/significance.py: the paired bootstrap behind docs/significance.md, and how each
comparison picks its rows."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
significance = pytest.importorskip("significance")


def _draw(c, p, draws=2000):
    return significance.bootstrap(np.asarray(c, float), np.asarray(p, float), draws, np.random.default_rng(0))


def test_equal_errors_give_ratio_one_in_every_draw():
    err = np.random.default_rng(1).exponential(size=(3, 50))
    r = _draw(err, err)
    assert r["ratio"] == pytest.approx(1.0) and r["low"] == pytest.approx(1.0) and r["high"] == pytest.approx(1.0)
    assert r["share_contrastive_ahead"] == 0.0 and r["per_seed_ratio"] == pytest.approx([1.0] * 3)


def test_ratio_averages_seeds_before_dividing():
    p = np.array([[1.0] * 4, [2.0] * 4])
    c = np.array([[0.5] * 4, [3.0] * 4])  # seed ratios 0.5 and 1.5 (their mean: 1); MAEs 1.75 against 1.5
    r = _draw(c, p)
    assert r["ratio"] == pytest.approx(1.75 / 1.5) and r["per_seed_ratio"] == pytest.approx([0.5, 1.5])
    assert r["mae_contrastive"] == pytest.approx(1.75) and r["n_inputs"] == 4


def test_draws_are_paired_over_inputs():
    # errors vary a lot between inputs, and the contrastive side is always 10 % lower on the same
    # input: paired draws keep the ratio at 0.9; unpaired ones would spread it widely.
    p = np.random.default_rng(2).exponential(size=(1, 40)) * 10
    r = _draw(0.9 * p, p)
    assert r["low"] == pytest.approx(0.9) and r["high"] == pytest.approx(0.9)
    assert r["share_contrastive_ahead"] == 1.0


def test_interval_holds_the_ratio_and_narrows_with_more_inputs():
    rng = np.random.default_rng(3)
    widths = []
    for n in (30, 1200):
        p = rng.exponential(size=(3, n))
        c = p * rng.uniform(0.7, 1.3, size=(3, n))
        r = _draw(c, p)
        assert r["low"] < r["ratio"] < r["high"]
        widths.append(r["high"] - r["low"])
    assert widths[1] < widths[0] / 3


def test_rows_chosen_per_comparison():
    def errs(val, test):
        return {"val": {k: np.full(5, v) for k, v in val.items()}, "test": {k: np.full(5, v) for k, v in test.items()}}
    a, b = ("plain", "head"), ("plain", "knn")
    other = {("plain", "linear"): 9.0}
    seeds = [errs({a: 1.0, b: 2.0, **other}, {a: 3.0, b: 1.0, **other}),
             errs({a: 2.0, b: 1.0, **other}, {a: 3.0, b: 1.0, **other})]
    assert significance.choose(seeds, "plain", "validation", "test") == [a, b]  # per seed, by validation
    assert significance.choose(seeds, "plain", "evidence", "test") == [b, b]  # one row, by mean test MAE
    assert significance.choose(seeds, "plain", "knn", "test") == [b, b]
