"""The served ± of a value, calibrated on validation (`supemb.predict.calibration`), and
the run -> export -> bundle path that carries the scale."""

from __future__ import annotations

import numpy as np
import pytest

from supemb.predict.calibration import COVERAGE, coverage_of, uncertainty_scale


def test_the_scale_is_the_smallest_that_covers_the_share() -> None:
    rng = np.random.default_rng(0)
    unc = rng.uniform(0.5, 2.0, 200)
    err = rng.normal(0.0, 3.0, 200) * unc  # errors three times the spread: the ± claims too much
    s = uncertainty_scale(err, unc)
    assert 2.0 < s < 4.5
    assert coverage_of(err, s * unc) >= COVERAGE
    assert coverage_of(err, 0.999 * s * unc) < COVERAGE  # any smaller scale covers less
    assert uncertainty_scale(err, 2 * unc) == pytest.approx(s / 2)  # scaling the spread scales it back
    s90 = uncertainty_scale(err, unc, coverage=0.9)
    assert s90 > s and coverage_of(err, s90 * unc) >= 0.9


def test_a_too_wide_spread_is_narrowed() -> None:
    err, unc = np.array([0.1, -0.2, 0.3, 0.1, 0.05]), np.full(5, 10.0)
    s = uncertainty_scale(err, unc)
    assert s < 0.05 and coverage_of(err, s * unc) == 0.8  # 4 of 5 errors: the first share >= 0.6827


def test_items_the_scale_cannot_move_are_left_out() -> None:
    # zero spread (every neighbour agreed): no scale widens it, so it does not count; counted, the two
    # would put an infinite ratio at the 68 % quantile of five
    assert uncertainty_scale([5.0, 4.0, 1.0, 2.0, 3.0], [0.0, 0.0, 1.0, 1.0, 1.0]) == pytest.approx(3.0)
    assert uncertainty_scale([1.0, 2.0], [0.0, 0.0]) == 1.0  # nothing to measure: served unchanged
    assert uncertainty_scale([0.0, 0.0], [1.0, 2.0]) == 1.0  # no error to scale to
    assert uncertainty_scale([], []) == 1.0


def test_coverage_counts_errors_inside() -> None:
    assert coverage_of([1.0, -2.0, 3.0, 0.0], [1.0, 1.0, 3.5, 0.0]) == 0.75  # on the edge counts as inside
    assert np.isnan(coverage_of([], []))


@pytest.mark.parametrize("call, message", [
    (lambda: uncertainty_scale([1.0], [1.0, 2.0]), "differ in length"),
    (lambda: uncertainty_scale([1.0], [-1.0]), ">= 0"),
    (lambda: uncertainty_scale([np.nan], [1.0]), "finite"),
    (lambda: coverage_of([1.0], [np.inf]), "finite"),
    (lambda: uncertainty_scale([1.0], [1.0], coverage=1.0), "coverage must be between 0 and 1"),
    (lambda: uncertainty_scale([1.0], [1.0], coverage=0.0), "coverage must be between 0 and 1"),
])
def test_bad_input_is_refused(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
