"""Linear heads on frozen features, fitted to convergence by convex solvers.

Stage 2 of the two-stage recipe, and the probe every run (baselines too)
gets on its frozen encoder: a linear map from the encoder output to the
target, fitted exactly rather than by a few epochs of SGD.

- Regression: ridge regression on standardised features and targets, in
  closed form (one eigendecomposition of the D x D Gram matrix serves every
  regularisation strength). The solution is exact: the objective's gradient
  there is zero up to rounding, which `RidgeFit.grad_norm` reports.
- Classification: multinomial logistic regression with an L2 penalty
  (scikit-learn's L-BFGS), run until its gradient tolerance is met;
  `LogisticFit.converged` says whether it was.

The regularisation strength is chosen on the validation split by the
caller's score (higher is better), from a log-spaced grid. The returned
weights act on the raw features: `pred = feats @ W.T + b`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-4, 4, 17))  # relative to N (see fit_ridge)
LOGISTIC_CS = tuple(float(c) for c in np.logspace(-3, 3, 13))


@dataclass(frozen=True)
class RidgeFit:
    weight: np.ndarray  # [T, D] on raw features
    bias: np.ndarray  # [T]
    alpha: float  # the chosen strength (per sample: the penalty is alpha * N * |w|^2)
    val_score: float
    grad_norm: float  # |gradient of the ridge objective| at the solution (0 up to rounding)
    scores: dict[float, float]  # alpha -> validation score


@dataclass(frozen=True)
class LogisticFit:
    weight: np.ndarray  # [C, D] on raw features
    bias: np.ndarray  # [C]
    c: float  # inverse regularisation strength (scikit-learn's C)
    val_score: float
    converged: bool
    n_iter: int
    scores: dict[float, float]


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    return mu, np.where(sd > 1e-12, sd, 1.0)


def fit_ridge(
    x: np.ndarray, y: np.ndarray, x_val: np.ndarray, score: Callable[[np.ndarray], float],
    alphas: tuple[float, ...] = RIDGE_ALPHAS,
) -> RidgeFit:
    """Ridge regression of y [N] or [N, T] on x [N, D], alpha chosen by `score(val_pred)`.

    Minimises |Zw - t|^2 + alpha N |w|^2 over standardised features Z and
    targets t (so alpha is comparable across data sizes and scales).
    score: val predictions [N_val] (or [N_val, T]) in target units -> higher is better.
    """
    x = np.asarray(x, np.float64)
    y2 = np.asarray(y, np.float64).reshape(len(x), -1)
    mu, sd = _standardise(x)
    z = (x - mu) / sd
    ym, ys = y2.mean(axis=0), y2.std(axis=0) + 1e-12
    t = (y2 - ym) / ys
    n = len(z)
    evals, evecs = np.linalg.eigh(z.T @ z)
    proj = evecs.T @ (z.T @ t)  # [D, T]
    zv = (np.asarray(x_val, np.float64) - mu) / sd
    best: tuple[float, float, np.ndarray] | None = None
    scores: dict[float, float] = {}
    for a in alphas:
        w = evecs @ (proj / (evals + a * n)[:, None])  # [D, T]
        pred = (zv @ w) * ys + ym
        s = float(score(pred[:, 0] if y2.shape[1] == 1 and np.ndim(y) == 1 else pred))
        scores[a] = s
        if best is None or s > best[0]:
            best = (s, a, w)
    assert best is not None
    s, a, w = best
    grad = 2 * (z.T @ (z @ w - t)) + 2 * a * n * w
    weight = (w * ys[None, :] / sd[:, None]).T  # [T, D] on raw features
    bias = ym - weight @ mu
    return RidgeFit(weight, bias, a, s, float(np.linalg.norm(grad) / max(1.0, np.linalg.norm(z.T @ t))), scores)


def fit_logistic(
    x: np.ndarray, labels: np.ndarray, n_classes: int, x_val: np.ndarray, score: Callable[[np.ndarray], float],
    cs: tuple[float, ...] = LOGISTIC_CS, max_iter: int = 5000,
) -> LogisticFit:
    """Multinomial logistic regression of labels [N] on x [N, D], C chosen by `score(val_probs)`.

    score: validation class probabilities [N_val, n_classes] -> higher is better.
    Classes absent from the training labels get a bias of -1e4 (never predicted).
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(x, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    mu, sd = _standardise(x)
    z = (x - mu) / sd
    zv = (np.asarray(x_val, np.float64) - mu) / sd
    present = np.unique(labels)
    best = None
    scores: dict[float, float] = {}
    for c in cs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(C=c, max_iter=max_iter, tol=1e-6).fit(z, labels)
        w = np.zeros((n_classes, x.shape[1]))
        b = np.full(n_classes, -1e4)
        if len(present) == 2:  # scikit-learn keeps one row for two classes: logits (-f/2, f/2)
            w[present[1]], b[present[1]] = model.coef_[0] / 2, model.intercept_[0] / 2
            w[present[0]], b[present[0]] = -model.coef_[0] / 2, -model.intercept_[0] / 2
        else:
            w[present], b[present] = model.coef_, model.intercept_
        logits = zv @ w.T + b
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        s = float(score(probs))
        scores[c] = s
        n_iter = int(np.max(model.n_iter_))
        if best is None or s > best[0]:
            best = (s, c, w, b, n_iter)
    assert best is not None
    s, c, w, b, n_iter = best
    weight = w / sd[None, :]
    bias = b - weight @ mu
    return LogisticFit(weight, bias, c, s, n_iter < max_iter, n_iter, scores)
