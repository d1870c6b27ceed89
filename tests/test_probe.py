"""The convex linear heads (supemb.train.probe) against direct solutions."""

from __future__ import annotations

import numpy as np
import pytest

from supemb.train import probe


def _regression(seed: int = 0, n: int = 300, d: int = 12, noise: float = 0.5):
    rng = np.random.default_rng(seed)
    fixed = np.random.default_rng(99)  # the same feature scales and linear map for every seed
    x = rng.normal(size=(n, d)) * fixed.uniform(0.1, 10, size=d) + fixed.normal(size=d) * 5
    w = fixed.normal(size=d)
    y = x @ w + 3.0 + noise * rng.normal(size=n)
    return x, y


def test_ridge_matches_the_normal_equations_at_the_chosen_alpha():
    x, y = _regression()
    xv, yv = _regression(seed=1)
    fit = probe.fit_ridge(x, y, xv, lambda p: -np.abs(p - yv).mean())
    # Solve the same problem directly: standardised features and targets, penalty alpha * N.
    mu, sd = x.mean(0), x.std(0)
    z = (x - mu) / sd
    t = (y - y.mean()) / y.std()
    w = np.linalg.solve(z.T @ z + fit.alpha * len(z) * np.eye(z.shape[1]), z.T @ t)
    direct = ((xv - mu) / sd) @ w * y.std() + y.mean()
    np.testing.assert_allclose(xv @ fit.weight[0] + fit.bias[0], direct, rtol=1e-8, atol=1e-8)
    assert fit.grad_norm < 1e-8  # the closed form is the minimum
    assert fit.val_score == max(fit.scores.values())
    assert fit.val_score == pytest.approx(-np.abs(direct - yv).mean())


def test_ridge_prefers_strong_regularisation_on_noise():
    rng = np.random.default_rng(3)
    x, xv = rng.normal(size=(60, 40)), rng.normal(size=(200, 40))
    y, yv = rng.normal(size=60), rng.normal(size=200)  # no signal: the best predictor is the mean
    fit = probe.fit_ridge(x, y, xv, lambda p: -np.abs(p - yv).mean())
    assert fit.alpha >= 10
    weak = min(fit.scores)
    assert fit.val_score - fit.scores[weak] > 0.05  # little regularisation overfits the noise clearly
    assert -fit.val_score < np.abs(yv - y.mean()).mean() + 0.02  # about as good as predicting the mean


def test_ridge_recovers_a_noiseless_linear_map():
    x, y = _regression(noise=0.0)
    xv, yv = _regression(seed=2, noise=0.0)
    fit = probe.fit_ridge(x, y, xv, lambda p: -np.abs(p - yv).mean())
    assert fit.alpha == min(probe.RIDGE_ALPHAS)
    np.testing.assert_allclose(xv @ fit.weight[0] + fit.bias[0], yv, atol=1e-3 * np.abs(yv).max())


def _classes(seed: int, n: int = 400, c: int = 4, d: int = 6):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(100).normal(size=(c, d)) * 3
    labels = rng.integers(0, c, size=n)
    return centres[labels] + rng.normal(size=(n, d)) + 10.0, labels


def test_logistic_converges_and_acts_on_raw_features():
    from sklearn.linear_model import LogisticRegression

    x, y = _classes(0)
    xv, yv = _classes(1)
    fit = probe.fit_logistic(x, y, 4, xv, lambda probs: float((probs.argmax(1) == yv).mean()))
    assert fit.converged and fit.n_iter < 5000
    assert fit.val_score > 0.9
    mu, sd = x.mean(0), x.std(0)
    ref = LogisticRegression(C=fit.c, max_iter=5000, tol=1e-6).fit((x - mu) / sd, y)
    np.testing.assert_allclose(xv @ fit.weight.T + fit.bias, ref.decision_function((xv - mu) / sd), atol=1e-6)


def test_logistic_never_predicts_a_class_missing_from_training():
    x, y = _classes(0, c=4)
    keep = y != 2
    xv, yv = _classes(1, c=4)
    fit = probe.fit_logistic(x[keep], y[keep], 5, xv, lambda probs: float((probs.argmax(1) == yv).mean()))
    pred = (xv @ fit.weight.T + fit.bias).argmax(1)
    assert fit.weight.shape == (5, x.shape[1])
    assert not np.isin(pred, [2, 4]).any()


def test_logistic_two_classes_gives_two_logit_rows():
    x, y = _classes(0, c=2)
    xv, yv = _classes(1, c=2)
    fit = probe.fit_logistic(x, y, 2, xv, lambda probs: float((probs.argmax(1) == yv).mean()))
    pred = (xv @ fit.weight.T + fit.bias).argmax(1)
    assert (pred == yv).mean() == pytest.approx(fit.val_score)
    assert fit.val_score > 0.95
