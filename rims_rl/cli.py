"""rims-rl command line: train, resume, evaluate, tune, compare and list (``rims-rl`` once installed, or
``python train.py`` in a checkout).

    python train.py                                   # default: rims_ppo on MiniGrid-Empty-5x5, a few min
    python train.py train --agent lstm_ppo --env MiniGrid-DoorKey-5x5-v0 --timesteps 200000 --seed 1
    python train.py train --agent rims_ppo --suite minigrid-doorkey --set policy_kwargs.rims_kwargs.k=3
    python train.py train --resume runs/<run>         # continue a stopped/killed run to its budget
    python train.py evaluate --checkpoint runs/<run> --suite minigrid-doorkey --episodes 50
    python train.py list

This file talks only to the application layer (``rims_rl.app``); README's "Architecture" section
follows one ``train`` call from here to the PPO loss.

Errors the user can fix (``UserError``: bad names, bad values, unusable files) print ``error: ...`` and
exit with status 2; Ctrl-C saves a checkpoint and exits with 130; divergence (NaN) exits with 1; any
other error is a bug or a system failure and keeps its traceback (the run is marked ``failed``).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rims_rl.app import catalog
from rims_rl.app.checkpoint import list_pretrained, pretrained_alias, resolve_checkpoint
from rims_rl.app.compare import CompareInterrupted, CompareRequest, command_line_of, run_compare
from rims_rl.app.config import DEFAULT_MEMORY_GIB, MEMORY_BUDGET_VAR, set_memory_budget
from rims_rl.app.errors import UserError, storage_error
from rims_rl.app.evaluation import (
    EVAL_PROTOCOL,
    EvalResult,
    env_overrides,
    evaluate_checkpoint,
    format_table,
    load_for_eval,
    record_gif,
    safe_name,
    write_results_csv,
    write_results_json,
)
from rims_rl.app.leaderboard import write_leaderboard
from rims_rl.app.pack import OPTIMIZER_CHOICES, pack_run, unpack_run
from rims_rl.app.rundir import runs_root
from rims_rl.app.runs import TrainingDiverged, TrainingInterrupted, train_run
from rims_rl.app.status import describe_runs
from rims_rl.app.tune import TuneRunsFailed, run_tune
from rims_rl.checks import check_positive

# The embedded default (``python train.py`` / ``make run``): rims_ppo with its MiniGrid preset on
# Empty-5x5, which it solves in under 50k steps (about 14 CPU-minutes), then scored with the evaluation
# protocol every entry point shares (``EVAL_PROTOCOL``).
DEFAULT_AGENT = "rims_ppo"
DEFAULT_ENV = "MiniGrid-Empty-5x5-v0"
DEFAULT_TIMESTEPS = 49_152
DEFAULT_N_ENVS = 16
DEFAULT_OVERRIDES: list[str] = []
DEFAULT_EVAL_EPISODES = EVAL_PROTOCOL.episodes

EXIT_USAGE = 2  # user errors (argparse uses 2 too)
#: The project's leaderboard spec, in a checkout.
DEFAULT_SPEC = "docs/results/leaderboard.yml"
EXIT_DIVERGED = 1


def error(message: str) -> int:
    """Print a one-line ``error: ...`` (no traceback) and return the usage exit code."""
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


# ------------------------------------------------------------------------------------------ train
def cmd_train(args: argparse.Namespace) -> int:
    """``train``: one run in a run directory (or ``--resume`` one)."""
    if args.resume is None and args.env is None and args.suite is None:
        return error("give --env ID or --suite NAME (or --resume RUN_DIR); see `python train.py list`")
    if args.resume is not None:
        given = [
            flag
            for flag, value in (
                ("--env", args.env),
                ("--suite", args.suite),
                ("--run-dir", args.run_dir),
                ("--agent", args.agent),
                ("--core", args.core),
                ("--timesteps", args.timesteps),
                ("--seed", args.seed),
                ("--n-envs", args.n_envs),
                ("--set", args.set or None),
                ("--checkpoint-every", args.checkpoint_every),
            )
            if value is not None
        ]
        if given:
            return error(
                f"--resume continues the run as its config.json says; drop {', '.join(given)} "
                "(or start a new run without --resume)"
            )
    if args.eval_episodes < 0:
        return error(f"--eval-episodes must be >= 0 (0 skips the evaluation), got {args.eval_episodes}")
    start = time.time()
    try:
        run_dir = train_run(
            catalog.with_core(args.agent or DEFAULT_AGENT, args.core),
            args.env,
            suite=args.suite,
            timesteps=args.timesteps,
            seed=args.seed or 0,
            n_envs=args.n_envs,
            device=args.device,
            overrides=args.set,
            run_dir=args.resume or args.run_dir,
            checkpoint_every=args.checkpoint_every,
            progress_bar=not args.no_progress,
            resume=args.resume is not None,
            log_policy_shift=args.log_policy_shift,
        )
    except TrainingInterrupted as err:
        print(f"\n{err}", file=sys.stderr)
        return 128 + err.signum  # 130 for Ctrl-C, 143 for SIGTERM (the shell convention)
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    minutes = (time.time() - start) / 60
    print(f"\ntrained in {minutes:.1f} min")
    print(f"run directory : {run_dir}")
    print(f"config        : {run_dir / 'config.json'}")
    print(f"TensorBoard   : tensorboard --logdir {run_dir / 'tb'}")
    print(f"model         : {run_dir / 'model.zip'}")
    if args.eval_episodes > 0:
        return _evaluate_and_print(
            run_dir,
            None,
            args.eval_episodes,
            EVAL_PROTOCOL.deterministic,
            EVAL_PROTOCOL.seed,
            run_dir,
            progress=not args.no_progress,
        )
    return 0


def cmd_default(args: argparse.Namespace) -> int:
    """No arguments: train the embedded default and evaluate it (the README's ``make run``)."""
    print(
        f"rims-rl default run: {DEFAULT_AGENT} on {DEFAULT_ENV}, {DEFAULT_TIMESTEPS} steps, "
        f"{DEFAULT_N_ENVS} envs (python train.py train --help for your own runs)"
    )
    train_args = build_parser().parse_args(
        [
            "train",
            "--agent",
            DEFAULT_AGENT,
            "--env",
            DEFAULT_ENV,
            "--timesteps",
            str(DEFAULT_TIMESTEPS),
            "--n-envs",
            str(DEFAULT_N_ENVS),
            "--eval-episodes",
            str(DEFAULT_EVAL_EPISODES),
            "--device",
            "cpu",
        ]
        + [a for o in DEFAULT_OVERRIDES for a in ("--set", o)]
    )
    return cmd_train(train_args)


# --------------------------------------------------------------------------------------- evaluate
def _label(target: str) -> str:
    """A file-name label for an env id, a suite name or a suite file (its stem)."""
    return safe_name(Path(target).stem if target.endswith((".yml", ".yaml")) else target)


def _evaluate_and_print(
    checkpoint: Any,
    target: Any,
    episodes: int,
    deterministic: bool,
    seed: int,
    out: Path | None,
    trust: bool = False,
    video: Path | None = None,
    env_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> int:
    path = resolve_checkpoint(checkpoint)
    mode = "deterministic" if deterministic else "stochastic"
    print(f"evaluating {path} ({episodes} episodes per env, {mode} actions, seed {seed})", flush=True)
    results = evaluate_checkpoint(
        path, target, episodes, deterministic, seed, trust=trust, env_kwargs=env_kwargs, progress=progress
    )
    print(format_table(results))
    alias = pretrained_alias(path)
    if out is not None:
        out_dir = Path(out)
    elif alias is not None:
        out_dir = runs_root() / "eval" / alias
    else:
        out_dir = path.parent
    stem = "eval" if target is None else f"eval-{_label(str(target))}"
    json_path = write_results_json(results, out_dir / f"{stem}.json")
    csv_path = write_results_csv(results, out_dir / f"{stem}.csv")
    print(f"results: {json_path}, {csv_path}")
    if video is not None:
        _record_video(path, results, video, seed, deterministic, trust)
    return 0


def _record_video(
    checkpoint: Path, results: list[EvalResult], out: Path, seed: int, deterministic: bool, trust: bool
) -> None:
    """Two episodes per evaluated env as GIFs: the envs exactly as scored (ours or a foreign checkpoint)."""
    try:
        import moviepy  # noqa: F401

        have_moviepy = True
    except ImportError:
        have_moviepy = False
    for spec in (r.spec() for r in results):
        model, _ = load_for_eval(checkpoint, spec, trust=trust)
        try:
            files = record_gif(
                model, spec, out / safe_name(spec.name), n_episodes=2, seed=seed, deterministic=deterministic
            )
        except ValueError as err:
            print(f"video: skipped {spec.name}: {err}", file=sys.stderr)
            continue
        note = "" if have_moviepy else " (GIF via PIL: moviepy is not installed)"
        print(f"video{note}: {', '.join(str(f) for f in files)}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``evaluate``: a checkpoint (.zip, run dir or pretrained alias) on an env or a whole suite."""
    check_positive("--episodes", args.episodes, error=UserError)
    if args.suite is not None:
        catalog.suite(args.suite)  # a misspelt suite name lists the suites, not env ids
    target = args.suite if args.suite is not None else args.env
    return _evaluate_and_print(
        args.checkpoint,
        target,
        args.episodes,
        args.deterministic,
        args.seed,
        Path(args.out) if args.out else None,
        trust=args.trust_checkpoint,
        video=Path(args.video) if args.video else None,
        env_kwargs=env_overrides(args.set),
        progress=not args.no_progress,
    )


# ------------------------------------------------------------------------------------------- list
def cmd_list(args: argparse.Namespace) -> int:
    """``list``: an overview of agents, cores, suites, env families and pretrained models; ``list envs``
    every env id (narrowed by TEXT and ``--family``), ``list pretrained`` each model's suite and card."""
    what = args.what
    if (args.text is not None or args.family is not None) and what not in ("all", "envs"):
        return error(f"TEXT and --family narrow `list envs`, not `list {what}`")
    if args.text is not None or args.family is not None:
        what = "envs"
    if what in ("all", "agents"):
        print("agents:")
        for name in catalog.agents():
            print(f"  {name}")
    if what in ("all", "cores"):
        print("cores (train --agent A --core NAME; options: --set core.KEY=VALUE):")
        for name, desc in catalog.cores().items():
            print(f"  {name:10s} {desc}")
    if what in ("all", "suites"):
        print("suites (train env -> OOD variants):")
        for name, desc in catalog.suites().items():
            print(f"  {name:24s} {desc}")
        print("  atari-modes-<game>       any ALE game: default mode -> other modes/difficulties")
    if what == "envs":
        found = catalog.env_ids_by_family(args.text, args.family)
        for family, ids in found.items():
            print(f"{family} envs ({len(ids)}):")
            for i in ids:
                print(f"  {i}")
        if not found:
            what_ids = f"contains {args.text!r}" if args.text is not None else "is listed"
            print(f"no env id {what_ids}" + (f" in family {args.family}" if args.family else ""))
    if what == "all":
        for family, ids in catalog.env_ids_by_family().items():
            more = ", ..." if len(ids) > 4 else ""
            print(f"{family} envs ({len(ids)}): {', '.join(ids[:4])}{more}")
        print("  (every env id: `list envs`; narrowed: `list envs DoorKey`, `list envs --family popgym`)")
    if what == "pretrained":
        models = catalog.pretrained()
        print(
            f"pretrained ({len(models)}; evaluate --checkpoint ALIAS --suite SUITE):"
            if models
            else "none yet"
        )
        for m in models:
            print(f"  {m.alias:34s} {m.agent} on {m.train_env}, suite {m.suite or '-'}; card {m.card}")
    elif what == "all":
        names = list_pretrained()
        print(f"pretrained: {', '.join(names) if names else 'none yet'} (details: `list pretrained`)")
    return 0


# ---------------------------------------------------------------------------------------- compare
def cmd_compare(args: argparse.Namespace) -> int:
    """``compare``: several agents x seeds on a suite (implemented in ``rims_rl.app.compare``)."""
    request = CompareRequest(
        agents=tuple(catalog.with_core(a, args.core) for a in args.agents),
        suite=args.suite,
        env=args.env,
        seeds=args.seeds,
        timesteps=args.timesteps,
        n_envs=args.n_envs,
        workers=args.workers,
        out=args.out,
        eval_episodes=args.eval_episodes,
        overrides=tuple(args.set),
        deterministic=args.deterministic,
        executor=args.executor,
        ray_address=args.ray_address,
        tuned=args.tuned,
        log_policy_shift=args.log_policy_shift,
        command_line=command_line_of(sys.argv),  # the report quotes the command that made it
    )
    try:
        result = run_compare(request)
    except CompareInterrupted as err:
        print(f"\n{err}", file=sys.stderr)
        return 128 + err.signum
    if result.failed:
        print(f"error: {result.failed} run(s) failed (see the report and runs.json)", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------------------- tune
def cmd_leaderboard(args: argparse.Namespace) -> int:
    """Rebuild the leaderboard page from the records its spec names (nothing is trained)."""
    if args.reps < 100:
        raise UserError(f"--reps {args.reps}: a bootstrap CI needs at least 100 replicates")
    spec = Path(args.spec)
    if not spec.is_file() and args.spec == DEFAULT_SPEC:
        raise UserError(
            f"no {DEFAULT_SPEC} here: the project's leaderboard is rebuilt from a checkout's committed "
            "records (run this in one); for your own, give --spec FILE in that format"
        )
    out = Path(args.out) if args.out else spec.with_suffix(".md")
    if not args.out and out == spec:  # a spec named *.md: never write the page over its own input
        out = spec.with_name(f"{spec.stem}-leaderboard.md")
    command = "python train.py leaderboard" + (
        "" if args.spec == DEFAULT_SPEC else f" --spec {args.spec}"
    )
    path = write_leaderboard(args.spec, out, command, reps=args.reps)
    print(f"leaderboard: {path}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """``status``: one line per run under each DIR (a run, a compare or a tune folder); reads only."""
    dirs = [Path(d) for d in args.dirs] or [runs_root()]
    lines = describe_runs(dirs)
    print("\n".join(lines) if lines else f"no runs under {', '.join(map(str, dirs))}")
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    """``pack``: a run's resume form, small enough to commit, for a run that must outlive its machine."""
    out = pack_run(args.run_dir, args.out, args.optimizer)
    print(
        f"resume form: {out} ({out.stat().st_size / 2**20:.1f} MiB); on another machine: "
        f"python train.py unpack {out} --run-dir {args.run_dir}, then train --resume (or the same compare)"
    )
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    """``unpack``: a run directory again from its resume form (``pack``)."""
    run, steps = unpack_run(args.form, args.run_dir)
    print(
        f"{run}: {steps:,} steps; continue with: python train.py train --resume {run} (or the same compare)"
    )
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """``tune``: the same grid for every agent on a suite's training env; writes tune.json / tune.md."""
    args.out = args.out or str(runs_root() / "tune")
    try:
        chosen = run_tune(
            args.suite,
            args.grid,
            agents=[catalog.with_core(a, args.core) for a in args.agents],
            agent_grids=args.agent_grid,
            overrides=args.set,
            seeds=args.seeds,
            timesteps=args.timesteps,
            out=args.out,
            eval_episodes=args.eval_episodes,
            workers=args.workers,
            deterministic=args.deterministic,
        )
    except CompareInterrupted as err:
        print(
            f"\ninterrupted: finished runs keep their records under {args.out}; continue with the same "
            f"command: python {shlex.join(sys.argv)}",
            file=sys.stderr,
        )
        return 128 + err.signum
    except TuneRunsFailed as err:
        print(
            f"error: {err}, so not every configuration got its trials (see each configuration's runs.json "
            f"under {args.out}); fix the cause and run the same command again: finished runs are kept",
            file=sys.stderr,
        )
        return 1
    for agent, settings in chosen.items():
        print(f"{agent}: {' '.join(f'{k}={v}' for k, v in settings.items()) or 'preset'}")
    out = Path(args.out)
    print(f"tuning report: {out / 'tune.md'}; use the choices with: compare --tuned {out / 'tune.json'}")
    return 0


# ---------------------------------------------------------------------------------------- parsing
def _add_core_argument(p: argparse.ArgumentParser) -> None:
    """``--core NAME``, the same for train, compare and tune."""
    p.add_argument(
        "--core",
        help="use this recurrent core (a registered name: `list cores`) with the agent's PPO settings and "
        "output width; set its options with --set core.KEY=VALUE",
    )


def _add_memory_argument(p: argparse.ArgumentParser) -> None:
    """``--memory-gib``: the budget every model is measured against before it is built, the same for every
    command that builds one (``check_measured_size``)."""
    p.add_argument(
        "--memory-gib",
        type=float,
        metavar="GIB",
        help=f"refuse a run whose parameters (with gradients and Adam) and rollout buffer exceed GIB "
        f"(default {DEFAULT_MEMORY_GIB:g}, or ${MEMORY_BUDGET_VAR}; every preset takes under 0.2)",
    )


def _add_eval_arguments(p: argparse.ArgumentParser, episodes_flag: str) -> None:
    """Episodes and action mode, defaulting to ``EVAL_PROTOCOL`` in every command that scores a policy."""
    p.add_argument(
        episodes_flag,
        type=int,
        default=EVAL_PROTOCOL.episodes,
        help=f"evaluation episodes per env (default {EVAL_PROTOCOL.episodes})",
    )
    det = p.add_mutually_exclusive_group()
    det.add_argument(
        "--stochastic",
        dest="deterministic",
        action="store_false",
        default=EVAL_PROTOCOL.deterministic,
        help="sample actions (the default: the agents are trained as stochastic policies)",
    )
    det.add_argument("--deterministic", dest="deterministic", action="store_true", help="greedy actions")


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree; ``python train.py <command> --help`` shows each command's flags."""
    parser = argparse.ArgumentParser(
        description=(
            "Train, evaluate, tune and compare PPO agents with recurrent cores (RIMs, LSTM, GRU, TLB, "
            "stable assembly, plug-ins; `list cores`) on MiniGrid, Atari and POPGym suites. "
            "No arguments: a short default run."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train one agent on one env or a suite's train env")
    p.add_argument("--agent", help=f"{' | '.join(catalog.agents())} (default {DEFAULT_AGENT}; `list agents`)")
    _add_core_argument(p)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--env", help="env id, e.g. MiniGrid-DoorKey-5x5-v0 or ALE/Breakout-v5")
    where.add_argument(
        "--suite", help="train on this suite's train env: a name (`list suites`) or a YAML file"
    )
    p.add_argument(
        "--timesteps", type=int, help="budget (default: the preset's; rounded up to whole rollouts)"
    )
    p.add_argument("--seed", type=int, help="seed of envs, initialisation and sampling (default 0)")
    p.add_argument("--n-envs", type=int, help="parallel envs (default: the preset's)")
    p.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch device (default auto)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a hyperparameter, e.g. ppo.learning_rate=3e-4, "
        "policy_kwargs.rims_kwargs.k=3 (repeatable)",
    )
    p.add_argument(
        "--run-dir",
        help="run directory (default $RIMS_RL_RUNS or runs/, then <agent>-<env>-s<seed>-<timestamp>)",
    )
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: budget/10)")
    p.add_argument(
        "--log-policy-shift",
        action="store_true",
        help="log train/policy_kl: KL between the policy before and after each update, on its rollout",
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped or killed run to its budget")
    p.add_argument(
        "--eval-episodes",
        type=int,
        default=0,
        help="evaluate the final model on this many episodes, sampled, seed 10000 (default 0: skip)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_memory_argument(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on an env or a whole suite")
    p.add_argument("--checkpoint", required=True, help="a .zip, a run directory or a pretrained alias")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--env", help="env id (default: the env the checkpoint was trained on)")
    where.add_argument("--suite", help="a suite name or YAML file: the train env and every OOD variant")
    _add_eval_arguments(p, "--episodes")
    p.add_argument(
        "--seed",
        type=int,
        default=EVAL_PROTOCOL.seed,
        help=f"seed of the evaluation envs (default {EVAL_PROTOCOL.seed}, as compare and the model cards)",
    )
    p.add_argument(
        "--out",
        help="directory for eval*.json / eval*.csv (default: next to the checkpoint; "
        "runs/eval/<alias> for a pretrained alias)",
    )
    p.add_argument("--video", metavar="DIR", help="also record 2 episodes per env as GIFs into DIR")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="env.KEY=VALUE",
        help="env wrapper setting for every evaluated env, e.g. env.frame_stack=4 (repeatable)",
    )
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow unpickling code from the checkpoint (SB3's load); only for files you trust",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (none off a terminal anyway)")
    _add_memory_argument(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("list", help="list agents, suites, envs and pretrained models")
    p.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=("all", "agents", "cores", "suites", "envs", "pretrained"),
        help="what to list (default all: an overview; `envs` every env id, `pretrained` with suites and "
        "cards)",
    )
    p.add_argument("text", nargs="?", help="with envs: only the ids containing TEXT (any case)")
    p.add_argument("--family", help="with envs: only this env family's ids (e.g. minigrid, atari, popgym)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("compare", help="agents x seeds on a suite, with statistics and a report")
    p.add_argument(
        "--agents",
        nargs="+",
        default=["rims_ppo", "lstm_ppo"],
        help="agents to compare (default rims_ppo lstm_ppo)",
    )
    _add_core_argument(p)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--suite", help="suite name or suite YAML file: train env + OOD variants")
    where.add_argument("--env", help="a single env id instead of a suite")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default 3)")
    p.add_argument("--timesteps", type=int, help="budget per run (default: the preset's)")
    p.add_argument("--n-envs", type=int, help="parallel envs per run (default: the preset's)")
    p.add_argument("--workers", type=int, default=1, help="runs in parallel (local backend; default 1)")
    p.add_argument(
        "--backend",
        dest="executor",
        choices=("local", "ray"),
        default="local",
        help="local process pool (default) or Ray tasks (needs rims-rl[ray]; RAY_ADDRESS or --ray-address "
        "for a cluster)",
    )
    p.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--tuned", metavar="TUNE_JSON", help="each agent's settings chosen by `tune` (tune.json)")
    p.add_argument(
        "--out",
        help="output directory (default $RIMS_RL_RUNS or runs/, then compare-<suite or env>; re-running "
        "resumes)",
    )
    _add_eval_arguments(p, "--eval-episodes")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a hyperparameter for every agent, e.g. ppo.learning_rate=3e-4 (repeatable)",
    )
    p.add_argument(
        "--log-policy-shift",
        action="store_true",
        help="log each update's policy KL in the runs trained; their records keep it (issue 41's diagnostic)",
    )
    _add_memory_argument(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("tune", help="tune every agent with the same grid on a suite's training env only")
    p.add_argument("--suite", required=True, help="suite name or YAML file; only its training env is used")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="values to try for a --set key, e.g. ppo.learning_rate=1e-4,3e-4,1e-3 (repeatable: product)",
    )
    p.add_argument(
        "--agent-grid",
        action="append",
        default=[],
        metavar="AGENT:KEY=V1,V2,...",
        help="one agent's own axis, times --grid; tie keys with +: rims_ppo:policy_kwargs.rims_kwargs.n_units"
        "+policy_kwargs.rims_kwargs.k=6+4,8+4. Every agent must end with the same number of trials",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fix a setting for every agent and trial, e.g. ppo.chunk_length=32 (repeatable; not a --grid "
        "key); tune.json's choices carry it",
    )
    p.add_argument(
        "--agents",
        nargs="+",
        default=["rims_ppo", "lstm_ppo"],
        help="agents to tune (default rims_ppo lstm_ppo)",
    )
    _add_core_argument(p)
    p.add_argument(
        "--seeds", type=int, default=2, help="tuning seeds per configuration (from 1000, default 2)"
    )
    p.add_argument("--timesteps", type=int, help="budget per run (default: the preset's)")
    p.add_argument("--out", default=None, help="output directory (default $RIMS_RL_RUNS or runs/, then tune)")
    _add_eval_arguments(p, "--eval-episodes")
    p.add_argument("--workers", type=int, default=1, help="runs in parallel (default 1)")
    _add_memory_argument(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser(
        "leaderboard", help="agent x suite table, P(row > column) and figure from committed records"
    )
    p.add_argument(
        "--spec",
        default=DEFAULT_SPEC,
        help="suites, their record folders and pending commands (default: the checkout's own, which an "
        "installed wheel does not carry: give your spec)",
    )
    p.add_argument("--out", default=None, help="Markdown page to write (default: the spec's name, .md)")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap replicates per CI (default 2000)")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser(
        "status", help="how far runs got: steps, budget and last checkpoint (nothing is changed)"
    )
    p.add_argument(
        "dirs", nargs="*", metavar="DIR", help="run, compare or tune directories (default: the runs root's)"
    )
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "pack", help="a run's resume form (config, logs, newest checkpoint): small enough to commit"
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory")
    p.add_argument("--out", required=True, help="the .zip to write")
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZER_CHOICES,
        default="bf16",
        help="the optimizer state: bf16 (default, half its size), fp32 (exact) or none (weights only)",
    )
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("unpack", help="a run directory again from its resume form, ready for train --resume")
    p.add_argument("form", metavar="FORM", help="the .zip written by pack")
    p.add_argument("--run-dir", required=True, help="where the run goes (a new directory)")
    p.set_defaults(func=cmd_unpack)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # `list envs --family F TEXT`: argparse leaves a positional given after an option over
        listing = getattr(args, "command", None) == "list" and args.text is None
        if listing and len(extra) == 1 and not extra[0].startswith("-"):
            args.text = extra.pop()
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_:  # argparse already printed its message
        return int(exit_.code or 0)
    try:
        set_memory_budget(getattr(args, "memory_gib", None))  # worker processes read it too
        if args.command is None:
            return cmd_default(args)
        return args.func(args)
    except UserError as err:
        return error(str(err))
    except OSError as err:  # a full or read-only disk anywhere (compare, tune, leaderboard, ...): one line
        storage = storage_error(err)
        if storage is None:
            raise
        return error(str(storage))


def run() -> None:
    """The process entry point (``rims-rl``, ``python train.py``): ``main`` and exit with its status."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started in the background by a script (`cmd &`): the shell left SIGINT ignored, and Python then
        # raises no KeyboardInterrupt. Training stops on SIGINT (its own handler), so every other phase
        # (setup, evaluation, reports, a tune's gaps) must too, or `kill -INT` works only some of the time.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    status = main()
    if status in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        # Stopped and saved: the process only exits now, so another Ctrl-C has nothing left to abort
        # (and would only print a traceback from an exit handler).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    sys.exit(status)


if __name__ == "__main__":
    run()
