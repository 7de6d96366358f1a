"""Robust statistics (rims_rl.app.stats) against hand-computed values and bootstrap properties."""

from __future__ import annotations

import numpy as np
import pytest

from rims_rl.app.stats import (
    CI,
    aggregate,
    iqm,
    mean,
    median,
    optimality_gap,
    probability_of_improvement,
    probability_of_improvement_ci,
    stratified_bootstrap_ci,
    summarize_scores,
)


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ([1, 2, 3, 4, 5, 6, 7, 100], 4.5),  # trims 2 each end: mean(3, 4, 5, 6)
        (list(range(10)), 4.5),  # trims int(2.5) = 2 each end: mean(2..7)
        ([10, 1, 2, 3], 2.5),  # trims 1 each end: mean(2, 3)
        ([1, 2, 3], 2.0),  # fewer than 4 scores: nothing trimmed
        ([7.0], 7.0),
        ([[1, 100], [2, 3]], 2.5),  # pooled over a (runs, tasks) matrix
        ([1, np.nan, 2, 3], 2.0),  # NaN (a missing run) ignored
    ],
)
def test_iqm_hand_computed(scores: list, expected: float) -> None:
    assert iqm(scores) == pytest.approx(expected)


def test_iqm_robust_to_one_outlier_unlike_mean() -> None:
    base = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    outlier = base[:-1] + [1000.0]
    assert iqm(outlier) == pytest.approx(iqm(base))
    assert mean(outlier) > 100


def test_other_point_statistics() -> None:
    assert mean([1, 2, 3, 10]) == pytest.approx(4.0)
    assert median([1, 2, 3, 10]) == pytest.approx(2.5)
    assert optimality_gap([0.5, 1.2, 0.8]) == pytest.approx(1 - (0.5 + 1.0 + 0.8) / 3)
    assert optimality_gap([2.0, 4.0], gamma=3.0) == pytest.approx(3 - 2.5)
    assert np.isnan(iqm([])) and np.isnan(mean([np.nan]))
    assert aggregate({"a": [1, 2], "b": [3, 100, 4, 5]}, "median") == pytest.approx(3.5)
    with pytest.raises(ValueError, match="unknown statistic"):
        aggregate([1, 2], "max")


def test_bootstrap_ci_contains_point_and_shrinks_with_more_runs() -> None:
    rng = np.random.default_rng(1)
    small = stratified_bootstrap_ci(rng.normal(size=10), "iqm")
    large = stratified_bootstrap_ci(rng.normal(size=1000), "iqm")
    for ci in (small, large):
        assert ci.low <= ci.point <= ci.high
        assert ci.confidence == 0.95
    assert (large.high - large.low) < 0.5 * (small.high - small.low)


def test_bootstrap_is_seeded() -> None:
    x = np.random.default_rng(2).normal(size=12)
    a = stratified_bootstrap_ci(x, "mean", reps=500, seed=3)
    b = stratified_bootstrap_ci(x, "mean", reps=500, seed=3)
    c = stratified_bootstrap_ci(x, "mean", reps=500, seed=4)
    assert a == b
    assert (a.low, a.high) != (c.low, c.high)
    assert a.point == c.point == pytest.approx(x.mean())


def test_bootstrap_is_stratified_by_task() -> None:
    # Resampling within each task keeps both tasks at weight 1/2, so the pooled mean never moves;
    # a pooled (unstratified) bootstrap would give a wide interval here.
    ci = stratified_bootstrap_ci({"a": [0.0, 0.0, 0.0], "b": [10.0, 10.0, 10.0]}, "mean", reps=200)
    assert (ci.point, ci.low, ci.high) == (5.0, 5.0, 5.0)
    matrix = np.array([[0.0, 10.0], [0.0, 10.0], [0.0, 10.0]])  # rliable's (runs, tasks) layout
    assert stratified_bootstrap_ci(matrix, "mean", reps=200) == ci


def test_bootstrap_edge_cases_and_callables() -> None:
    one = stratified_bootstrap_ci([0.7], "iqm")
    assert (one.point, one.low, one.high) == (0.7, 0.7, 0.7)
    empty = stratified_bootstrap_ci([], "iqm")
    assert np.isnan(empty.point) and empty.fmt() == "n/a"
    x = np.arange(9.0)
    named = stratified_bootstrap_ci(x, "mean", reps=300, seed=5)
    custom = stratified_bootstrap_ci(x, lambda v: float(np.mean(v)), reps=300, seed=5)
    assert custom.point == pytest.approx(named.point)
    assert (custom.low, custom.high) == pytest.approx((named.low, named.high))
    with pytest.raises(ValueError):
        stratified_bootstrap_ci(x, "iqm", confidence=1.5)
    assert CI(0.81234, 0.7, 0.93).fmt() == "0.81 [0.70, 0.93]"
    both = summarize_scores(x, ("iqm", "median"), reps=100)
    assert set(both) == {"iqm", "median"} and both["median"].point == 4.0


def test_probability_of_improvement_hand_computed() -> None:
    # 9 pairs: wins (1>0, 2>0, 3>0, 3>2) = 4, one tie (2=2) counts half -> 4.5 / 9.
    assert probability_of_improvement([1, 2, 3], [0, 2, 5]) == pytest.approx(0.5)
    assert probability_of_improvement([3, 4], [1, 2]) == 1.0
    assert probability_of_improvement([1, 2], [3, 4]) == 0.0
    assert probability_of_improvement([1, 1], [1, 1]) == 0.5
    ci = probability_of_improvement_ci({"a": [3, 4], "b": [1, 2]}, {"a": [1, 2], "b": [1, 2]}, reps=300)
    assert ci.point == pytest.approx((1.0 + 0.5) / 2)  # averaged over tasks
    assert ci.low <= ci.point <= ci.high
    assert np.isnan(probability_of_improvement_ci({"a": [1]}, {"b": [2]}).point)
