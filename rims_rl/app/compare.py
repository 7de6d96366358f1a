"""``train.py compare``: train several agents over several seeds on a suite, evaluate OOD, write a report.

Each (agent, seed) is one job (``jobs.run_job``): ``train_run`` on the suite's training env, then
``evaluate_checkpoint`` of the final model on every spec of the suite (training env + OOD variants). Jobs
write into ``<out>/runs/<agent>-seed<k>/`` and keep a compact record in ``<out>/records/`` (``records``);
a job whose run is already finished with the same evaluation settings is skipped, so an interrupted or
extended comparison (more seeds, another agent) only trains what is missing. The jobs run in this process,
in a local pool of workers or on Ray (``executors``); Ctrl-C once stops every run at its next checkpoint,
twice aborts (``signals``). The report (``report``) is rebuilt from all finished runs at the end.

All agents of one seed get the same training seed, and every run is evaluated on the same episode
seeds, so differences between agents are not differences in the episodes they were scored on.
"""

from __future__ import annotations

import itertools
import os
import shlex
import signal
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rims_rl.agents import check_agent, parse_overrides
from rims_rl.app import rundir, signals
from rims_rl.app.atomic import atomic_write_json
from rims_rl.app.config import MAX_SEED, resolve_config
from rims_rl.app.curves import read_learning_curve
from rims_rl.app.errors import UserError, output_path, user_input
from rims_rl.app.evaluation import EVAL_PROTOCOL
from rims_rl.app.executors import EXECUTORS, check_ray_address, make_executor
from rims_rl.app.jobs import LOCAL, Backend, JobResult, run_job
from rims_rl.app.records import (
    RECORDS_DIR,
    RunJob,
    config_mismatch,
    finished_records,
    is_finished,
    read_record_curve,
)
from rims_rl.app.report import write_report
from rims_rl.app.runs import TrainingInterrupted
from rims_rl.checks import check_int, check_positive, safe_name
from rims_rl.envs import get_suite
from rims_rl.envs.untrusted import UntrustedFileError, load_json

DEFAULT_AGENTS: tuple[str, ...] = ("rims_ppo", "lstm_ppo")

__all__ = [
    "DEFAULT_AGENTS",
    "CompareInterrupted",
    "CompareRequest",
    "CompareResult",
    "default_out_dir",
    "read_tuned",
    "run_compare",
]

Tuned = str | Path | Mapping[str, Mapping[str, Any]]

#: Seeds of one comparison: the benchmark uses 10; a typo of 10**9 is refused before the list is built.
MAX_SEEDS = 1000


@dataclass(frozen=True)
class CompareRequest:
    """What to compare and how: the ``compare`` command's options, built by the CLI and by ``tune``."""

    agents: Sequence[str] = DEFAULT_AGENTS
    """Agents to compare (preset names; ``a,b`` strings are split)."""
    suite: str | None = None
    """Suite name or YAML file: trained on its train env, evaluated on every spec. Exactly one of
    ``suite`` and ``env``."""
    env: str | None = None
    """A single env id to train and evaluate on instead of a suite."""
    seeds: int | Sequence[int] = 3
    """``N`` for seeds 0..N-1, or the seeds themselves."""
    timesteps: int | None = None
    """Training budget per run; None for the preset's."""
    n_envs: int | None = None
    """Parallel training envs per run; None for the preset's."""
    workers: int | None = None
    """Runs in parallel with the local executor; None for one per CPU (at most one per run)."""
    out: str | Path | None = None
    """Output folder; None for ``runs/compare-<suite or env>`` (re-running a command resumes it)."""
    eval_episodes: int = EVAL_PROTOCOL.episodes
    """Evaluation episodes per env and run."""
    overrides: Mapping[str, Any] | Sequence[str] = ()
    """``--set`` overrides for every agent (``KEY=VALUE`` strings or a mapping); they win over ``tuned``."""
    deterministic: bool = EVAL_PROTOCOL.deterministic
    """Evaluate with greedy actions (False: sampled, the default protocol)."""
    device: str = "auto"
    """Torch device of every run."""
    reps: int = 2000
    """Bootstrap resamples of the report's confidence intervals."""
    progress: bool = True
    """Show a progress bar over runs."""
    label: str = "compare"
    """The command named in the summary line (``tune`` runs each trial as a compare)."""
    command_line: str | None = None
    """The command quoted in the report (None: this process's ``sys.argv``)."""
    executor: str = "local"
    """Where the runs go: ``local`` (this process or a pool of ``workers``) or ``ray``."""
    ray_address: str | None = None
    """Ray cluster address (None: ``RAY_ADDRESS``, else a local Ray instance)."""
    tuned: Tuned | None = None
    """Each agent's settings chosen by ``tune`` (its ``tune.json``, or a mapping agent -> settings)."""
    log_policy_shift: bool = False
    """Log each update's policy KL in every run trained here; records keep it (``DIAGNOSTIC_TAGS``)."""

    def command(self) -> str:
        """The command line the report quotes and the continue hint repeats."""
        return self.command_line or command_line_of(sys.argv)


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
    evaluated: int = 0
    """Runs trained before and evaluated in this call (new evaluation settings, or the suite changed)."""


@dataclass(frozen=True)
class _Plan:
    """A checked request: the agents, seeds and settings each run resolves, and its jobs."""

    agents: list[str]
    seeds: list[int]
    overrides: dict[str, Any]
    tuned: dict[str, dict[str, Any]]
    out_dir: Path
    workers: int
    jobs: list[RunJob]


# ------------------------------------------------------------------------------------------- driver


def _as_list(value: str | Iterable[str] | None, default: Sequence[str]) -> list[str]:
    if value is None:
        return list(default)
    items = [value] if isinstance(value, str) else list(value)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def _as_seeds(seeds: int | Iterable[int]) -> list[int]:
    """``3`` -> seeds 0, 1, 2 (the CLI's ``--seeds N``); an explicit list is used as given."""
    if isinstance(seeds, int):  # bounded before the list is built
        return list(range(check_int("--seeds", seeds, 1, MAX_SEEDS, error=UserError)))
    chosen = list(itertools.islice(seeds, MAX_SEEDS + 1))
    if len(chosen) > MAX_SEEDS:
        raise UserError(f"at most {MAX_SEEDS} seeds per compare; split the comparison")
    if len(set(chosen)) < len(chosen):
        raise UserError(f"seeds {chosen} name a seed more than once; name each once")
    return [check_int("seed", s, 0, MAX_SEED, error=UserError) for s in chosen]


def _as_overrides(value: Mapping[str, Any] | Iterable[str] | None) -> dict[str, Any]:
    if not value:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    return parse_overrides([value] if isinstance(value, str) else list(value))


def command_line_of(argv: Sequence[str]) -> str:
    """``argv`` as a command to paste: ``python train.py ...`` for the script, else the program's name."""
    argv = list(argv)
    if argv and argv[0].endswith(".py"):
        return "python " + shlex.join(argv)
    return shlex.join([Path(sys.executable).name, *argv]) if argv else ""


def _plan(request: CompareRequest) -> _Plan:
    """Every setting checked, as each run will resolve it (``UserError`` naming the bad one), before
    anything is trained or written."""
    if request.executor not in EXECUTORS:
        raise UserError(f"--backend must be one of {', '.join(EXECUTORS)}, got {request.executor!r}")
    suite, env = request.suite, request.env
    if (suite is None) == (env is None):
        raise UserError("compare needs exactly one of --suite or --env")
    agents = _as_list(request.agents, DEFAULT_AGENTS)
    twice = sorted({a for a in agents if agents.count(a) > 1})
    if twice:  # one run would be counted twice in every statistic
        raise UserError(f"--agents names {', '.join(twice)} more than once; name each agent once")
    eval_episodes = request.eval_episodes
    with user_input():
        for agent in agents:
            check_agent(agent)
        if suite is not None:
            get_suite(suite)  # fail fast on a bad name, before spawning anything
        seeds = _as_seeds(request.seeds)
        over = _as_overrides(request.overrides)
        check_positive("--eval-episodes", eval_episodes)
    if request.executor == "ray":
        check_ray_address(request.ray_address or os.environ.get("RAY_ADDRESS"))
    tuned = read_tuned(request.tuned, agents) if request.tuned is not None else {}
    settings = {a: {**tuned.get(a, {}), **over} for a in agents}  # --set wins over tuned values
    for agent in agents:  # every agent's settings, as each run will resolve them (UserError if bad)
        resolve_config(
            agent,
            env,
            suite=suite,
            timesteps=request.timesteps,
            n_envs=request.n_envs,
            device=request.device,
            overrides=settings[agent],
        )
    n_jobs = len(agents) * len(seeds)
    workers = max(1, min(request.workers or os.cpu_count() or 1, n_jobs))
    out_dir = Path(request.out) if request.out else default_out_dir(str(suite or env))
    jobs = [
        RunJob(
            agent=a,
            seed=s,
            run_dir=str(out_dir / "runs" / f"{a}-seed{s}"),
            timesteps=request.timesteps,
            suite=suite,
            env_id=env,
            n_envs=request.n_envs,
            overrides=settings[a],
            eval_episodes=eval_episodes,
            deterministic=request.deterministic,
            log_policy_shift=request.log_policy_shift,
            device=request.device,
        )
        for s in seeds
        for a in agents
    ]
    return _Plan(agents, seeds, over, tuned, out_dir, workers, jobs)


def _check_out(plan: _Plan) -> None:
    """Refuse before anything is touched: never write outside ``--out``, never replace a report with a
    worse one (runs of other settings), never use a stored record that is not of its run."""
    for sub in ("runs", RECORDS_DIR):  # a link would make compare write outside --out
        if (plan.out_dir / sub).is_symlink():
            raise UserError(
                f"{plan.out_dir / sub} is a symbolic link; compare writes only inside --out {plan.out_dir}: "
                "make it a plain directory (or use another --out)"
            )
    for job in plan.jobs:
        mismatch = config_mismatch(job)
        if mismatch:
            raise UserError(mismatch)
        finished_records(job)  # stored records are checked against the job (UserError naming the file)


def run_compare(request: CompareRequest, backend: Backend | None = None) -> CompareResult:
    """Train the request's agents x seeds on its suite (or env), evaluate, write the report.

    Re-running skips runs already trained and evaluated in ``out``. Runs that fail are listed in the
    report (and ``runs.json``) while the others still count. Every setting is checked, and an ``out``
    folder that holds runs with other settings is refused, before anything is trained or written.
    ``backend`` (default ``LOCAL``) holds the train and evaluate functions. ``CompareInterrupted`` when a
    stop signal came: the report of the finished runs is written first.
    """
    backend = backend or LOCAL
    plan = _plan(request)
    _check_out(plan)
    out_dir = plan.out_dir
    with output_path(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    # One compare per --out at a time: runs.json and the report are shared by every run in it.
    with rundir.locked(out_dir):
        results: list[JobResult] = []
        todo = []
        for job in plan.jobs:
            if is_finished(job):
                results.append(run_job(job, backend))  # cheap: reads the stored evaluation
            else:
                todo.append(job)
        bar = tqdm(
            total=len(plan.jobs),
            desc="compare runs",
            unit="run",
            disable=not request.progress,
            initial=len(results),
        )
        if results:
            bar.write(f"skipping {len(results)} finished run(s) in {out_dir / 'runs'}")

        def done(result: JobResult) -> None:
            status = "failed" if result.error else ("trained" if result.trained else "evaluated")
            bar.set_postfix_str(f"{result.agent} seed {result.seed} {status}")
            bar.update(1)
            results.append(result)

        interrupted, signum = False, int(signal.SIGINT)
        seen: list[int] = []  # stop signals received (SIGINT, SIGTERM)
        try:
            if todo:
                executor = make_executor(
                    request.executor,
                    plan.workers,
                    len(todo),
                    request.device,
                    request.ray_address,
                    progress=request.progress,
                )
                interrupted = executor.run(todo, backend, done, seen)
        except TrainingInterrupted as err:
            interrupted, signum = True, err.signum
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
        # The runs are done: a stop signal now waits until runs.json and the report are written.
        with signals.deferred(seen):
            summary, paths = _write_results(request, plan, results)
        if seen:  # even after the last run finished: the caller (tune) must not start more
            interrupted, signum = True, seen[0]
        if interrupted:
            unfinished = "; unfinished runs saved a checkpoint" if len(results) < len(plan.jobs) else ""
            raise CompareInterrupted(
                f"interrupted: the report holds the {len(results)} finished run(s){unfinished}. Continue "
                f"with the same command: {request.command()}",
                paths,
                signum,
            )
        return CompareResult(files=paths, **summary)


def _write_results(
    request: CompareRequest, plan: _Plan, results: list[JobResult]
) -> tuple[dict[str, int], dict[str, Path]]:
    """``runs.json`` and the report of every finished run; the counts of trained, evaluated again,
    skipped, failed."""
    order = {(j.agent, j.seed): i for i, j in enumerate(plan.jobs)}
    results.sort(key=lambda r: order[(r.agent, r.seed)])
    failures = [r for r in results if r.error]
    for f in failures:
        print(f"run {f.agent} seed {f.seed} failed: {f.error}\n{f.traceback or ''}", file=sys.stderr)
    records = [rec for r in results if not r.error for rec in r.records]
    summary = {
        "trained": sum(r.trained for r in results),
        "evaluated": sum(r.evaluated and not r.trained and not r.error for r in results),
        "skipped": sum(r.skipped for r in results),
        "failed": len(failures),
    }
    atomic_write_json(plan.out_dir / "runs.json", [r.summary() for r in results])
    target = request.suite or request.env
    tuned = "; ".join(f"{a}: {_fmt_tuned(plan.tuned.get(a, {}), plan.overrides)}" for a in plan.agents)
    meta = {
        "agents": ",".join(plan.agents),
        "suite" if request.suite else "env": target,
        "seeds": ",".join(map(str, plan.seeds)),
        "timesteps": request.timesteps if request.timesteps is not None else "preset",
        "n_envs": request.n_envs if request.n_envs is not None else "preset",
        "eval_episodes": request.eval_episodes,
        "deterministic_eval": request.deterministic,
        "eval_seed": EVAL_PROTOCOL.seed,
        "overrides": " ".join(f"{k}={v}" for k, v in plan.overrides.items()) or "none",
        **({"tuned": tuned} if plan.tuned else {}),
        "bootstrap_reps": request.reps,
        **{f"runs_{k}": v for k, v in summary.items()},
    }
    paths = write_report(
        plan.out_dir,
        records,
        curves=_collect_curves(results, plan.agents),
        command=request.command(),
        meta=meta,
        failures=[{"agent": r.agent, "seed": r.seed, "error": r.error} for r in failures],
        reps=request.reps,
        title=f"Comparison on {target}: {' vs '.join(plan.agents)}",
        throughput=_throughput(results, plan.agents),
    )
    print(
        f"{request.label}: {summary['trained']} trained, {summary['evaluated']} evaluated again, "
        f"{summary['skipped']} skipped, "
        f"{summary['failed']} failed; report: {paths['report']}"
    )
    return summary, paths


def _collect_curves(results: Sequence[JobResult], agents: Sequence[str]) -> dict[str, list[Any]]:
    """Each agent's learning curves (empty list: none of its runs logged one)."""
    curves: dict[str, list[Any]] = {a: [] for a in agents}
    for res in results:
        if res.error:
            continue
        curve = read_learning_curve(res.run_dir) or read_record_curve(res.run_dir)
        if curve is not None:
            curves.setdefault(res.agent, []).append(curve)
    return curves


def _throughput(results: Sequence[JobResult], agents: Sequence[str]) -> dict[str, list[float]]:
    """Each agent's training steps per second, one per run trained from scratch with a known time."""
    rates: dict[str, list[float]] = {a: [] for a in agents}
    for res in results:
        steps = max((r["timesteps"] for r in res.records), default=0)
        if not res.error and res.train_seconds and steps > 0:
            rates.setdefault(res.agent, []).append(steps / res.train_seconds)
    return rates


def default_out_dir(target: str) -> Path:
    """``<runs root>/compare-<suite or env>``: stable (no timestamp), so re-running a command resumes it."""
    return rundir.runs_root() / ("compare-" + safe_name(target))


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
