"""How far to trust a served value's ± : the scale that calibrates it, and its coverage.

Numpy only. The kNN spread of a value (`supemb.predict.neighbours.predict_inputs`)
measures how much the neighbours disagree, not how wrong the prediction is: with
sharp kNN weights a few neighbours carry the vote and the spread shrinks while
the error does not. So the trainer scales it on its validation split, once the
kNN settings are chosen: the scale is the `COVERAGE` quantile of |error| / spread,
which makes that fraction of validation errors fall inside the served ± (one
standard deviation's worth for a normal error). model.json records the scale
as `knn_uncertainty_scale`, the manifest as `knn.uncertainty_scale`, and
bundles multiply the spread by it (1 where absent: bundles written before).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

COVERAGE = 0.6827  # the share of a normal error within one standard deviation


def _pair(errors: npt.ArrayLike, uncertainty: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    e = np.abs(np.asarray(errors, dtype=np.float64)).ravel()
    u = np.asarray(uncertainty, dtype=np.float64).ravel()
    if e.shape != u.shape:
        raise ValueError(f"errors and uncertainty differ in length: {len(e)} and {len(u)}")
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(u))) or np.any(u < 0):
        raise ValueError("errors must be finite and uncertainties finite and >= 0")
    return e, u


def uncertainty_scale(errors: npt.ArrayLike, uncertainty: npt.ArrayLike, coverage: float = COVERAGE) -> float:
    """The factor s for which a `coverage` share of |errors| [n] fall within s * uncertainty [n].

    Items with zero uncertainty (every neighbour agreed) cannot be scaled and are
    left out. 1.0 when nothing can be measured (no item with uncertainty > 0, or
    all their errors 0), so an uncalibrated ± is served unchanged."""
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be between 0 and 1, got {coverage!r}")
    e, u = _pair(errors, uncertainty)
    keep = u > 0
    if not keep.any():
        return 1.0
    s = float(np.quantile(e[keep] / u[keep], coverage, method="inverted_cdf"))
    return s * (1 + 1e-9) if s > 0 else 1.0  # a hair above: s * u of that item is not below its error


def prior_halfwidth(targets: npt.ArrayLike, coverage: float = COVERAGE) -> float:
    """The ± of knowing only the gallery's targets [n]: the `coverage` quantile of |target - their median|.

    A bundle serves at least this for an input flagged unfamiliar: far from the gallery the kNN
    weights sharpen onto one neighbour and the calibrated spread can shrink to 0, while the input
    could have any of the gallery's values."""
    t = np.asarray(targets, dtype=np.float64).ravel()
    return float(np.quantile(np.abs(t - np.median(t)), coverage)) if len(t) else 0.0


def coverage_of(errors: npt.ArrayLike, uncertainty: npt.ArrayLike) -> float:
    """The share of |errors| [n] within their uncertainty [n] (NaN for no items)."""
    e, u = _pair(errors, uncertainty)
    return float(np.mean(e <= u)) if len(e) else float("nan")
