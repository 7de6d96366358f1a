"""Where ``compare``'s jobs run: in this process, in a local pool of worker processes, or as Ray tasks.

Every executor has one method, ``run(jobs, backend, done, seen)``: it runs ``jobs.run_job`` for each job,
hands each finished ``JobResult`` to ``done`` as it comes (so the finished ones count when a stop signal
cancels the rest), appends every stop signal it receives to ``seen``, and returns True when a job was
stopped by one. A stop may also surface as ``TrainingInterrupted`` or ``KeyboardInterrupt``; the driver
treats the three alike. Signal handling itself lives in ``signals``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from rims_rl.agents.config import MEMORY_BUDGET_VAR
from rims_rl.app import signals
from rims_rl.app.errors import UserError
from rims_rl.app.jobs import Backend, JobResult, run_job
from rims_rl.app.records import RunJob
from rims_rl.app.runs import TrainingInterrupted

__all__ = [
    "EXECUTORS",
    "Executor",
    "InProcess",
    "LocalPool",
    "RayTasks",
    "check_ray_address",
    "make_executor",
]

EXECUTORS: tuple[str, ...] = ("local", "ray")
RAY_CONNECT_TIMEOUT_S = 5.0
#: How often a waiting parent returns to Python code. A Ctrl-C/SIGTERM that the kernel hands to another of
#: its threads (tqdm's monitor, say) only sets a flag; Python runs the handler in the main thread at its
#: next bytecode, which an untimed wait on a future would put off until a run finishes: never, when the
#: runs wait for that very signal to stop.
SIGNAL_POLL_S = 0.5

Done = Callable[[JobResult], None]


class Executor(Protocol):
    """Runs jobs somewhere; see the module docstring."""

    def run(self, jobs: Sequence[RunJob], backend: Backend, done: Done, seen: list[int]) -> bool:
        """Run every job, ``done(result)`` as each finishes; True when a stop signal interrupted a job."""
        ...


@dataclass(frozen=True)
class InProcess:
    """One job after the other in this process (``--workers 1``); training handles Ctrl-C itself."""

    progress: bool = False
    """Show each evaluation's episodes per env (on a terminal): a suite of Atari modes takes minutes."""

    def run(self, jobs: Sequence[RunJob], backend: Backend, done: Done, seen: list[int]) -> bool:
        """See ``Executor.run``."""
        with signals.interrupts(seen):
            for job in jobs:
                done(run_job(job, backend, progress=self.progress))
        return False


@dataclass(frozen=True)
class LocalPool:
    """Spawned worker processes, each in its own process group; the parent relays stop signals to them
    (``signals``). A worker that dies (OOM killer) stops the others at their next checkpoint."""

    workers: int
    """Worker processes (at most one per job)."""
    threads: int
    """Torch intra-op threads per worker, so the workers do not oversubscribe the CPU."""

    def run(self, jobs: Sequence[RunJob], backend: Backend, done: Done, seen: list[int]) -> bool:
        """See ``Executor.run``."""
        interrupted = False
        ctx = mp.get_context("spawn")
        stop, abort = ctx.Event(), ctx.Event()
        with (
            signals.relay_to_workers(stop, abort, seen),
            ProcessPoolExecutor(
                max_workers=min(self.workers, len(jobs)),
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(self.threads, stop, abort),
            ) as pool,
        ):
            with signals.blocked_while_spawning():  # the workers are spawned here
                futures = {pool.submit(_run_job_in_worker, j, backend): j for j in jobs}
            for fut in _as_completed_polling(futures):
                try:
                    result = fut.result()
                except BrokenProcessPool as err:
                    # A worker died (OOM killer, SIGKILL): the pool cannot return the others' results,
                    # so they save a checkpoint and stop rather than train on for nothing.
                    stop.set()
                    result = JobResult.of(
                        futures[fut],
                        error=f"a compare worker process died ({err}); run the command again to "
                        "continue from the last checkpoints",
                    )
                if result.interrupted:
                    interrupted = True
                else:
                    done(result)
        return interrupted


def _as_completed_polling(futures: Iterable[Future[JobResult]]) -> Iterator[Future[JobResult]]:
    """Each future as it finishes, waking every ``SIGNAL_POLL_S`` so that signal handlers run."""
    pending = set(futures)
    while pending:
        finished, pending = wait(pending, timeout=SIGNAL_POLL_S, return_when=FIRST_COMPLETED)
        yield from finished


def _init_worker(threads: int, stop: Any = None, abort: Any = None) -> None:
    """Cap torch's threads; wire the parent's stop events (``signals.become_worker``)."""
    torch.set_num_threads(max(1, threads))
    if stop is not None and abort is not None:
        signals.become_worker(stop, abort)


def _run_job_in_worker(job: RunJob, backend: Backend) -> JobResult:
    """``run_job`` in a pool worker: an interruption comes back as a result, not an exception."""
    worker = signals.worker_stop()
    if worker is None:
        return run_job(job, backend)
    if worker.should_not_start():
        return JobResult.of(job, interrupted=True)
    with worker.job():
        try:
            return run_job(job, backend)
        except (KeyboardInterrupt, TrainingInterrupted):
            return JobResult.of(job, interrupted=True)


@dataclass(frozen=True)
class RayTasks:
    """Each job a Ray task (1 CPU, 1 GPU with a CUDA device) on the cluster at ``address`` or
    ``RAY_ADDRESS``, else on a local Ray instance; Ctrl-C or SIGTERM cancels the pending tasks."""

    address: str | None = None
    """Ray cluster address (None: ``RAY_ADDRESS``, else a local instance)."""
    device: str = "auto"
    """The jobs' torch device (a CUDA one asks each task for a GPU)."""

    def run(self, jobs: Sequence[RunJob], backend: Backend, done: Done, seen: list[int]) -> bool:
        """See ``Executor.run``."""
        try:
            import ray  # the optional extra: pip install -e '.[ray]'
        except ImportError as err:
            raise UserError("--backend ray needs Ray: pip install -e '.[ray]' (rims-rl[ray])") from err
        started = not ray.is_initialized()
        if started:
            ray.init(
                address=self.address or os.environ.get("RAY_ADDRESS"),
                include_dashboard=False,
                log_to_driver=False,
            )
        gpus = 1 if self.device.startswith("cuda") else 0
        # What the CLI's flags put in the environment (--memory-gib) reaches the tasks, on any node.
        env_vars = {k: os.environ[k] for k in (MEMORY_BUDGET_VAR,) if k in os.environ}
        task = ray.remote(num_cpus=1, num_gpus=gpus, runtime_env={"env_vars": env_vars})(
            _run_job_single_thread
        )
        pending = {task.remote(job, backend): job for job in jobs}
        try:
            # After ray.init, which installs its own SIGTERM handler (sys.exit): SIGTERM and Ctrl-C
            # interrupt alike.
            with signals.interrupts(seen):
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=SIGNAL_POLL_S)
                    for ref in ready:
                        pending.pop(ref)
                        done(ray.get(ref))
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref)
            raise
        finally:
            if started:
                ray.shutdown()
        return False


def _run_job_single_thread(job: RunJob, backend: Backend) -> JobResult:
    """``run_job`` with one torch thread, as each Ray task gets one CPU."""
    torch.set_num_threads(1)
    return run_job(job, backend)


def make_executor(
    kind: str,
    workers: int,
    n_jobs: int,
    device: str = "auto",
    ray_address: str | None = None,
    progress: bool = False,
) -> Executor:
    """The executor for ``--backend kind``: with ``local``, ``workers`` processes (1: this process) for
    ``n_jobs`` jobs, their torch threads sharing the CPUs. ``progress``: evaluation progress bars where
    the jobs run in this process (worker processes' bars would overwrite each other)."""
    if kind == "ray":
        return RayTasks(ray_address, device)
    if kind != "local":
        raise UserError(f"--backend must be one of {', '.join(EXECUTORS)}, got {kind!r}")
    if workers <= 1:
        return InProcess(progress)
    running = max(1, min(workers, n_jobs))
    return LocalPool(workers=running, threads=max(1, (os.cpu_count() or 1) // running))


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
