"""One training run in a directory you can inspect, resume and evaluate.

``train_run`` resolves and validates everything (agent, env or suite, hyperparameters) *before* it
creates anything on disk, then writes::

    runs/<agent>-<env>-s<seed>-<timestamp>/
        config.json              the full resolved config (agent, env, seed, budget, preset, spaces)
        status.json              running | finished | interrupted | diverged, with the step count
        logs/progress*.csv       SB3's scalars (one file per start, so a resume does not overwrite)
        tb/                      TensorBoard: SB3's scalars + RIMs unit usage (rims/*)
        checkpoints/step_<n>.zip periodic checkpoints (atomic writes), checkpoints/latest -> newest
        model.zip                the final model

Ctrl-C stops at the next environment step, saves a checkpoint and says how to resume; a SIGKILL loses
at most one checkpoint interval; ``resume=True`` continues from the newest readable checkpoint to the
same total budget. Non-finite parameters or loss stop training with ``TrainingDiverged`` and leave the
last good checkpoint as ``latest``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import platform
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import Logger, make_output_format
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecEnv

from rims_rl.checkpoint import (
    atomic_write_json,
    describe_space,
    latest_checkpoint,
    load_weights,
    read_meta,
    save_checkpoint,
    step_checkpoints,
    write_latest,
)

CONFIG_NAME = "config.json"
STATUS_NAME = "status.json"
DEFAULT_RUNS_ROOT = Path("runs")
DEFAULT_N_CHECKPOINTS = 10  # checkpoints per run when checkpoint_every is not given


class TrainingInterrupted(RuntimeError):
    """Training stopped on Ctrl-C after saving a checkpoint; the message says how to resume."""

    def __init__(self, message: str, run_dir: Path, checkpoint: Path) -> None:
        super().__init__(message)
        self.run_dir = run_dir
        self.checkpoint = checkpoint


class TrainingDiverged(RuntimeError):
    """Parameters or loss became NaN/inf; the last good checkpoint is kept as ``latest``."""

    def __init__(self, message: str, run_dir: Path, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.run_dir = run_dir
        self.checkpoint = checkpoint


# ------------------------------------------------------------------------------------------- config
def resolve_env(env_id: str | None, suite: str | None) -> tuple[Any, str | None]:
    """The ``EnvSpec`` to train on (an id, or a suite's train spec) and the suite name, validated."""
    from envs import get_suite
    from envs.make import as_spec, check_spec_kwargs

    if (env_id is None) == (suite is None):
        raise ValueError("give exactly one of env_id (--env) and suite (--suite)")
    if suite is not None:
        return get_suite(suite).train, suite
    spec = as_spec(env_id)  # type: ignore[arg-type]
    check_spec_kwargs(spec)
    spec.family  # noqa: B018  (validates the id, listing close valid ids)
    return spec, None


def _family(env_family: str) -> str:
    return {"atari": "atari", "minigrid": "minigrid"}.get(env_family, "classic")


def resolve_config(
    agent: str,
    env_id: str | None = None,
    *,
    suite: str | None = None,
    timesteps: int | None = None,
    seed: int = 0,
    n_envs: int | None = None,
    device: str = "auto",
    overrides: dict[str, Any] | Sequence[str] | None = None,
    checkpoint_every: int | None = None,
) -> dict[str, Any]:
    """The full run config (JSON-serialisable), validated; raises ``ValueError`` before anything is built.

    ``timesteps`` is rounded up to a whole number of rollouts (``n_steps * n_envs``) so that a run, and
    a resumed run, ends exactly on its budget.
    """
    import agents

    spec, suite_name = resolve_env(env_id, suite)
    preset = agents.get_preset(agent, _family(spec.family))
    if overrides:
        if not isinstance(overrides, dict):
            overrides = agents.parse_overrides(list(overrides))
        preset = agents.apply_overrides(preset, overrides)
    n_envs = int(preset.get("n_envs", 1) if n_envs is None else n_envs)
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"device must be one of auto, cpu, cuda (or cuda:N), got {device!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    agents.validate_config(preset, n_envs)
    requested = int(preset.get("n_timesteps", 100_000) if timesteps is None else timesteps)
    if requested <= 0:
        raise ValueError(f"timesteps must be positive, got {requested}")
    rollout = int(preset["ppo"]["n_steps"]) * n_envs
    budget = math.ceil(requested / rollout) * rollout
    if checkpoint_every is None:
        checkpoint_every = math.ceil(budget / DEFAULT_N_CHECKPOINTS / rollout) * rollout
    if checkpoint_every <= 0:
        raise ValueError(f"checkpoint_every must be positive, got {checkpoint_every}")
    env_kwargs = {**preset.get("env", {}), **dict(spec.kwargs)}
    from envs import EnvSpec
    from envs.make import check_spec_kwargs

    check_spec_kwargs(EnvSpec(spec.name, spec.env_id, env_kwargs))  # e.g. --set env.mode=99 on Atari
    return {
        "agent": agent,
        "env": {"name": spec.name, "env_id": spec.env_id, "kwargs": env_kwargs},
        "suite": suite_name,
        "seed": seed,
        "timesteps": budget,
        "timesteps_requested": requested,
        "rollout_size": rollout,
        "n_envs": n_envs,
        "vec_env": preset.get("vec_env"),
        "device": device,
        "checkpoint_every": int(checkpoint_every),
        "overrides": dict(overrides or {}),
        "model": preset,
    }


def default_run_dir(agent: str, env_id: str, seed: int, root: str | Path = DEFAULT_RUNS_ROOT) -> Path:
    """``runs/<agent>-<env>-s<seed>-<timestamp>`` (env id made file-name safe)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    env = re.sub(r"[^A-Za-z0-9._-]+", "_", env_id.replace("/", "_"))
    path = Path(root) / f"{agent}-{env}-s{seed}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = Path(root) / f"{agent}-{env}-s{seed}-{stamp}-{n}"
    return path


def make_train_env(config: dict[str, Any], seed: int | None, vec_cls: Any = None) -> VecEnv:
    """The training VecEnv a run config describes (in-process ``DummyVecEnv`` for MiniGrid).

    ``vec_cls`` (else the config's ``vec_env``) picks the backend: "dummy", "subproc", or for Atari "ale".
    """
    from envs import EnvSpec, make_vec_env_for

    env = config["env"]
    spec = EnvSpec(env["name"], env["env_id"], env["kwargs"])
    if vec_cls is None:
        vec_cls = config.get("vec_env")
    if vec_cls is None and spec.family == "minigrid":
        vec_cls = "dummy"  # grid worlds step in microseconds: subprocesses cost more than they save
    return make_vec_env_for(spec, n_envs=config["n_envs"], seed=seed, training=True, vec_cls=vec_cls)


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """A run directory's ``config.json``; ``ValueError`` if it is not a run directory."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise ValueError(f"{str(run_dir)!r} is not a run directory (no {CONFIG_NAME})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err


# ---------------------------------------------------------------------------------------- callbacks
def params_finite(model: BaseAlgorithm) -> bool:
    """True when every policy parameter is finite."""
    return all(bool(th.isfinite(p).all()) for p in model.policy.parameters())


class RunCallback(BaseCallback):
    """Periodic atomic checkpoints, the NaN/inf guard and the Ctrl-C stop, in one place.

    Work happens at rollout start, i.e. after the previous update, so a checkpoint never holds a
    rollout whose update it has not applied; ``trained_timesteps`` is the step count at that point.
    """

    def __init__(self, run_dir: Path, config: dict[str, Any], every: int, keep: int = 3) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.config = config
        self.every = every
        self.keep = keep
        self.stop_requested = False
        self.trained_timesteps = 0
        self.last_saved_step = -1
        self.last_checkpoint: Path | None = None

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def _on_training_start(self) -> None:
        self.trained_timesteps = self.model.num_timesteps
        if self.last_saved_step < 0:
            self.last_saved_step = self.model.num_timesteps

    def _on_rollout_start(self) -> None:
        self.check_finite()
        self.trained_timesteps = self.model.num_timesteps
        if self.model.num_timesteps - self.last_saved_step >= self.every:
            self.save()

    def _on_step(self) -> bool:
        return not self.stop_requested

    def check_finite(self) -> None:
        """Raise ``TrainingDiverged`` if a parameter or the last loss is NaN/inf."""
        loss = self.model.logger.name_to_value.get("train/loss")
        bad = None
        if not params_finite(self.model):
            bad = "a policy parameter is NaN/inf"
        elif loss is not None and not math.isfinite(loss):
            bad = f"the loss is {loss}"
        if bad:
            raise diverged(self.run_dir, self.model.num_timesteps, bad)

    def save(self, num_timesteps: int | None = None) -> Path:
        """Write ``checkpoints/step_<n>.zip`` atomically, then move ``latest`` to it; prune old ones."""
        step = self.model.num_timesteps if num_timesteps is None else num_timesteps
        saved = self.model.num_timesteps
        self.model.num_timesteps = step
        try:
            path = save_checkpoint(
                self.model, self.checkpoint_dir / f"step_{step}.zip", self.config, run_dir=str(self.run_dir)
            )
        finally:
            self.model.num_timesteps = saved
        write_latest(self.checkpoint_dir, path)
        self.last_saved_step, self.last_checkpoint = step, path
        write_status(self.run_dir, "running", step, path)
        for _, old in step_checkpoints(self.checkpoint_dir)[: -self.keep] if self.keep > 0 else []:
            if old != path:
                old.unlink(missing_ok=True)
        return path


def diverged(run_dir: Path, step: int, what: str) -> TrainingDiverged:
    """The error for NaN/inf, naming the last good checkpoint (left in place as ``latest``)."""
    good = latest_checkpoint(run_dir / "checkpoints")
    keep = f"the last good checkpoint is {good}" if good else "no checkpoint had been written yet"
    write_status(run_dir, "diverged", step, good, what)
    return TrainingDiverged(
        f"training diverged at step {step}: {what}. Stopped; {keep}. Try a lower ppo.learning_rate or "
        "ppo.max_grad_norm (--set ppo.learning_rate=...).",
        run_dir,
        good,
    )


def write_status(
    run_dir: Path, state: str, num_timesteps: int, checkpoint: Path | None, message: str = ""
) -> None:
    """``status.json``: what happened to the run last (a SIGKILLed run stays ``running``)."""
    atomic_write_json(
        run_dir / STATUS_NAME,
        {
            "state": state,
            "num_timesteps": int(num_timesteps),
            "checkpoint": str(checkpoint) if checkpoint else None,
            "message": message,
            "time": _dt.datetime.now().isoformat(timespec="seconds"),
        },
    )


@contextlib.contextmanager
def sigint_stops(callback: RunCallback) -> Iterator[None]:
    """First Ctrl-C asks ``callback`` to stop at the next step; a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if callback.stop_requested:
            raise KeyboardInterrupt
        callback.stop_requested = True
        print(
            "\nCtrl-C: stopping at the next step and saving a checkpoint (Ctrl-C again to abort)",
            file=sys.stderr,
            flush=True,
        )

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _make_logger(run_dir: Path, start_step: int, verbose: int) -> Logger:
    suffix = "" if start_step == 0 else f"-resumed-{start_step}"
    formats = [
        make_output_format("csv", str(run_dir / "logs"), suffix),
        make_output_format("tensorboard", str(run_dir / "tb")),
    ]
    if verbose:
        formats.append(make_output_format("stdout", str(run_dir / "logs")))
    return Logger(str(run_dir), formats)


# ------------------------------------------------------------------------------------------- the run
def train_run(
    agent: str = "rims_ppo",
    env_id: str | None = None,
    *,
    suite: str | None = None,
    timesteps: int | None = None,
    seed: int = 0,
    n_envs: int | None = None,
    device: str = "auto",
    overrides: dict[str, Any] | Sequence[str] | None = None,
    run_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    progress_bar: bool = True,
    resume: bool = False,
    keep_checkpoints: int = 3,
    runs_root: str | Path = DEFAULT_RUNS_ROOT,
    vec_cls: Any = None,
    callbacks: Sequence[BaseCallback] = (),
    verbose: int = 0,
) -> Path:
    """Train one agent on one env (or a suite's train env) in a run directory; returns the directory.

    With ``resume=True`` only ``run_dir`` (and ``device``, ``progress_bar``, ``callbacks``) is used:
    the rest comes from its ``config.json``; training continues from the newest readable checkpoint
    to the same budget. Raises ``ValueError`` for bad arguments (nothing written), ``TrainingInterrupted``
    on Ctrl-C (checkpoint saved) and ``TrainingDiverged`` on NaN/inf.
    """
    import agents
    from rims_rl.callbacks import RimsStatsCallback

    # 1. Resolve the config: everything that can be wrong is checked here, before touching the disk.
    start_checkpoint: Path | None = None
    if resume:
        if run_dir is None:
            raise ValueError("resume needs the run directory")
        run_dir = Path(run_dir)
        config = read_run_config(run_dir)
        if device != "auto":
            config["device"] = device
        final = run_dir / "model.zip"
        if final.is_file() and read_meta(final)["num_timesteps"] >= config["timesteps"]:
            print(f"{run_dir}: already trained to its budget of {config['timesteps']} steps")
            return run_dir
        start_checkpoint = latest_checkpoint(run_dir / "checkpoints")
        start_step = read_meta(start_checkpoint)["num_timesteps"] if start_checkpoint else 0
    else:
        config = resolve_config(
            agent,
            env_id,
            suite=suite,
            timesteps=timesteps,
            seed=seed,
            n_envs=n_envs,
            device=device,
            overrides=overrides,
            checkpoint_every=checkpoint_every,
        )
        start_step = 0
    seed = config["seed"]

    # 2. Build env and model (still nothing on disk). A resumed run draws fresh env/policy randomness
    #    (seed + start step), so it does not replay the episodes the run began with.
    run_seed = seed + start_step
    env = make_train_env(config, run_seed, vec_cls)
    model = agents.build_model(config["model"], env, seed=run_seed, device=config["device"])
    if start_checkpoint is not None:
        meta = read_meta(start_checkpoint)
        load_weights(model, start_checkpoint, optimizer=True)
        model.num_timesteps = int(meta["num_timesteps"])
        set_random_seed(run_seed, using_cuda=model.device.type == "cuda")

    # 3. The run directory: config first, so a crash at any later point leaves a resumable run.
    if run_dir is None:
        run_dir = default_run_dir(config["agent"], config["env"]["env_id"], seed, runs_root)
    run_dir = Path(run_dir)
    if not resume:
        if (run_dir / CONFIG_NAME).exists():
            raise ValueError(f"{run_dir} already holds a run; use --resume {run_dir} or another --run-dir")
        config["observation_space"] = describe_space(env.observation_space)
        config["action_space"] = describe_space(env.action_space)
        config["created"] = _dt.datetime.now().isoformat(timespec="seconds")
        config["command"] = sys.argv
        config["versions"] = _versions()
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / CONFIG_NAME, config)
    model.set_logger(_make_logger(run_dir, start_step, verbose))

    # 4. Train. RunCallback checkpoints and guards; RimsStatsCallback logs unit usage to TensorBoard.
    run_cb = RunCallback(run_dir, config, config["checkpoint_every"], keep_checkpoints)
    run_cb.last_saved_step = start_step
    cbs: list[BaseCallback] = [run_cb, RimsStatsCallback(), *callbacks]
    write_status(run_dir, "running", start_step, start_checkpoint)
    remaining = config["timesteps"] - model.num_timesteps
    try:
        with sigint_stops(run_cb):
            model.learn(
                remaining,
                callback=CallbackList(cbs),
                reset_num_timesteps=False,
                progress_bar=progress_bar,
                tb_log_name="train",
            )
        run_cb.check_finite()
    except TrainingDiverged:
        raise
    except Exception as err:
        # A NaN usually surfaces inside the update as an invalid-distribution error, not in our check.
        if not params_finite(model):
            raise diverged(run_dir, model.num_timesteps, f"a policy parameter is NaN/inf ({err})") from err
        raise
    finally:
        env.close()

    # 5. Stopped by Ctrl-C: keep the trained part (the partial rollout was not trained on).
    if run_cb.stop_requested:
        path = run_cb.save(run_cb.trained_timesteps)
        write_status(run_dir, "interrupted", run_cb.trained_timesteps, path)
        raise TrainingInterrupted(
            f"interrupted at step {run_cb.trained_timesteps} of {config['timesteps']}; checkpoint saved to "
            f"{path}. Resume with: python train.py train --resume {run_dir}",
            run_dir,
            path,
        )

    # 6. Done: the final model next to its config.
    final = save_checkpoint(model, run_dir / "model.zip", config, run_dir=str(run_dir))
    write_status(run_dir, "finished", model.num_timesteps, final)
    return run_dir


def _versions() -> dict[str, str]:
    import gymnasium
    import sb3_contrib
    import stable_baselines3

    return {
        "python": platform.python_version(),
        "torch": th.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "sb3_contrib": sb3_contrib.__version__,
        "gymnasium": gymnasium.__version__,
    }
