"""Stop signals (Ctrl-C, SIGTERM) for training and for ``compare``'s worker processes, in one place.

The rule everywhere: the first signal stops gracefully (the running run saves a checkpoint and stops, the
finished runs' report is written), a second one aborts at once. In a single process, ``runs.train_run``
installs ``stop_signals()`` handlers around ``learn``. With a pool of workers (``executors``), each
worker runs in its own process group and ignores SIGTERM, so a terminal's Ctrl-C or a tree-wide SIGTERM
reaches only the parent; the parent's ``relay_to_workers`` handler sets a ``stop`` event (``abort`` on
a second signal) and each worker's watcher thread (``WorkerStop``) turns that into SIGINT to itself while
a job runs, which ``train_run`` handles as a Ctrl-C. A worker whose parent died stops the same way,
starts no further job, and exits. Workers are spawned with SIGINT and SIGTERM blocked
(``blocked_while_spawning``; the mask survives exec), so a signal while they start cannot kill them.

What is per process (the signals that stop training, the worker's stop state) is held here and nowhere
else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = [
    "WorkerStop",
    "become_worker",
    "blocked_while_spawning",
    "deferred",
    "interrupts",
    "relay_to_workers",
    "set_stop_signals",
    "signal_handlers",
    "stop_signals",
    "worker_stop",
]

STOP_SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)

#: The signals that stop training in this process; a compare worker narrows them to SIGINT, which its
#: parent relays, and ignores SIGTERM, so one pre-emption is never counted twice.
_stop_signals: tuple[int, ...] = STOP_SIGNALS


def stop_signals() -> tuple[int, ...]:
    """The signals that stop training in this process (SIGINT and SIGTERM unless a worker narrowed them)."""
    return _stop_signals


def set_stop_signals(signals: Sequence[int]) -> None:
    """Choose the signals that stop training in this process."""
    global _stop_signals
    _stop_signals = tuple(signals)


@contextlib.contextmanager
def signal_handlers(signals: Sequence[int], handler: Any) -> Iterator[None]:
    """``handler`` (a function or ``signal.SIG_IGN``) for ``signals`` inside the block, the previous ones
    after; a no-op outside the main thread, where Python cannot install signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ------------------------------------------------------------------------------------------ parent side


@contextlib.contextmanager
def blocked_while_spawning() -> Iterator[None]:
    """SIGINT/SIGTERM held back (delivered after, not lost) while workers are spawned: they inherit the
    blocked mask and unblock it in ``WorkerStop.install`` once their own handlers are in place."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def interrupts(seen: list[int]) -> contextlib.AbstractContextManager[None]:
    """Ctrl-C and SIGTERM raise ``KeyboardInterrupt`` (in-process and Ray paths; training inside handles
    both itself); appends the signals seen to ``seen``.

    SIGINT too, not only SIGTERM: a process started in the background by a shell (``cmd &``, nohup)
    inherits SIGINT ignored, and Python then installs no handler of its own, so ``kill -INT`` would stop
    its training (whose handler is explicit) but not its evaluation or the gap between two runs."""

    def handler(signum: int, frame: Any) -> None:
        seen.append(signum)
        raise KeyboardInterrupt

    return signal_handlers(STOP_SIGNALS, handler)


def deferred(
    seen: list[int], what: str = "the report of the finished runs"
) -> contextlib.AbstractContextManager[None]:
    """Ctrl-C/SIGTERM only noted in ``seen`` inside the block (``what`` is written whole, then the caller
    stops with 130/143 or passes the signal on)."""

    def handler(signum: int, frame: Any) -> None:
        seen.append(signum)
        name = signal.Signals(signum).name
        print(f"\n{name}: writing {what} first", file=sys.stderr, flush=True)

    return signal_handlers(STOP_SIGNALS, handler)


def relay_to_workers(stop: Any, abort: Any, seen: list[int]) -> contextlib.AbstractContextManager[None]:
    """In the parent: Ctrl-C/SIGTERM set ``stop`` (a second one ``abort``), both ``multiprocessing``
    events the workers watch; appends the signals to ``seen``."""

    def handler(signum: int, frame: Any) -> None:
        seen.append(signum)
        (abort if stop.is_set() else stop).set()
        what = "aborting every run at once" if abort.is_set() else "every run saves a checkpoint and stops"
        print(f"\n{signal.Signals(signum).name}: {what} (again to abort)", file=sys.stderr, flush=True)

    return signal_handlers(STOP_SIGNALS, handler)


# ------------------------------------------------------------------------------------------ worker side


class WorkerStop:
    """A pool worker's view of the parent's ``stop``/``abort`` events: the watcher thread and whether a
    job is running (idle workers ignore SIGINT; a running job gets it as a Ctrl-C)."""

    def __init__(self, stop: Any, abort: Any) -> None:
        self.stop = stop
        self.abort = abort
        self.parent = os.getppid()
        self.jobs = 0
        """Jobs started in this worker; the watcher signals each job at most as often as asked."""
        self.job_running = False

    def install(self) -> None:
        """Own process group, SIGTERM ignored, training stopped by SIGINT only, the watcher started."""
        os.setpgrp()
        set_stop_signals((signal.SIGINT,))  # training stops on the watcher's SIGINT only
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, self._sigint)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(STOP_SIGNALS))  # see blocked_while_spawning
        threading.Thread(target=self._watch, name="compare-stop-watcher", daemon=True).start()

    def orphaned(self) -> bool:
        """The parent is gone: no one is left to take a result or send a job."""
        return os.getppid() != self.parent

    def should_not_start(self) -> bool:
        """A job queued before the stop, or whose parent is gone: never start it."""
        return self.stop.is_set() or self.orphaned()

    @contextlib.contextmanager
    def job(self) -> Iterator[None]:
        """Marks a job as running, so the watcher's SIGINT reaches it."""
        self.jobs += 1
        self.job_running = True
        try:
            yield
        finally:
            self.job_running = False

    def _sigint(self, signum: int, frame: Any) -> None:
        if self.job_running:
            raise KeyboardInterrupt

    def _watch(self) -> None:
        job, sent = 0, 0
        while True:
            time.sleep(0.2)
            orphaned = self.orphaned()
            if orphaned and not self.job_running:
                os._exit(1)  # no one is left to take a result or send a job
            if job != self.jobs:
                job, sent = self.jobs, 0
            wanted = 2 if self.abort.is_set() else 1 if self.stop.is_set() or orphaned else 0
            if self.job_running and sent < wanted:
                sent += 1
                os.kill(os.getpid(), signal.SIGINT)


_worker: WorkerStop | None = None


def worker_stop() -> WorkerStop | None:
    """This process's ``WorkerStop`` when it is a pool worker wired to its parent's events, else None."""
    return _worker


def become_worker(stop: Any, abort: Any) -> WorkerStop:
    """Make this process a pool worker that stops on its parent's events (see the module docstring)."""
    global _worker
    _worker = WorkerStop(stop, abort)
    _worker.install()
    return _worker
