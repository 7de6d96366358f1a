"""Learning curves read back from a run directory (SB3's progress CSVs, else TensorBoard events)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CURVE_TAG = "rollout/ep_rew_mean"
Curve = tuple[np.ndarray, np.ndarray]


def read_learning_curve(run_dir: str | Path, tag: str = CURVE_TAG) -> Curve | None:
    """(timesteps, values) of ``tag`` from a run: SB3's ``progress*.csv`` if present, else TensorBoard events.

    CSV is preferred because it needs no TensorBoard parsing. Searches ``run_dir`` recursively; returns
    None when the run logged no such scalar (e.g. no episode finished within a tiny budget).
    """
    return read_learning_curves(run_dir, (tag,)).get(tag)


def read_learning_curves(run_dir: str | Path, tags: Sequence[str]) -> dict[str, Curve]:
    """``read_learning_curve`` of several tags, reading each log file once; tags the run did not log are
    left out."""
    run_dir = Path(run_dir)
    # train_run writes logs/progress.csv, plus logs/progress-resumed-<step>.csv per resume: join them.
    per_file = [_curves_from_csv(p, tags) for p in sorted(run_dir.rglob("progress*.csv"))]
    curves: dict[str, Curve] = {}
    for tag in tags:
        parts = [c[tag] for c in per_file if tag in c]
        if parts:
            steps = np.concatenate([c[0] for c in parts])
            vals = np.concatenate([c[1] for c in parts])
            steps, first = np.unique(steps, return_index=True)  # sorted; a step logged twice counts once
            curves[tag] = (steps, vals[first])
    missing = [t for t in tags if t not in curves]
    for d in sorted({p.parent for p in run_dir.rglob("events.out.tfevents.*")}) if missing else ():
        for tag in [t for t in missing if t not in curves]:
            curve = _curve_from_events(d, tag)
            if curve is not None:
                curves[tag] = curve
    return curves


def _curves_from_csv(path: Path, tags: Sequence[str]) -> dict[str, Curve]:
    found: dict[str, tuple[list[float], list[float]]] = {t: ([], []) for t in tags}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            s = row.get("time/total_timesteps", "")
            if s in ("", None):
                continue
            for tag, (steps, vals) in found.items():
                v = row.get(tag, "")
                if v not in ("", None):
                    steps.append(float(s))
                    vals.append(float(v))
    return {t: (np.array(st), np.array(va)) for t, (st, va) in found.items() if st}


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
