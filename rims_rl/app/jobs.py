"""One job of a comparison: train (unless already trained) and evaluate one (agent, seed).

``run_job`` is what every executor (``executors``) runs, in this process, in a pool worker or in a Ray
task; it is top-level so spawned workers can import it. The functions it trains and evaluates with come
in a ``Backend`` (tests pass fakes).
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rims_rl.app import rundir, signals
from rims_rl.app.errors import UserError, storage_error
from rims_rl.app.evaluation import EvalResult, evaluate_checkpoint
from rims_rl.app.records import (
    RunJob,
    config_mismatch,
    finished_records,
    read_record,
    target_of,
    write_eval,
    write_record,
)
from rims_rl.app.runs import TrainingInterrupted, train_run
from rims_rl.app.summary import ScoreRecord
from rims_rl.envs import Suite

__all__ = ["LOCAL", "Backend", "JobResult", "run_job"]


@dataclass(frozen=True)
class Backend:
    """The functions a job trains and evaluates with; tests pass fakes, workers get the real ones.

    Both must be importable top-level functions when jobs run in other processes (they travel there).
    """

    train: Callable[..., Path] = train_run
    """``train_run``'s signature: trains one (agent, seed) into ``run_dir``."""
    evaluate: Callable[..., list[EvalResult]] = evaluate_checkpoint
    """``evaluate_checkpoint``'s signature: scores a checkpoint on a suite or env."""


LOCAL = Backend()


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
    """Training wall time in this call (0 when it trained nothing)."""
    eval_s: float = 0.0
    train_seconds: float | None = None
    """Training wall time of the whole run when it was trained from scratch in one go (in this call, or
    as its record says); None when it was resumed or is not known. The report's steps/s come from it."""

    def summary(self) -> dict[str, Any]:
        """The record of ``runs.json`` (everything but the scores)."""
        return {k: v for k, v in asdict(self).items() if k != "records"}

    @classmethod
    def of(cls, job: RunJob, **kwargs: Any) -> JobResult:
        """A result for ``job`` (agent, seed and run directory filled in)."""
        return cls(agent=job.agent, seed=job.seed, run_dir=job.run_dir, **kwargs)


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


def run_job(job: RunJob, backend: Backend = LOCAL, progress: bool = False) -> JobResult:
    """Train (unless already trained) and evaluate one (agent, seed); errors are returned, not raised.
    ``progress``: the evaluation shows its episodes per env (on a terminal).

    Ctrl-C (``TrainingInterrupted``, ``KeyboardInterrupt``) is raised: it stops the whole comparison,
    and the interrupted run continues from its checkpoint next time.
    """
    out = JobResult.of(job)
    run_dir = Path(job.run_dir)
    try:
        found = finished_records(job)
        if found is not None:
            out.records, record = found
            if record is None:  # finished before records existed: keep one now
                write_record(job, out.records)
            else:
                out.train_seconds = record.train_seconds
            out.skipped = True
            return out
        mismatch = config_mismatch(job)
        if mismatch:
            raise UserError(mismatch)
        model = rundir.finished_model(run_dir)
        resumed = rundir.is_run_dir(run_dir)
        previous = read_record(run_dir)
        if model is not None and previous is not None and not previous.differences(job):
            out.train_seconds = previous.train_seconds  # re-evaluated only: its training time still holds
        if model is None:
            t0 = time.perf_counter()
            measure = {"log_policy_shift": True} if job.log_policy_shift else {}  # fakes need not take it
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
                **measure,
            )
            out.train_s = time.perf_counter() - t0
            out.trained = True
            if not resumed:  # as the record keeps it, so a report reads the same from either
                out.train_seconds = round(out.train_s, 3)
            model = rundir.finished_model(run_dir)
            if model is None:
                raise RuntimeError(f"training finished but no final model was found in {run_dir}")
        t0 = time.perf_counter()
        target = target_of(job)
        shown = {"progress": True} if progress else {}  # a test's fake evaluate need not take it
        results = backend.evaluate(
            model,
            target,
            n_episodes=job.eval_episodes,
            deterministic=job.deterministic,
            seed=job.eval_seed,
            **shown,
        )
        out.eval_s = time.perf_counter() - t0
        train_name = target.train.name if isinstance(target, Suite) else None
        out.records = [_to_record(job, r, train_name) for r in results]
        out.evaluated = True
        # Both or neither: a stop between them would leave a finished run whose record lacks its training
        # time for good (a later compare rebuilds the record from the evaluation alone). The signal is
        # passed on after, to whatever handles stops around this call.
        noted: list[int] = []
        with signals.deferred(noted, "this run's evaluation and record"):
            write_eval(job, [r.to_dict() for r in results], out.records)  # marks the run finished
            write_record(job, out.records, out.train_seconds)
        if noted:
            os.kill(os.getpid(), noted[0])
    except TrainingInterrupted:
        raise
    except Exception as exc:  # noqa: BLE001 - one failed run must not lose the others
        storage = storage_error(exc) if isinstance(exc, OSError) else None
        if isinstance(exc, UserError) or storage is not None:  # not a bug: its one line, no traceback
            out.error = str(storage or exc)
        else:
            out.error = f"{type(exc).__name__}: {exc}"
            out.traceback = traceback.format_exc()
    return out
