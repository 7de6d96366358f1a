"""Our statistics (rims_rl.app.stats, numpy only) against rliable's on the same scores.

Why keep ours: rliable pulls in arch, scipy, seaborn and pandas (its released version needs pandas < 3
to import), while ours is numpy-only, vectorised, and what every report is built with; this test pins
ours to rliable's definitions. Point estimates must agree to 1e-6; bootstrap intervals come from
different random resamples, so they agree to within their Monte-Carlo error (checked at 5000 reps).
One definition differs, so it is not compared: our median is the median of all run scores pooled (what
the report's "Median" column shows), rliable's is the median over tasks of the per-task mean scores.
"""

from __future__ import annotations

import numpy as np
import pytest

from rims_rl.app import stats

rliable = pytest.importorskip("rliable")
from rliable import library as rly  # noqa: E402
from rliable import metrics  # noqa: E402

RNG = np.random.default_rng(1)
X = RNG.random((7, 3))  # 7 runs x 3 tasks, as rliable takes them
Y = RNG.random((7, 3)) * 0.9


def test_point_estimates_equal_rliables() -> None:
    assert stats.iqm(X) == pytest.approx(metrics.aggregate_iqm(X), abs=1e-6)
    assert stats.mean(X) == pytest.approx(metrics.aggregate_mean(X), abs=1e-6)
    assert stats.optimality_gap(X) == pytest.approx(metrics.aggregate_optimality_gap(X, 1.0), abs=1e-6)
    per_task = stats.probability_of_improvement_ci(
        {t: X[:, t] for t in range(3)}, {t: Y[:, t] for t in range(3)}, reps=10
    )
    assert per_task.point == pytest.approx(metrics.probability_of_improvement(X, Y), abs=1e-6)


def test_bootstrap_intervals_agree_within_monte_carlo_error() -> None:
    ours = stats.stratified_bootstrap_ci(X, "iqm", reps=5000, seed=0)
    iqm = lambda s: np.array([metrics.aggregate_iqm(s)])  # noqa: E731
    _, theirs = rly.get_interval_estimates({"a": X}, iqm, reps=5000)
    low, high = theirs["a"][:, 0]
    assert abs(ours.low - low) < 0.02 and abs(ours.high - high) < 0.02
