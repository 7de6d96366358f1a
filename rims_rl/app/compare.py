"""``train.py compare``: train several agents over several seeds on a suite, evaluate OOD, write a report.

Each (agent, seed) is one job in a spawned worker process: ``train_run`` on the suite's training env,
then ``evaluate_checkpoint`` of the final model on every spec of the suite (training env + OOD
variants). Jobs write into ``<out>/runs/<agent>-seed<k>/``; a job whose run dir already holds the
final model and an evaluation JSON with the same evaluation settings is skipped, so an interrupted or
extended comparison (more seeds, another agent) only trains what is missing. The report (see
``rims_rl.app.report``) is rebuilt from all finished runs at the end.

All agents of one seed get the same training seed, and every run is evaluated on the same episode
seeds, so differences between agents are not differences in the episodes they were scored on.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import re
import shlex
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rims_rl.agents import check_agent, parse_overrides
from rims_rl.app import rundir
from rims_rl.app.atomic import atomic_write_json
from rims_rl.app.config import resolve_config
from rims_rl.app.curves import Curve, read_learning_curve
from rims_rl.app.errors import UserError, output_path, user_input
from rims_rl.app.evaluation import EvalResult, evaluate_checkpoint
from rims_rl.app.report import write_report
from rims_rl.app.runs import TrainingInterrupted, set_stop_signals, signal_handlers, train_run
from rims_rl.app.summary import ScoreRecord, score_record
from rims_rl.envs import EnvSpec, Suite, get_suite
from rims_rl.envs.untrusted import MissingFileError, UntrustedFileError, load_json

DEFAULT_AGENTS: tuple[str, ...] = ("rims_ppo", "lstm_ppo")
EVAL_NAME = "compare_eval.json"
RECORDS_DIR = "records"
EVAL_SEED = 10_000  # shared by every run: all agents are scored on the same episodes

__all__ = [
    "DEFAULT_AGENTS",
    "EVAL_NAME",
    "LOCAL",
    "Backend",
    "CompareInterrupted",
    "CompareResult",
    "JobResult",
    "RunJob",
    "config_mismatch",
    "default_out_dir",
    "is_finished",
    "run_compare",
    "run_job",
]


@dataclass(frozen=True)
class Backend:
    """The functions a job trains and evaluates with; tests pass fakes, workers get the real ones.

    Both must be importable top-level functions when ``workers > 1`` (they travel to spawned processes).
    """

    train: Callable[..., Path] = train_run
    """``train_run``'s signature: trains one (agent, seed) into ``run_dir``."""
    evaluate: Callable[..., list[EvalResult]] = evaluate_checkpoint
    """``evaluate_checkpoint``'s signature: scores a checkpoint on a suite or env."""


LOCAL = Backend()


class CompareInterrupted(RuntimeError):
    """Ctrl-C during ``compare``: the partial report is written; the message says how to continue."""

    def __init__(self, message: str, files: dict[str, Path], signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.files = files
        self.signum = signum
        """The signal that stopped it (the shell's exit status is 128 + signum)."""


@dataclass(frozen=True)
class CompareResult:
    """What a comparison wrote and how its runs went."""

    files: dict[str, Path]
    """The written files by kind (``report``, ``results_json``, ...)."""
    trained: int
    """Runs trained in this call."""
    skipped: int
    """Runs already finished and evaluated with these settings."""
    failed: int
    """Runs that failed (listed in the report and ``runs.json``)."""


@dataclass(frozen=True)
class RunJob:
    """Everything a worker needs to train and evaluate one (agent, seed); picklable for spawn."""

    agent: str
    seed: int
    run_dir: str
    timesteps: int | None
    suite: str | None = None
    env_id: str | None = None
    n_envs: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    eval_episodes: int = 10
    eval_seed: int = EVAL_SEED
    deterministic: bool = True
    device: str = "auto"
    torch_threads: int | None = None

    def eval_settings(self) -> dict[str, Any]:
        """What a stored evaluation must match to be reused (else re-evaluated, not retrained)."""
        return {
            "target": self.suite or self.env_id,
            "eval_episodes": self.eval_episodes,
            "eval_seed": self.eval_seed,
            "deterministic": self.deterministic,
        }


@dataclass
class JobResult:
    """What one job did: its records, or the error that stopped it."""

    agent: str
    seed: int
    run_dir: str
    records: list[ScoreRecord] = field(default_factory=list)
    trained: bool = False
    evaluated: bool = False
    skipped: bool = False
    interrupted: bool = False
    """Stopped by Ctrl-C/SIGTERM (after saving a checkpoint) or never started because of one."""
    error: str | None = None
    traceback: str | None = None
    train_s: float = 0.0
    eval_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The record of ``runs.json`` (everything but the scores)."""
        return {k: v for k, v in asdict(self).items() if k != "records"}


# ------------------------------------------------------------------------------------ run dir layout


def _load_json(path: Path, what: str = "file") -> dict[str, Any] | None:
    """A JSON object stored under ``--out`` (a committed record may come from anyone), or None when absent.

    Read with the bounded reader: a FIFO, a link to a device, a giant or deeply nested file, or one that
    is not a JSON object is a ``UserError`` naming it, never a hang or a traceback.
    """
    try:
        data = load_json(path, what)
    except MissingFileError:
        return None
    except UntrustedFileError as err:
        raise UserError(f"{err}; delete it to redo that run") from err
    if not isinstance(data, dict):
        raise UserError(f"{what} {str(path)!r} is not a JSON object; delete it to redo that run")
    return data


def config_mismatch(job: RunJob) -> str | None:
    """Why the run already in ``job.run_dir`` is a different experiment (None if it matches or is absent).

    Compared: agent, seed, env/suite, requested timesteps, n_envs and overrides, i.e. what ``compare``
    chooses; a mismatch means ``--out`` is being reused for other settings.
    """
    record = _load_json(record_path(job.run_dir), "run record")
    if record is not None:  # a committed record: the run may exist only as this file
        stored = _record_job(record, job)
        keys = ("agent", "seed", "suite", "env_id", "timesteps", "n_envs", "overrides")
        diffs = [
            f"{k}: record has {stored.get(k)!r}, asked {getattr(job, k)!r}"
            for k in keys
            if stored.get(k) != getattr(job, k)
        ]
        if diffs:
            return (
                f"{record_path(job.run_dir)} records a run with other settings ({'; '.join(diffs)}); "
                "use another --out or delete that record"
            )
    config = _load_json(rundir.config_path(job.run_dir), "run config")
    if config is None:
        return None
    env: dict[str, Any] = config["env"] if isinstance(config.get("env"), dict) else {}
    model: dict[str, Any] = config["model"] if isinstance(config.get("model"), dict) else {}
    checks = {
        "agent": (model.get("agent"), job.agent),
        "seed": (config.get("seed"), job.seed),
        "suite": (config.get("suite"), job.suite),
        "overrides": (config.get("overrides") or {}, dict(job.overrides)),
    }
    if job.env_id is not None:
        checks["env"] = (env.get("env_id"), job.env_id)
    if job.timesteps is not None:
        checks["timesteps"] = (config.get("timesteps_requested"), job.timesteps)
    if job.n_envs is not None:  # runs made before RunConfig kept the run's value at the top level
        checks["n_envs"] = (config.get("n_envs", model.get("n_envs")), job.n_envs)
    diffs = [f"{k}: run has {have!r}, asked {want!r}" for k, (have, want) in checks.items() if have != want]
    if not diffs:
        return None
    return (
        f"{job.run_dir} holds a run with other settings ({'; '.join(diffs)}); "
        "use another --out or delete that run directory"
    )


def record_path(run_dir: str | Path) -> Path:
    """``<out>/records/<agent>-seed<k>.json`` for ``<out>/runs/<agent>-seed<k>``: the run's compact record
    (no weights), small enough to commit, so a later session on a new machine can skip the run."""
    run_dir = Path(run_dir)
    return run_dir.parent.parent / RECORDS_DIR / f"{run_dir.name}.json"


def _record_job(record: dict[str, Any], job: RunJob) -> dict[str, Any]:
    """The ``job`` part of a record read back from a (committed, so untrusted) file, checked."""
    stored = record.get("job")
    if not isinstance(stored, dict) or not isinstance(record.get("records", []), list):
        raise UserError(f"{record_path(job.run_dir)} is not a valid run record; delete it to redo that run")
    return stored


def _record_matches(job: RunJob, record: dict[str, Any] | None) -> bool:
    """A stored record of the same experiment (what ``compare`` chooses) and evaluation settings."""
    if record is None or record.get("settings") != job.eval_settings():
        return False
    stored = _record_job(record, job)
    keys = ("agent", "seed", "suite", "env_id", "timesteps", "n_envs", "overrides")
    return all(stored.get(k) == getattr(job, k) for k in keys)


def is_finished(job: RunJob) -> bool:
    """True when the run is trained and evaluated with ``job``'s settings (nothing to do).

    Either its compact record (``record_path``) says so, which is all a later session on a new machine
    has, or its run directory holds the final model and an evaluation with these settings.
    """
    return finished_records(job) is not None


def finished_records(job: RunJob) -> tuple[list[ScoreRecord], bool] | None:
    """The stored scores of a finished run, checked against ``job`` (``_checked_records``), and whether
    they come from its compact record; None when the run is not finished with these settings."""
    source = record_path(job.run_dir)
    record = _load_json(source, "run record")
    if _record_matches(job, record):
        assert record is not None
        return _checked_records(job, record, source), True
    run_dir = Path(job.run_dir)
    source = run_dir / EVAL_NAME
    stored = _load_json(source, "evaluation")
    if (
        rundir.finished_model(run_dir) is not None
        and stored is not None
        and stored.get("settings") == job.eval_settings()
        and config_mismatch(job) is None
    ):
        return _checked_records(job, stored, source), False
    return None


def _checked_records(job: RunJob, stored: Mapping[str, Any], source: Path) -> list[ScoreRecord]:
    """The score records of a stored run (untrusted: a committed file), each checked against the job:
    a valid record of this agent and seed, on an env of the job's suite (or env), every env once."""
    fix = "; delete it to redo that run"
    raw = stored.get("records")
    if not isinstance(raw, list):
        raise UserError(f"{source} holds no list of records{fix}")
    target = _target(job)
    specs = target.specs() if isinstance(target, Suite) else (EnvSpec(target, target),)
    train_name = target.train.name if isinstance(target, Suite) else None
    expected = {s.name: s.env_id for s in specs}
    records: list[ScoreRecord] = []
    for i, item in enumerate(raw):
        try:
            rec = score_record(item)
        except ValueError as err:
            raise UserError(f"{source}: record {i}: {err}{fix}") from err
        if (rec["agent"], rec["seed"]) != (job.agent, job.seed):
            raise UserError(
                f"{source}: record {i} is of agent {_short(rec['agent'])} seed {rec['seed']!r}, not of this "
                f"run ({job.agent} seed {job.seed}){fix}"
            )
        is_train = rec["env"] == train_name if train_name is not None else True
        if expected.get(rec["env"]) != rec["env_id"] or rec["is_train"] != is_train:
            raise UserError(
                f"{source}: record {i} is for env {_short(rec['env'])} ({_short(rec['env_id'])}), which "
                f"{job.suite or job.env_id} does not hold as such{fix}"
            )
        records.append(ScoreRecord(**{**rec, "run_dir": job.run_dir}))
    names = sorted(r["env"] for r in records)
    if names != sorted(expected):
        target_name = job.suite or job.env_id
        raise UserError(f"{source} scores envs {names}, {target_name} has {sorted(expected)}{fix}")
    return records


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def write_record(job: RunJob, records: Sequence[ScoreRecord], train_seconds: float | None = None) -> Path:
    """The run's compact record: settings, scores per env, the learning curve (a few KiB) and, when this
    process trained the run from scratch, its training wall time (the throughput a report can quote)."""
    curve = read_learning_curve(job.run_dir)
    payload: dict[str, Any] = {
        "settings": job.eval_settings(),
        "job": {k: v for k, v in asdict(job).items() if k not in ("device", "torch_threads")},
        "records": [dict(r) for r in records],
        "curve": None if curve is None else {"steps": curve[0].tolist(), "values": curve[1].tolist()},
    }
    if train_seconds is not None:
        payload["train_seconds"] = round(float(train_seconds), 3)
    return atomic_write_json(record_path(job.run_dir), payload)


def read_record_curve(run_dir: str | Path) -> Curve | None:
    """The learning curve kept in the run's record, if any."""
    record = _load_json(record_path(run_dir), "run record") or {}
    curve = record.get("curve")
    if not isinstance(curve, dict):
        return None
    try:
        steps = np.asarray(curve.get("steps", []), dtype=np.float64)
        values = np.asarray(curve.get("values", []), dtype=np.float64)
    except (TypeError, ValueError):  # a damaged record: the report is drawn without this curve
        return None
    return (steps, values) if steps.shape == values.shape and steps.ndim == 1 else None


# -------------------------------------------------------------------------------------------- worker


# Stopping parallel workers. A worker runs in its own process group and ignores SIGTERM, so a terminal's
# Ctrl-C or a tree-wide SIGTERM reaches only the parent; the parent sets ``stop`` (``abort`` on a second
# signal) and each worker's watcher thread turns that into SIGINT to itself while a job runs, which
# ``train_run`` handles as a Ctrl-C (save a checkpoint and stop; a second one aborts at once). A worker
# whose parent died stops the same way, starts no further job, and exits. Workers are spawned with SIGINT
# and SIGTERM blocked (the mask survives exec), so a signal while they start up cannot kill them; idle
# workers ignore SIGINT.
_worker_jobs = 0  # jobs started in this worker; the watcher signals each job at most as often as asked
_worker_job_running = False
_worker_stop: Any = None  # the parent's ``stop`` event, in a worker process
_worker_parent = 0


def _worker_sigint(signum: int, frame: Any) -> None:
    if _worker_job_running:
        raise KeyboardInterrupt


def _init_worker(threads: int, stop: Any = None, abort: Any = None) -> None:
    """Cap torch's intra-op threads so ``workers`` processes do not oversubscribe the CPU; wire the stop
    events (``multiprocessing.Event``) described above."""
    torch.set_num_threads(max(1, threads))
    if stop is None or abort is None:
        return
    global _worker_stop, _worker_parent
    _worker_stop, _worker_parent = stop, os.getppid()
    os.setpgrp()
    set_stop_signals((signal.SIGINT,))  # training stops on the watcher's SIGINT only
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, _worker_sigint)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})  # see _signals_blocked
    parent = _worker_parent

    def watch() -> None:
        job, sent = 0, 0
        while True:
            time.sleep(0.2)
            orphaned = os.getppid() != parent
            if orphaned and not _worker_job_running:
                os._exit(1)  # no one is left to take a result or send a job
            if job != _worker_jobs:
                job, sent = _worker_jobs, 0
            wanted = 2 if abort.is_set() else 1 if stop.is_set() or orphaned else 0
            if _worker_job_running and sent < wanted:
                sent += 1
                os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, name="compare-stop-watcher", daemon=True).start()


def _run_job_in_worker(job: RunJob, backend: Backend) -> JobResult:
    """``run_job`` in a pool worker: an interruption comes back as a result, not an exception."""
    global _worker_job_running, _worker_jobs
    if _worker_stop is not None and (_worker_stop.is_set() or os.getppid() != _worker_parent):
        # queued before the Ctrl-C, or the parent is gone: never start it
        return JobResult(agent=job.agent, seed=job.seed, run_dir=job.run_dir, interrupted=True)
    _worker_jobs += 1
    _worker_job_running = True
    try:
        return run_job(job, backend)
    except (KeyboardInterrupt, TrainingInterrupted):
        return JobResult(agent=job.agent, seed=job.seed, run_dir=job.run_dir, interrupted=True)
    finally:
        _worker_job_running = False


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """SIGINT/SIGTERM held back (delivered after, not lost) while workers are spawned: they inherit the
    blocked mask and unblock it in ``_init_worker`` once their own handlers are in place."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _sigterm_interrupts(seen: list[int]) -> contextlib.AbstractContextManager[None]:
    """SIGTERM raises ``KeyboardInterrupt`` like Ctrl-C (in-process and Ray paths; training inside
    handles both itself); appends the signals seen to ``seen``."""

    def handler(signum: int, frame: Any) -> None:
        seen.append(signum)
        raise KeyboardInterrupt

    return signal_handlers((signal.SIGTERM,), handler)


def _signals_deferred(seen: list[int]) -> contextlib.AbstractContextManager[None]:
    """Ctrl-C/SIGTERM only noted in ``seen`` inside the block (the report of finished runs is written
    whole, then the caller stops with 130/143)."""

    def handler(signum: int, frame: Any) -> None:
        seen.append(signum)
        name = signal.Signals(signum).name
        print(f"\n{name}: writing the report of the finished runs first", file=sys.stderr, flush=True)

    return signal_handlers((signal.SIGINT, signal.SIGTERM), handler)


def _signals_set(stop: Any, abort: Any, seen: list[int]) -> contextlib.AbstractContextManager[None]:
    """In the parent: Ctrl-C/SIGTERM set ``stop`` (a second one ``abort``); appends them to ``seen``."""

    def handler(signum: int, frame: Any) -> None:
        seen.append(signum)
        (abort if stop.is_set() else stop).set()
        what = "aborting every run at once" if abort.is_set() else "every run saves a checkpoint and stops"
        print(f"\n{signal.Signals(signum).name}: {what} (again to abort)", file=sys.stderr, flush=True)

    return signal_handlers((signal.SIGINT, signal.SIGTERM), handler)


def _target(job: RunJob) -> Suite | str:
    return get_suite(job.suite) if job.suite else str(job.env_id)


def _to_record(job: RunJob, res: EvalResult, train_name: str | None) -> ScoreRecord:
    """One evaluation result in the report's record format."""
    return ScoreRecord(
        agent=job.agent,
        seed=job.seed,
        env=res.env,
        env_id=res.env_id,
        is_train=res.env == train_name if train_name is not None else True,
        mean_return=res.mean_return,
        std_return=res.std_return,
        success_rate=res.success_rate,
        n_episodes=res.episodes,
        returns=[float(r) for r in res.returns],
        mean_length=res.mean_length,
        timesteps=res.num_timesteps,
        run_dir=job.run_dir,
    )


def run_job(job: RunJob, backend: Backend = LOCAL) -> JobResult:
    """Train (unless already trained) and evaluate one (agent, seed); errors are returned, not raised.

    Ctrl-C (``TrainingInterrupted``, ``KeyboardInterrupt``) is raised: it stops the whole comparison,
    and the interrupted run continues from its checkpoint next time. Top-level so spawned workers can
    import it.
    """
    out = JobResult(agent=job.agent, seed=job.seed, run_dir=job.run_dir)
    run_dir = Path(job.run_dir)
    try:
        found = finished_records(job)
        if found is not None:
            out.records, from_record = found
            if not from_record:  # finished before records existed: keep one now
                write_record(job, out.records)
            out.skipped = True
            return out
        mismatch = config_mismatch(job)
        if mismatch:
            raise UserError(mismatch)
        model = rundir.finished_model(run_dir)
        resumed = rundir.is_run_dir(run_dir)
        if model is None:
            t0 = time.perf_counter()
            backend.train(
                job.agent,
                env_id=None if job.suite else job.env_id,
                suite=job.suite,
                timesteps=job.timesteps,
                seed=job.seed,
                n_envs=job.n_envs,
                device=job.device,
                overrides=dict(job.overrides) or None,
                run_dir=run_dir,
                progress_bar=False,
                resume=resumed,  # an interrupted run continues where it stopped
            )
            out.train_s = time.perf_counter() - t0
            out.trained = True
            model = rundir.finished_model(run_dir)
            if model is None:
                raise RuntimeError(f"training finished but no final model was found in {run_dir}")
        t0 = time.perf_counter()
        target = _target(job)
        results = backend.evaluate(
            model, target, n_episodes=job.eval_episodes, deterministic=job.deterministic, seed=job.eval_seed
        )
        out.eval_s = time.perf_counter() - t0
        train_name = target.train.name if isinstance(target, Suite) else None
        out.records = [_to_record(job, r, train_name) for r in results]
        out.evaluated = True
        payload = {
            "settings": job.eval_settings(),
            "job": asdict(job),
            "raw": [r.to_dict() for r in results],
            "records": [dict(r) for r in out.records],
        }
        atomic_write_json(run_dir / EVAL_NAME, payload)  # the eval JSON marks the run finished
        write_record(job, out.records, out.train_s if out.trained and not resumed else None)
    except TrainingInterrupted:
        raise
    except Exception as exc:  # noqa: BLE001 - one failed run must not lose the others
        out.error = f"{type(exc).__name__}: {exc}"
        out.traceback = traceback.format_exc()
    return out


# ------------------------------------------------------------------------------------------- driver


def _as_list(value: str | Iterable[str] | None, default: Sequence[str]) -> list[str]:
    if value is None:
        return list(default)
    items = [value] if isinstance(value, str) else list(value)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def _as_seeds(seeds: int | Iterable[int]) -> list[int]:
    """``3`` -> seeds 0, 1, 2 (the CLI's ``--seeds N``); an explicit list is used as given."""
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"--seeds must be >= 1; got {seeds}")
        return list(range(seeds))
    return [int(s) for s in seeds]


def _as_overrides(value: Mapping[str, Any] | Iterable[str] | None) -> dict[str, Any]:
    if not value:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    return parse_overrides([value] if isinstance(value, str) else list(value))


def _command_line() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith(".py"):
        return "python " + shlex.join(argv)
    return shlex.join([Path(sys.executable).name, *argv]) if argv else ""


def _collect_curves(results: Sequence[JobResult], agents: Sequence[str]) -> dict[str, list[Any]]:
    curves: dict[str, list[Any]] = {a: [] for a in agents}
    for res in results:
        if res.error:
            continue
        curve = read_learning_curve(res.run_dir) or read_record_curve(res.run_dir)
        if curve is not None:
            curves.setdefault(res.agent, []).append(curve)
    return {a: c for a, c in curves.items() if c}


def run_compare(
    agents: str | Sequence[str] | None = None,
    suite: str | None = None,
    env: str | None = None,
    seeds: int | Sequence[int] = 3,
    timesteps: int | None = None,
    n_envs: int | None = None,
    workers: int | None = None,
    out: str | Path | None = None,
    eval_episodes: int = 10,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    deterministic: bool = True,
    device: str = "auto",
    reps: int = 2000,
    progress: bool = True,
    command_line: str | None = None,
    backend: Backend | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    tuned: str | Path | Mapping[str, Mapping[str, Any]] | None = None,
    **cli_args: Any,
) -> CompareResult:
    """Train ``agents`` x ``seeds`` on ``suite`` (or one ``env``) in parallel, evaluate, write the report.

    Accepts ``**vars(args)`` from the CLI: ``set`` is taken as ``overrides``, ``env_id`` as ``env``, and
    other parser attributes are ignored. ``out`` defaults to ``runs/compare-<suite or env>``; re-running
    skips runs already trained and evaluated there. Runs that fail are listed in the report (and
    ``runs.json``) while the others still count. Every setting is checked, and an ``out`` folder that
    holds runs with other settings is refused, before anything is trained or written. ``backend``
    (default ``LOCAL``) holds the train and evaluate functions. ``executor="ray"`` runs each (agent, seed)
    as a Ray task (1 CPU, 1 GPU with a CUDA device) on the cluster at ``ray_address`` or ``RAY_ADDRESS``,
    else on a local Ray instance; results, records and report are the same as the local pool's.
    """
    if executor not in ("local", "ray"):
        raise UserError(f"--backend must be local or ray, got {executor!r}")
    backend = backend or LOCAL
    if overrides is None:
        overrides = cli_args.pop("set", None) or cli_args.pop("overrides_list", None)
    env = env or cli_args.pop("env_id", None)
    if (suite is None) == (env is None):
        raise UserError("compare needs exactly one of --suite or --env")
    agent_list = _as_list(agents, DEFAULT_AGENTS)
    with user_input():
        for agent in agent_list:
            check_agent(agent)
        if suite is not None:
            get_suite(suite)  # fail fast on a bad name, before spawning anything
        seed_list = _as_seeds(seeds)
        over = _as_overrides(overrides)
        if not isinstance(eval_episodes, int) or isinstance(eval_episodes, bool) or eval_episodes < 1:
            raise ValueError(f"--eval-episodes must be a positive integer, got {eval_episodes!r}")
    if executor == "ray":
        check_ray_address(ray_address or os.environ.get("RAY_ADDRESS"))
    per_agent = read_tuned(tuned, agent_list) if tuned is not None else {}
    settings = {a: {**per_agent.get(a, {}), **over} for a in agent_list}  # --set wins over tuned values
    for agent in agent_list:  # every agent's settings, as each run will resolve them (UserError if bad)
        resolve_config(
            agent,
            env,
            suite=suite,
            timesteps=timesteps,
            n_envs=n_envs,
            device=device,
            overrides=settings[agent],
        )
    cpus = os.cpu_count() or 1
    n_jobs = len(agent_list) * len(seed_list)
    workers = max(1, min(workers or cpus, n_jobs))
    out_dir = Path(out) if out else default_out_dir(str(suite or env))

    jobs = [
        RunJob(
            agent=a,
            seed=s,
            run_dir=str(out_dir / "runs" / f"{a}-seed{s}"),
            timesteps=timesteps,
            suite=suite,
            env_id=env,
            n_envs=n_envs,
            overrides=settings[a],
            eval_episodes=eval_episodes,
            deterministic=deterministic,
            device=device,
        )
        for s in seed_list
        for a in agent_list
    ]
    for sub in ("runs", RECORDS_DIR):  # a link would make compare write outside --out
        if (out_dir / sub).is_symlink():
            raise UserError(
                f"{out_dir / sub} is a symbolic link; compare writes only inside --out {out_dir}: "
                "make it a plain directory (or use another --out)"
            )
    for job in jobs:  # refuse before anything is touched: never replace a report with a worse one
        mismatch = config_mismatch(job)
        if mismatch:
            raise UserError(mismatch)
        finished_records(job)  # stored records are checked against the job (UserError naming the file)
    with output_path(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    # One compare per --out at a time: runs.json and the report are shared by every run in it.
    with rundir.locked(out_dir):
        results: list[JobResult] = []
        todo = []
        for job in jobs:
            if is_finished(job):
                results.append(run_job(job, backend))  # cheap: reads the stored evaluation
            else:
                todo.append(job)
        bar = tqdm(
            total=len(jobs), desc="compare runs", unit="run", disable=not progress, initial=len(results)
        )
        if results:
            bar.write(f"skipping {len(results)} finished run(s) in {out_dir / 'runs'}")
        interrupted, signum = False, int(signal.SIGINT)
        seen: list[int] = []  # stop signals received (SIGINT, SIGTERM)
        try:
            if executor == "ray" and todo:
                _run_on_ray(todo, backend, bar, ray_address, device, seen, results)
            elif workers == 1:
                with _sigterm_interrupts(seen):
                    for job in todo:
                        results.append(_report_progress(bar, run_job(job, backend)))
            elif todo:
                threads = max(1, cpus // min(workers, len(todo)))
                ctx = mp.get_context("spawn")
                stop, abort = ctx.Event(), ctx.Event()
                with (
                    _signals_set(stop, abort, seen),
                    ProcessPoolExecutor(
                        max_workers=min(workers, len(todo)),
                        mp_context=ctx,
                        initializer=_init_worker,
                        initargs=(threads, stop, abort),
                    ) as pool,
                ):
                    with _signals_blocked():  # the workers are spawned here
                        futures = {pool.submit(_run_job_in_worker, j, backend): j for j in todo}
                    for fut in as_completed(futures):
                        try:
                            result = fut.result()
                        except BrokenProcessPool as err:
                            # A worker died (OOM killer, SIGKILL): the pool cannot return the others' results,
                            # so they save a checkpoint and stop rather than train on for nothing.
                            stop.set()
                            job = futures[fut]
                            result = JobResult(
                                agent=job.agent,
                                seed=job.seed,
                                run_dir=job.run_dir,
                                error=f"a compare worker process died ({err}); run the command again to "
                                "continue from the last checkpoints",
                            )
                        if result.interrupted:
                            interrupted = True
                        else:
                            results.append(_report_progress(bar, result))
        except TrainingInterrupted as err:
            interrupted, signum = True, err.signum
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
        # The runs are done: a stop signal now waits until runs.json and the report are written.
        with _signals_deferred(seen):
            order = {(j.agent, j.seed): i for i, j in enumerate(jobs)}
            results.sort(key=lambda r: order[(r.agent, r.seed)])
            failures = [r for r in results if r.error]
            for f in failures:
                print(f"run {f.agent} seed {f.seed} failed: {f.error}\n{f.traceback or ''}", file=sys.stderr)
            records = [rec for r in results if not r.error for rec in r.records]
            summary = {
                "trained": sum(r.trained for r in results),
                "skipped": sum(r.skipped for r in results),
                "failed": len(failures),
            }
            atomic_write_json(out_dir / "runs.json", [r.summary() for r in results])

            meta = {
                "agents": ",".join(agent_list),
                "suite" if suite else "env": suite or env,
                "seeds": ",".join(map(str, seed_list)),
                "timesteps": timesteps if timesteps is not None else "preset",
                "n_envs": n_envs if n_envs is not None else "preset",
                "eval_episodes": eval_episodes,
                "deterministic_eval": deterministic,
                "eval_seed": EVAL_SEED,
                "overrides": " ".join(f"{k}={v}" for k, v in over.items()) or "none",
                **(
                    {"tuned": "; ".join(f"{a}: {_fmt_tuned(per_agent.get(a, {}), over)}" for a in agent_list)}
                    if per_agent
                    else {}
                ),
                "bootstrap_reps": reps,
                **{f"runs_{k}": v for k, v in summary.items()},
            }
            title = f"Comparison on {suite or env}: {' vs '.join(agent_list)}"
            paths = write_report(
                out_dir,
                records,
                curves=_collect_curves(results, agent_list),
                command=command_line or _command_line(),
                meta=meta,
                failures=[{"agent": r.agent, "seed": r.seed, "error": r.error} for r in failures],
                reps=reps,
                title=title,
            )
            print(
                f"compare: {summary['trained']} trained, {summary['skipped']} skipped, "
                f"{summary['failed']} failed; report: {paths['report']}"
            )
        if seen:  # even after the last run finished: the caller (tune) must not start more
            interrupted, signum = True, seen[0]

        if interrupted:
            unfinished = "; unfinished runs saved a checkpoint" if len(results) < len(jobs) else ""
            raise CompareInterrupted(
                f"interrupted: the report holds the {len(results)} finished run(s){unfinished}. Continue "
                f"with the same command: {command_line or _command_line()}",
                paths,
                signum,
            )
        return CompareResult(files=paths, **summary)


def default_out_dir(target: str) -> Path:
    """``runs/compare-<suite or env>``: stable (no timestamp), so re-running a command resumes it."""
    return Path("runs") / ("compare-" + re.sub(r"[^A-Za-z0-9._-]+", "_", target))


RAY_CONNECT_TIMEOUT_S = 5.0


def check_ray_address(address: str | None) -> None:
    """``UserError`` for a Ray address that is malformed or where nothing answers, before anything starts.

    Ray itself retries an unreachable address for minutes (and ignores SIGTERM meanwhile), and raises a
    ``ValueError`` traceback for a malformed one. ``None``, ``auto`` and ``local`` are left to Ray.
    """
    if address is None or address in ("auto", "local"):
        return
    bare = address.removeprefix("ray://")
    host, sep, port_text = bare.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [IPv6]:port
    valid_host = bool(re.fullmatch(r"[A-Za-z0-9._:-]+", host)) and not host.startswith(("-", "."))
    if not sep or not valid_host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UserError(
            f"--ray-address {address!r} is not HOST:PORT (e.g. 10.0.0.1:6379, ray://HEAD:10001, or auto)"
        )
    try:
        with socket.create_connection((host, int(port_text)), timeout=RAY_CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        raise UserError(
            f"cannot reach a Ray cluster at {address}: {err.strerror or err}; start one with "
            "`ray start --head`, or check --ray-address / RAY_ADDRESS"
        ) from err


def _run_job_single_thread(job: RunJob, backend: Backend) -> JobResult:
    """``run_job`` with one torch thread, as each Ray task gets one CPU."""
    torch.set_num_threads(1)
    return run_job(job, backend)


def _run_on_ray(
    jobs: Sequence[RunJob],
    backend: Backend,
    bar: tqdm,
    address: str | None,
    device: str,
    seen: list[int],
    results: list[JobResult],
) -> None:
    """Each job a Ray task; results are appended to ``results`` as tasks finish, so the finished ones
    count when Ctrl-C or SIGTERM cancels the rest."""
    try:
        import ray  # the optional extra: pip install -e '.[ray]'
    except ImportError as err:
        raise UserError("--backend ray needs Ray: pip install -e '.[ray]' (rims-rl[ray])") from err
    started = not ray.is_initialized()
    if started:
        ray.init(
            address=address or os.environ.get("RAY_ADDRESS"),
            include_dashboard=False,
            log_to_driver=False,
        )
    task = ray.remote(num_cpus=1, num_gpus=1 if device.startswith("cuda") else 0)(_run_job_single_thread)
    pending = {task.remote(job, backend): job for job in jobs}
    try:
        # After ray.init, which installs its own SIGTERM handler (sys.exit): SIGTERM interrupts like Ctrl-C.
        with _sigterm_interrupts(seen):
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    pending.pop(ref)
                    results.append(_report_progress(bar, ray.get(ref)))
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)
        raise
    finally:
        if started:
            ray.shutdown()


def _fmt(overrides: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in overrides.items()) or "preset"


def _fmt_tuned(tuned: Mapping[str, Any], over: Mapping[str, Any]) -> str:
    """The tuned values as read, each one that ``--set`` replaced marked so: the report never shows a
    ``--set`` value as if tuning had chosen it."""
    marked = {k: f"{v} (--set wins)" if k in over else v for k, v in tuned.items()}
    return _fmt(marked)


def read_tuned(tuned: str | Path | Mapping[str, Mapping[str, Any]], agents: Sequence[str]) -> dict[str, dict]:
    """Each agent's chosen settings from ``tune``'s ``tune.json`` (or a mapping), checked.

    The file may be committed by anyone: it is read with the bounded reader, and its shape is checked
    (``{"agents": {agent: {"chosen": {"section.key": value}}}}``) before any value is used.
    """
    where = "the tuned settings" if isinstance(tuned, Mapping) else f"tuned settings file {str(tuned)!r}"
    fix = "; give the tune.json that `tune` wrote"
    data: Any = tuned
    if not isinstance(tuned, Mapping):
        try:
            doc = load_json(tuned, "tuned settings file")
        except UntrustedFileError as err:
            raise UserError(str(err)) from err
        agents_doc = doc.get("agents") if isinstance(doc, dict) else None
        if not isinstance(agents_doc, dict):
            raise UserError(f"{where} has no 'agents' object{fix}")
        data = {}
        for agent, result in agents_doc.items():
            if not isinstance(result, dict) or "chosen" not in result:
                raise UserError(f"{where}: agents.{agent} has no 'chosen' settings{fix}")
            data[agent] = result["chosen"]
    missing = [a for a in agents if a not in data]
    if missing:
        raise UserError(f"{where} holds no settings for {missing}; tune them with the same budget first")
    out: dict[str, dict] = {}
    for agent in agents:
        chosen = data[agent]
        if not isinstance(chosen, Mapping) or not all(isinstance(k, str) for k in chosen):
            raise UserError(f"{where}: settings for {agent} must be a mapping of --set keys, got {chosen!r}")
        out[agent] = dict(chosen)
    return out


def _report_progress(bar: tqdm, res: JobResult) -> JobResult:
    status = "failed" if res.error else ("trained" if res.trained else "evaluated")
    bar.set_postfix_str(f"{res.agent} seed {res.seed} {status}")
    bar.update(1)
    return res
