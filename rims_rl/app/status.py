"""``train.py status``: how far each run got, read from its directory without touching it.

A long run (the Atari campaign: hours per million steps) is stopped and resumed many times, by people
and by machines going away; this answers "where is it?" from the files alone: the state the run last
wrote, the steps in its newest readable checkpoint against its budget, and when that checkpoint was made.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from pathlib import Path

from rims_rl.app import rundir
from rims_rl.app.checkpoint import step_checkpoints
from rims_rl.app.errors import UserError
from rims_rl.app.runs import read_run_config

#: How deep below a given folder run directories are looked for: a compare's ``runs/<run>`` (2), a
#: tune's ``<agent>/config<i>/runs/<run>`` (4), one more from the runs root.
MAX_DEPTH = 5


def find_run_dirs(folder: Path) -> list[Path]:
    """``folder`` itself if it is a run directory, else the run directories below it (sorted)."""
    if rundir.is_run_dir(folder):
        return [folder]
    found: list[Path] = []
    frontier = [folder]
    for _ in range(MAX_DEPTH):
        children = [c for f in frontier if f.is_dir() and not f.is_symlink() for c in sorted(f.iterdir())]
        found += [c for c in children if c.is_dir() and rundir.is_run_dir(c)]
        frontier = [c for c in children if c.is_dir() and not rundir.is_run_dir(c)]
    return sorted(found)


def describe_run(run_dir: Path) -> str:
    """``DIR: state, steps / budget (pct), last checkpoint NAME (time)``; what cannot be read is said."""
    status = rundir.read_status(run_dir)
    state = status.state if status else "no status"
    try:
        budget: int | None = read_run_config(run_dir).timesteps
    except UserError:
        budget = None
    checkpoints = step_checkpoints(rundir.checkpoints_dir(run_dir))
    steps = max([status.num_timesteps if status else 0, *(step for step, _ in checkpoints)])
    final = rundir.final_model(run_dir)
    if state == "finished" and final.is_file():
        last = f"final model {final.name}"
        made = final.stat().st_mtime
    elif checkpoints:
        last = f"last checkpoint {rundir.CHECKPOINTS_DIR}/{checkpoints[-1][1].name}"
        made = checkpoints[-1][1].stat().st_mtime
    else:
        last, made = "no checkpoint yet", None
    when = f" ({_dt.datetime.fromtimestamp(made).isoformat(sep=' ', timespec='minutes')})" if made else ""
    of = (
        f" / {budget:,} ({100 * steps / budget:.0f}%)"
        if budget
        else " (budget unknown: config.json unreadable)"
    )
    message = f"; {status.message}" if status and status.message else ""
    return f"{run_dir}: {state}, {steps:,}{of} steps, {last}{when}{message}"


def describe_runs(folders: Iterable[Path]) -> list[str]:
    """One line per run directory found under each folder; ``UserError`` for a folder that is not there."""
    lines: list[str] = []
    for folder in folders:
        if not folder.is_dir():
            raise UserError(f"{str(folder)!r} is not a directory; give a run, compare or tune folder")
        lines += [describe_run(run) for run in find_run_dirs(folder)]
    return lines
