"""The run directory: its file names, its status record and its lock, owned here and nowhere else.

::

    <run_dir>/
        config.json              the resolved RunConfig (rims_rl.app.config)
        status.json              RunStatus: running | finished | interrupted | diverged | failed
        logs/progress*.csv       SB3's scalars (one file per start, so a resume does not overwrite)
        tb/                      TensorBoard
        checkpoints/step_<n>.zip periodic checkpoints; checkpoints/latest names the newest
        model.zip                the final model
        .lock                    held (an OS file lock) while a process trains in the directory
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from rims_rl.app.atomic import atomic_write_json
from rims_rl.app.errors import UserError
from rims_rl.envs.untrusted import load_json

CONFIG_NAME = "config.json"
STATUS_NAME = "status.json"
FINAL_MODEL = "model.zip"
CHECKPOINTS_DIR = "checkpoints"
LOGS_DIR = "logs"
TB_DIR = "tb"
LOCK_NAME = ".lock"

State = Literal["running", "finished", "interrupted", "diverged", "failed"]

#: The environment variable naming where runs go by default (``runs_root``).
RUNS_ENV = "RIMS_RL_RUNS"


def runs_root() -> Path:
    """Where runs, comparisons and tunings go unless told: ``$RIMS_RL_RUNS`` when set, else ``runs/``
    in the current directory. A long run belongs outside a checkout that may be recreated:
    ``export RIMS_RL_RUNS=~/rims-rl-runs`` once, and every command's default follows it."""
    return Path(os.path.expanduser(os.environ.get(RUNS_ENV) or "runs"))


@dataclass(frozen=True)
class RunStatus:
    """What happened to a run last (a SIGKILLed run stays ``running``)."""

    state: State
    """running, finished, interrupted (Ctrl-C), diverged (NaN/inf) or failed (an error; see message)."""
    num_timesteps: int
    """Environment steps trained when the state was written."""
    checkpoint: str | None = None
    """The checkpoint that holds those steps, if any."""
    message: str = ""
    """Why the run stopped, for the states that are not running or finished."""
    time: str = ""
    """When the state was written (ISO 8601, local time)."""


def config_path(run_dir: str | Path) -> Path:
    """``<run_dir>/config.json``."""
    return Path(run_dir) / CONFIG_NAME


def final_model(run_dir: str | Path) -> Path:
    """``<run_dir>/model.zip`` (it may not exist yet)."""
    return Path(run_dir) / FINAL_MODEL


def checkpoints_dir(run_dir: str | Path) -> Path:
    """``<run_dir>/checkpoints``."""
    return Path(run_dir) / CHECKPOINTS_DIR


def is_run_dir(path: str | Path) -> bool:
    """True when ``path`` holds a run's ``config.json`` (False for a path that cannot be one, e.g. a name
    too long, which ``Path.is_file`` raises for)."""
    try:
        return config_path(path).is_file()
    except OSError:
        return False


def write_status(
    run_dir: str | Path,
    state: State,
    num_timesteps: int,
    checkpoint: Path | None,
    message: str = "",
    atomic: bool = True,
) -> RunStatus:
    """Record the run's state in ``status.json``: atomically, or with ``atomic=False`` in place (on a
    full disk, where a temp file may not fit but rewriting a few hundred bytes still does)."""
    status = RunStatus(
        state=state,
        num_timesteps=int(num_timesteps),
        checkpoint=str(checkpoint) if checkpoint else None,
        message=message,
        time=_dt.datetime.now().isoformat(timespec="seconds"),
    )
    path = Path(run_dir) / STATUS_NAME
    if atomic:
        atomic_write_json(path, asdict(status))
    else:
        path.write_text(json.dumps(asdict(status), indent=2) + "\n")
    return status


def read_status(run_dir: str | Path) -> RunStatus | None:
    """The run's ``status.json``, or None when it is missing or unreadable."""
    try:  # bounded: a run directory may be someone else's (a FIFO must not hang us)
        return RunStatus(**load_json(Path(run_dir) / STATUS_NAME, "run status"))
    except (OSError, ValueError, TypeError):  # UntrustedFileError is a ValueError
        return None


def finished_model(run_dir: str | Path) -> Path | None:
    """The final model of a run whose status says finished, else None."""
    path = final_model(run_dir)
    if not path.is_file():
        return None
    status = read_status(run_dir)
    return path if status is None or status.state == "finished" else None


def check_no_links(run_dir: str | Path) -> None:
    """``UserError`` when the run directory, one of its folders or its lock is a symbolic link: the
    writes would land wherever the link points."""
    run = Path(run_dir)
    for place in (run, *(run / d for d in (CHECKPOINTS_DIR, LOGS_DIR, TB_DIR)), run / LOCK_NAME):
        try:
            link = place.is_symlink()
        except OSError:  # a name too long, say: creating the directory says so in one line
            return
        if link:
            raise UserError(
                f"{str(place)!r} is a symbolic link; a run directory and its folders must be real ones, so "
                "that nothing is written outside it: remove the link or give another directory"
            )


@contextlib.contextmanager
def locked(run_dir: str | Path) -> Iterator[None]:
    """Hold the run directory's lock; ``UserError`` at once if another process holds it.

    An OS file lock (``flock``): the kernel releases it when the holder exits, even on SIGKILL, so a
    crashed run never leaves a stale lock behind.
    """
    path = Path(run_dir) / LOCK_NAME
    check_no_links(run_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as err:  # a file in the way, a name too long, a read-only or full disk
        raise UserError(f"cannot use {str(run_dir)!r} as a run directory: {err.strerror or err}") from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{run_dir} is in use by another process (train, resume or compare); wait for it to finish "
                "or stop it first"
            ) from None
        yield
    finally:
        os.close(fd)
