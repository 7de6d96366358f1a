"""The comparison's figures: learning curves with confidence bands, OOD bars with CIs (matplotlib, Agg)."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rims_rl.app.atomic import atomic_write_bytes
from rims_rl.app.curves import Curve
from rims_rl.app.stats import stratified_bootstrap_ci
from rims_rl.app.summary import agents_in, env_label


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve_band(
    curves: Sequence[Curve], n_points: int = 100, reps: int = 500, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """IQM across runs on a shared timestep grid with a 95% bootstrap band (runs resampled).

    Runs are linearly interpolated onto the grid, which ends where the shortest run ends so every
    point averages the same runs.
    """
    curves = [c for c in curves if c is not None and len(c[0])]
    if not curves:
        empty = np.zeros(0)
        return empty, empty, empty, empty
    start = max(float(c[0][0]) for c in curves)
    end = min(float(c[0][-1]) for c in curves)
    grid = np.linspace(start, end, n_points) if end > start else np.array([end])
    ys = np.stack([np.interp(grid, c[0], c[1]) for c in curves], axis=0)  # (runs, points)
    point, low, high = np.empty(grid.size), np.empty(grid.size), np.empty(grid.size)
    for j in range(grid.size):
        ci = stratified_bootstrap_ci(ys[:, j], "iqm", reps=reps, seed=seed)
        point[j], low[j], high[j] = ci.point, ci.low, ci.high
    return grid, point, low, high


def plot_learning_curves(
    curves: Mapping[str, Sequence[Curve]],
    path: str | Path,
    title: str = "Training return",
    ylabel: str = "episode return (rollout/ep_rew_mean)",
    seed: int = 0,
) -> Path | None:
    """One line per agent (IQM over seeds) with a shaded 95% CI band; None when no agent has a curve."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    drawn = False
    for i, (agent, runs) in enumerate(curves.items()):
        grid, point, low, high = curve_band(runs, seed=seed)
        if not grid.size:
            continue
        color = f"C{i}"
        n = sum(1 for c in runs if c is not None and len(c[0]))
        ax.plot(grid, point, color=color, label=f"{agent} (n={n})", marker="o" if grid.size == 1 else None)
        ax.fill_between(grid, low, high, color=color, alpha=0.25, linewidth=0)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("timesteps")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, ax, path)


def plot_ood_bars(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    stat: str = "iqm",
    title: str = "Final evaluation return per env (IQM, 95% CI)",
) -> Path | None:
    """Grouped bars: one group per env (train env first), agents side by side, CI error bars."""
    rows = [r for r in rows if not math.isnan(float(r[stat]))]
    if not rows:
        return None
    plt = _plt()
    envs = list(dict.fromkeys(env_label(r, with_id=False) for r in rows))
    agents = agents_in(rows)
    width = 0.8 / max(len(agents), 1)
    fig, ax = plt.subplots(figsize=(max(6.4, 1.2 * len(envs) * max(len(agents), 1) * 0.6 + 2), 4.0))
    x = np.arange(len(envs))
    for i, agent in enumerate(agents):
        pts, lo, hi = np.full(len(envs), np.nan), np.zeros(len(envs)), np.zeros(len(envs))
        for r in rows:
            if r["agent"] != agent:
                continue
            j = envs.index(env_label(r, with_id=False))
            pts[j] = float(r[stat])
            lo[j] = max(float(r[stat]) - float(r[f"{stat}_lo"]), 0.0)
            hi[j] = max(float(r[f"{stat}_hi"]) - float(r[stat]), 0.0)
        offset = (i - (len(agents) - 1) / 2) * width
        ax.bar(x + offset, pts, width, yerr=np.stack([lo, hi]), capsize=3, label=agent, color=f"C{i}")
    ax.set_xticks(x)
    ax.set_xticklabels(envs, rotation=30 if len(envs) > 4 else 0, ha="right" if len(envs) > 4 else "center")
    ax.set_ylabel(f"return ({stat.upper() if stat == 'iqm' else stat})")
    ax.set_title(title)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, ax, path)


def plot_train_vs_ood(
    points: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]],
    thresholds: Mapping[str, float],
    path: str | Path,
) -> Path | None:
    """One panel per suite: each run's training-env return (x) against its OOD return (y), agents in
    colours, the suite's equal-return threshold as a dashed line; shows OOD at equal training return."""
    suites = [s for s, by_agent in points.items() if any(by_agent.values())]
    if not suites:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(suites), figsize=(4.2 * len(suites), 3.8), squeeze=False)
    agents = list(dict.fromkeys(a for s in suites for a in points[s]))
    for ax, suite in zip(axes[0], suites, strict=True):
        for agent, pts in points[suite].items():
            if pts:
                xy = np.asarray(pts, dtype=np.float64)
                ax.scatter(xy[:, 0], xy[:, 1], s=22, alpha=0.8, label=agent, color=f"C{agents.index(agent)}")
        if suite in thresholds:
            ax.axvline(thresholds[suite], color="black", linestyle="--", linewidth=0.8)
        ax.set_title(suite)
        ax.set_xlabel("training-env return")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("OOD return (mean over variants)")
    return _save(fig, axes[0][-1], path)


def _save(fig: Any, ax: Any, path: str | Path) -> Path:
    """Legend, tight layout, PNG at 110 dpi, figure closed (so many reports do not leak figures)."""
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    _plt().close(fig)
    return atomic_write_bytes(path, buf.getvalue())  # a stop mid-write keeps the previous figure
