"""Learning curves read back from a run directory (SB3's progress CSVs, else TensorBoard events)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

CURVE_TAG = "rollout/ep_rew_mean"
Curve = tuple[np.ndarray, np.ndarray]


def read_learning_curve(run_dir: str | Path, tag: str = CURVE_TAG) -> Curve | None:
    """(timesteps, values) of ``tag`` from a run: SB3's ``progress*.csv`` if present, else TensorBoard events.

    CSV is preferred because it needs no TensorBoard parsing. Searches ``run_dir`` recursively; returns
    None when the run logged no such scalar (e.g. no episode finished within a tiny budget).
    """
    run_dir = Path(run_dir)
    # train_run writes logs/progress.csv, plus logs/progress-resumed-<step>.csv per resume: join them.
    parts = [c for p in sorted(run_dir.rglob("progress*.csv")) if (c := _curve_from_csv(p, tag)) is not None]
    if parts:
        steps = np.concatenate([c[0] for c in parts])
        vals = np.concatenate([c[1] for c in parts])
        steps, first = np.unique(steps, return_index=True)  # sorted; a step logged twice counts once
        return steps, vals[first]
    event_dirs = sorted({p.parent for p in run_dir.rglob("events.out.tfevents.*")})
    for d in event_dirs:
        curve = _curve_from_events(d, tag)
        if curve is not None:
            return curve
    return None


def _curve_from_csv(path: Path, tag: str) -> Curve | None:
    steps, vals = [], []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            v, s = row.get(tag, ""), row.get("time/total_timesteps", "")
            if v not in ("", None) and s not in ("", None):
                steps.append(float(s))
                vals.append(float(v))
    return (np.array(steps), np.array(vals)) if steps else None


def _curve_from_events(path: Path, tag: str) -> Curve | None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return None
    events = acc.Scalars(tag)
    if not events:
        return None
    order = np.argsort([e.step for e in events], kind="stable")
    steps = np.array([events[i].step for i in order], dtype=np.float64)
    vals = np.array([events[i].value for i in order], dtype=np.float64)
    return steps, vals
