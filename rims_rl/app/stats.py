"""Robust aggregate statistics for few-seed RL comparisons, after rliable (Agarwal et al. 2021).

With 3-10 seeds a plain mean is dominated by one lucky or unlucky run and the median is too noisy,
so the headline number is the interquartile mean (IQM: mean of the middle 50% of run scores, pooled
over tasks), reported with a 95% *stratified* bootstrap confidence interval: runs are resampled with
replacement within each task, so every task keeps its own number of runs in every replicate. A score
is one number per run and task (e.g. the mean evaluation return of that run's final policy).

Only numpy is needed (rliable/scipy are not dependencies); ``tests/test_rliable.py`` checks the
point estimates against rliable's to 1e-6 and the intervals within Monte-Carlo error. Statistics given
by name (``"iqm"``, ``"mean"``, ``"median"``, ``"optimality_gap"``) are bootstrapped vectorised; any
callable taking a 1-D array also works (looped, slower).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from rims_rl.checks import check_positive

Statistic = str | Callable[[np.ndarray], float]
# Task name -> run scores, or a (runs, tasks) matrix as rliable takes, or one task's run scores.
ScoresLike = Mapping[str, ArrayLike] | ArrayLike

__all__ = [
    "CI",
    "STATISTICS",
    "aggregate",
    "iqm",
    "mean",
    "median",
    "optimality_gap",
    "probability_of_improvement",
    "probability_of_improvement_ci",
    "stratified_bootstrap_ci",
    "summarize_scores",
]


@dataclass(frozen=True)
class CI:
    """A point estimate with its bootstrap interval ``[low, high]`` at level ``confidence``."""

    point: float
    low: float
    high: float
    confidence: float = 0.95

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat ``{prefix: point, prefix_lo: low, prefix_hi: high}`` for tables and JSON."""
        key = prefix or "point"
        return {key: self.point, f"{key}_lo": self.low, f"{key}_hi": self.high}

    def fmt(self, digits: int = 2) -> str:
        """``'0.81 [0.70, 0.93]'``: the form used in the Markdown report."""
        if np.isnan(self.point):
            return "n/a"
        return f"{self.point:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _flat(scores: ArrayLike) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64).ravel()
    return arr[~np.isnan(arr)]


def _iqm_last_axis(x: np.ndarray) -> np.ndarray:
    """IQM along the last axis, trimming ``int(0.25 n)`` scores at each end like ``scipy.stats.trim_mean``."""
    n = x.shape[-1]
    cut = int(0.25 * n)
    s = np.sort(x, axis=-1)
    return s[..., cut : n - cut].mean(axis=-1)


def _opt_gap_last_axis(x: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    return gamma - np.minimum(x, gamma).mean(axis=-1)


_BATCHED: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "iqm": _iqm_last_axis,
    "mean": lambda x: x.mean(axis=-1),
    "median": lambda x: np.median(x, axis=-1),
    "optimality_gap": _opt_gap_last_axis,
}
STATISTICS: tuple[str, ...] = tuple(_BATCHED)


def iqm(scores: ArrayLike) -> float:
    """Interquartile mean of all scores pooled: robust to outlier runs, less noisy than the median.

    Trims ``int(0.25 * n)`` from each end (as ``scipy.stats.trim_mean(x, 0.25)``, which rliable uses),
    so with fewer than 4 scores nothing is trimmed and IQM equals the mean. NaNs are ignored.
    """
    x = _flat(scores)
    return float(_iqm_last_axis(x)) if x.size else float("nan")


def mean(scores: ArrayLike) -> float:
    """Mean of all scores pooled (NaNs ignored); reported beside IQM because it is what most papers show."""
    x = _flat(scores)
    return float(x.mean()) if x.size else float("nan")


def median(scores: ArrayLike) -> float:
    """Median of all scores pooled (NaNs ignored)."""
    x = _flat(scores)
    return float(np.median(x)) if x.size else float("nan")


def optimality_gap(scores: ArrayLike, gamma: float = 1.0) -> float:
    """How far scores fall short of ``gamma`` (e.g. 1.0 = solved MiniGrid); scores above it count as gamma."""
    x = _flat(scores)
    return float(_opt_gap_last_axis(x, gamma)) if x.size else float("nan")


def aggregate(scores: ScoresLike, statistic: Statistic = "iqm") -> float:
    """``statistic`` of all run scores pooled over tasks (the point estimate that the bootstrap brackets)."""
    strata = _strata(scores)
    pooled = np.concatenate(strata) if strata else np.zeros(0)
    if callable(statistic):
        return float(statistic(pooled))
    return {"iqm": iqm, "mean": mean, "median": median, "optimality_gap": optimality_gap}[
        _check_stat(statistic)
    ](pooled)


def _check_stat(statistic: str) -> str:
    if statistic not in _BATCHED:
        raise ValueError(f"unknown statistic {statistic!r}; choose from {STATISTICS} or pass a callable")
    return statistic


def _strata(scores: ScoresLike) -> list[np.ndarray]:
    """One 1-D array of run scores per task (NaNs dropped, empty tasks dropped)."""
    if isinstance(scores, Mapping):
        groups = [_flat(v) for v in scores.values()]
    else:
        arr = np.asarray(scores, dtype=np.float64)
        if arr.ndim <= 1:
            groups = [_flat(arr)]
        elif arr.ndim == 2:  # (runs, tasks), rliable's layout
            groups = [_flat(arr[:, j]) for j in range(arr.shape[1])]
        else:
            raise ValueError(f"scores must be 1-D, (runs, tasks) or a mapping; got shape {arr.shape}")
    return [g for g in groups if g.size]


def stratified_bootstrap_ci(
    scores: ScoresLike,
    statistic: Statistic = "iqm",
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int | None = 0,
) -> CI:
    """Percentile CI of ``statistic`` from resampling runs with replacement *within each task*.

    Stratifying keeps each task's weight fixed across replicates (a plain bootstrap over the pooled
    scores could drop a task entirely). With one task this is the ordinary bootstrap. Seeded, so the
    same scores always give the same interval; a single run gives a zero-width interval.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    check_positive("reps", reps)
    strata = _strata(scores)
    if not strata:
        nan = float("nan")
        return CI(nan, nan, nan, confidence)
    point = aggregate({str(i): g for i, g in enumerate(strata)}, statistic)
    rng = np.random.default_rng(seed)
    samples = np.concatenate(
        [g[rng.integers(0, g.size, size=(reps, g.size))] for g in strata], axis=1
    )  # (reps, total runs), each task resampled on its own
    if callable(statistic):
        values = np.array([statistic(row) for row in samples], dtype=np.float64)
    else:
        values = _BATCHED[_check_stat(statistic)](samples)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return CI(point, float(low), float(high), confidence)


def probability_of_improvement(x: ArrayLike, y: ArrayLike) -> float:
    """P(X > Y) for a random run of X against a random run of Y, ties counted half (Mann-Whitney U / nm).

    0.5 means no difference; rliable reports this per task and averages over tasks.
    """
    a, b = _flat(x), _flat(y)
    if not a.size or not b.size:
        return float("nan")
    diff = a[:, None] - b[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def probability_of_improvement_ci(
    x: Mapping[str, ArrayLike] | ArrayLike,
    y: Mapping[str, ArrayLike] | ArrayLike,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int | None = 0,
) -> CI:
    """Average over tasks of P(X > Y), with a bootstrap CI resampling each agent's runs within each task.

    ``x`` and ``y`` are task -> run scores (or one task's run scores); only tasks present in both count.
    """
    xs = x if isinstance(x, Mapping) else {"task": x}
    ys = y if isinstance(y, Mapping) else {"task": y}
    tasks = [t for t in xs if t in ys and _flat(xs[t]).size and _flat(ys[t]).size]
    if not tasks:
        nan = float("nan")
        return CI(nan, nan, nan, confidence)
    point = float(np.mean([probability_of_improvement(xs[t], ys[t]) for t in tasks]))
    rng = np.random.default_rng(seed)
    per_task = []
    for t in tasks:
        a, b = _flat(xs[t]), _flat(ys[t])
        ra = a[rng.integers(0, a.size, size=(reps, a.size))]
        rb = b[rng.integers(0, b.size, size=(reps, b.size))]
        diff = ra[:, :, None] - rb[:, None, :]
        per_task.append((diff > 0).mean(axis=(1, 2)) + 0.5 * (diff == 0).mean(axis=(1, 2)))
    values = np.mean(per_task, axis=0)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return CI(point, float(low), float(high), confidence)


def summarize_scores(
    scores: ScoresLike,
    statistics: Sequence[str] = ("iqm", "mean", "median"),
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int | None = 0,
) -> dict[str, CI]:
    """Several statistics with CIs from the *same* resampled runs seed, for one table row."""
    return {s: stratified_bootstrap_ci(scores, s, reps, confidence, seed) for s in statistics}
