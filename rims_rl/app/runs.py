"""One training run in a directory you can inspect, resume and evaluate.

``train_run`` resolves and validates everything (agent, env or suite, hyperparameters, the model it
builds) *before* it writes anything, then fills a run directory (layout: ``rims_rl.app.rundir``) at
``runs/<agent>-<env>-s<seed>-<timestamp>/`` unless told another, holding its lock while it trains.

Ctrl-C stops at the next environment step, saves a checkpoint and says how to resume; a SIGKILL loses
at most one checkpoint interval; ``resume=True`` continues from the newest readable checkpoint to the
same total budget. Non-finite parameters or loss stop training with ``TrainingDiverged`` and leave the
last good checkpoint as ``latest``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import platform
import shutil
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import sb3_contrib
import stable_baselines3
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import Logger, make_output_format
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecEnv

from rims_rl.agents import ParameterCount, build_model, count_parameters
from rims_rl.app import rundir
from rims_rl.app.atomic import atomic_write_json
from rims_rl.app.checkpoint import (
    describe_space,
    latest_checkpoint,
    load_weights,
    read_meta,
    save_checkpoint,
    step_checkpoints,
    write_latest,
)
from rims_rl.app.config import RunConfig, resolve_config
from rims_rl.app.errors import STORAGE_ERRNOS, UserError, user_input
from rims_rl.app.rundir import write_status
from rims_rl.app.signals import signal_handlers, stop_signals
from rims_rl.callbacks import CoreStatsCallback, PolicyShiftCallback
from rims_rl.checks import safe_name
from rims_rl.envs import make_vec_env_for
from rims_rl.envs.untrusted import load_json


class TrainingInterrupted(RuntimeError):
    """Training stopped on Ctrl-C or SIGTERM after saving a checkpoint (or, on a second signal, at once,
    keeping the last one); the message says how to resume."""

    def __init__(
        self, message: str, run_dir: Path, checkpoint: Path | None, signum: int = signal.SIGINT
    ) -> None:
        super().__init__(message)
        self.run_dir = run_dir
        self.checkpoint = checkpoint
        self.signum = signum
        """The signal that stopped it (the shell's exit status is 128 + signum)."""


class TrainingDiverged(RuntimeError):
    """Parameters or loss became NaN/inf; the last good checkpoint is kept as ``latest``."""

    def __init__(self, message: str, run_dir: Path, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.run_dir = run_dir
        self.checkpoint = checkpoint


# ------------------------------------------------------------------------------------------ run dirs
def default_run_dir(agent: str, env_id: str, seed: int, root: str | Path | None = None) -> Path:
    """``<root>/<agent>-<env>-s<seed>-<timestamp>`` (env id made file-name safe); the root defaults to
    ``rundir.runs_root()``."""
    root = rundir.runs_root() if root is None else root
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    env = safe_name(env_id.replace("/", "_"))
    path = Path(root) / f"{agent}-{env}-s{seed}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = Path(root) / f"{agent}-{env}-s{seed}-{stamp}-{n}"
    return path


def make_train_env(config: RunConfig, seed: int | None, vec_cls: Any = None) -> VecEnv:
    """The training VecEnv a run config describes.

    ``vec_cls`` (else the preset's ``vec_env``, else the env family's ``vec_env``) picks the backend:
    "dummy", "subproc", or for Atari "ale".
    """
    spec = config.env_spec()
    if vec_cls is None:
        vec_cls = config.model.vec_env
    if vec_cls is None:
        vec_cls = spec.family.vec_env
    return make_vec_env_for(spec, n_envs=config.n_envs, seed=seed, training=True, vec_cls=vec_cls)


def measure_model(config: RunConfig) -> ParameterCount:
    """The parameters of the model ``config`` builds (core and total), measured without allocating them:
    one env gives the spaces, the policy is built on the meta device (``count_parameters``)."""
    env = make_vec_env_for(config.env_spec(), n_envs=1, seed=0, training=True, vec_cls="dummy")
    try:
        return count_parameters(config.model, env.observation_space, env.action_space)
    finally:
        env.close()


def read_run_config(run_dir: str | Path) -> RunConfig:
    """A run directory's ``config.json``, validated; ``UserError`` if it is not a run directory."""
    path = rundir.config_path(run_dir)
    if not path.is_file():
        raise UserError(f"{str(run_dir)!r} is not a run directory (no {path.name})")
    with user_input(f"{path}"):
        return RunConfig.from_dict(load_json(path, "run config"))


# ---------------------------------------------------------------------------------------- callbacks
def params_finite(model: BaseAlgorithm) -> bool:
    """True when every policy parameter is finite."""
    return all(bool(th.isfinite(p).all()) for p in model.policy.parameters())


class RunCallback(BaseCallback):
    """Periodic atomic checkpoints, the NaN/inf guard and the Ctrl-C stop, in one place.

    Work happens at rollout start, i.e. after the previous update, so a checkpoint never holds a
    rollout whose update it has not applied; ``trained_timesteps`` is the step count at that point.
    """

    def __init__(self, run_dir: Path, config: RunConfig, every: int, keep: int = 3) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.config = config
        self.every = every
        self.keep = keep
        self.stop_requested = False
        self.stopped_early = False
        self.stop_signal: int = signal.SIGINT
        self.trained_timesteps = 0
        self.last_saved_step = -1
        self.last_checkpoint: Path | None = None

    @property
    def checkpoint_dir(self) -> Path:
        return rundir.checkpoints_dir(self.run_dir)

    def _on_training_start(self) -> None:
        self.trained_timesteps = self.model.num_timesteps
        if self.last_saved_step < 0:
            self.last_saved_step = self.model.num_timesteps

    def _on_rollout_start(self) -> None:
        self.check_finite()
        self.trained_timesteps = self.model.num_timesteps
        if self.model.num_timesteps - self.last_saved_step >= self.every:
            self.save()

    def _on_rollout_end(self) -> None:
        """Stop a run whose env gave non-finite observations or rewards (e.g. a noise scale of 1e300):
        it would otherwise train on them and be reported finished. One vectorised check per rollout."""
        buffer = self.model.rollout_buffer  # type: ignore[attr-defined]  # on-policy: PPO and RecurrentPPO
        observations = buffer.observations
        arrays = list(observations.values()) if isinstance(observations, dict) else [observations]
        for name, array in (*(("observations", a) for a in arrays), ("rewards", buffer.rewards)):
            if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
                raise diverged(
                    self.run_dir,
                    self.model.num_timesteps,
                    f"the env gave non-finite {name}",
                    "Check the env's settings (--set env.KEY=..., the suite file), e.g. a noise scale.",
                )

    def _on_step(self) -> bool:
        if self.stop_requested:
            self.stopped_early = True  # learn() ends before its budget
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


LOWER_LR = "Try a lower ppo.learning_rate or ppo.max_grad_norm (--set ppo.learning_rate=...)."


def diverged(run_dir: Path, step: int, what: str, fix: str = LOWER_LR) -> TrainingDiverged:
    """The error for NaN/inf, naming the last good checkpoint (left in place as ``latest``)."""
    good = latest_checkpoint(rundir.checkpoints_dir(run_dir))
    keep = f"the last good checkpoint is {good}" if good else "no checkpoint had been written yet"
    write_status(run_dir, "diverged", step, good, what)
    message = f"training diverged at step {step}: {what}. Stopped; {keep}. {fix}"
    return TrainingDiverged(message, run_dir, good)


def sigint_stops(callback: RunCallback) -> contextlib.AbstractContextManager[None]:
    """Ctrl-C (SIGINT) or pre-emption (SIGTERM) asks ``callback`` to stop at the next step and save a
    checkpoint; a second signal interrupts at once."""

    def handler(signum: int, frame: Any) -> None:
        if callback.stop_requested:
            raise KeyboardInterrupt
        callback.stop_requested = True
        callback.stop_signal = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(
            f"\n{name}: stopping at the next step and saving a checkpoint (again to abort)",
            file=sys.stderr,
            flush=True,
        )

    return signal_handlers(stop_signals(), handler)


def _make_logger(run_dir: Path, start_step: int, verbose: int) -> Logger:
    """CSV, TensorBoard (and stdout) output; a resume writes a new CSV and never overwrites an old one."""
    suffix = "" if start_step == 0 else f"-resumed-{start_step}"
    n = 1
    while (run_dir / rundir.LOGS_DIR / f"progress{suffix}.csv").exists():  # e.g. a second restart from 0
        n += 1
        suffix = f"-resumed-{start_step}-{n}"
    formats = [
        make_output_format("csv", str(run_dir / rundir.LOGS_DIR), suffix),
        make_output_format("tensorboard", str(run_dir / rundir.TB_DIR)),
    ]
    if verbose:
        formats.append(make_output_format("stdout", str(run_dir / rundir.LOGS_DIR)))
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
    runs_root: str | Path | None = None,
    vec_cls: Any = None,
    callbacks: Sequence[BaseCallback] = (),
    verbose: int = 0,
    log_policy_shift: bool = False,
) -> Path:
    """Train one agent on one env (or a suite's train env) in a run directory; returns the directory.

    With ``resume=True`` only ``run_dir`` (and ``device``, ``progress_bar``, ``callbacks``) is used:
    the rest comes from its ``config.json``; training continues from the newest readable checkpoint
    to the same budget. Raises ``UserError`` for bad arguments (nothing written), ``TrainingInterrupted``
    on Ctrl-C (checkpoint saved), ``TrainingDiverged`` on NaN/inf; any other error marks the run
    ``failed`` in ``status.json`` and propagates with its traceback. ``log_policy_shift`` logs
    ``train/policy_kl`` per update (``PolicyShiftCallback``).
    """
    if log_policy_shift:
        callbacks = [*callbacks, PolicyShiftCallback()]
    if resume:
        if run_dir is None:
            raise UserError("resume needs the run directory")
        config = read_run_config(run_dir)
        if device != "auto":
            config = config.with_device(device)
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
        if run_dir is None:
            run_dir = default_run_dir(config.agent, config.env.env_id, config.seed, runs_root)
        if rundir.is_run_dir(run_dir):
            raise UserError(f"{run_dir} already holds a run; use --resume {run_dir} or another --run-dir")
    run_dir = Path(run_dir)
    try:
        created = not run_dir.exists()
    except OSError:  # e.g. a name too long: locked() below says so in one line
        created = False
    try:
        with rundir.locked(run_dir):
            return _train(
                config, run_dir, resume, progress_bar, keep_checkpoints, vec_cls, callbacks, verbose
            )
    except BaseException:
        # A new run that failed before its config was written leaves nothing behind (not even the lock).
        if created and not resume and not rundir.is_run_dir(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _train(
    config: RunConfig,
    run_dir: Path,
    resume: bool,
    progress_bar: bool,
    keep_checkpoints: int,
    vec_cls: Any,
    callbacks: Sequence[BaseCallback],
    verbose: int,
) -> Path:
    """The body of ``train_run``, run while holding the run directory's lock."""
    start_checkpoint: Path | None = None
    start_step = 0
    if resume:
        final = rundir.final_model(run_dir)
        if final.is_file() and read_meta(final).num_timesteps >= config.timesteps:
            print(f"{run_dir}: already trained to its budget of {config.timesteps} steps")
            write_status(run_dir, "finished", read_meta(final).num_timesteps, final)
            return run_dir
        start_checkpoint = latest_checkpoint(rundir.checkpoints_dir(run_dir))
        start_step = read_meta(start_checkpoint).num_timesteps if start_checkpoint else 0
        if start_checkpoint is None and step_checkpoints(rundir.checkpoints_dir(run_dir)):
            raise UserError(
                f"{run_dir}: no checkpoint there can be read (all truncated or corrupt), so resuming would "
                "start again from step 0; start a new run (another --run-dir) or delete the checkpoints"
            )
    elif rundir.is_run_dir(run_dir):  # created between the check in train_run and the lock
        raise UserError(f"{run_dir} already holds a run; use --resume {run_dir} or another --run-dir")

    # Build env and model before the run's files: a bad policy setting fails with nothing written. A
    # resumed run draws fresh env/policy randomness (seed + start step), so it does not replay its start.
    run_seed = config.seed + start_step
    env = make_train_env(config, run_seed, vec_cls)
    try:
        with user_input("invalid agent settings", errors=(ValueError,)):
            model = build_model(config.model, env, seed=run_seed, device=config.device)
    except BaseException:
        env.close()
        raise
    if start_checkpoint is not None:
        load_weights(model, start_checkpoint, optimizer=True)
        model.num_timesteps = int(start_step)
        set_random_seed(run_seed, using_cuda=model.device.type == "cuda")

    # The run directory: config first, so a crash at any later point leaves a resumable run.
    if not resume:
        config = replace(
            config,
            observation_space=describe_space(env.observation_space),
            action_space=describe_space(env.action_space),
            created=_dt.datetime.now().isoformat(timespec="seconds"),
            command=tuple(sys.argv),
            versions=_versions(),
        )
        atomic_write_json(rundir.config_path(run_dir), config.to_dict())
    model.set_logger(_make_logger(run_dir, start_step, verbose))

    # Train. RunCallback checkpoints and guards; CoreStatsCallback logs the cores' statistics to TensorBoard.
    run_cb = RunCallback(run_dir, config, config.checkpoint_every, keep_checkpoints)
    run_cb.last_saved_step = start_step
    cbs: list[BaseCallback] = [run_cb, CoreStatsCallback(), *callbacks]
    write_status(run_dir, "running", start_step, start_checkpoint)
    remaining = config.timesteps - model.num_timesteps
    resume_hint = f"python train.py train --resume {run_dir}"
    try:
        with sigint_stops(run_cb):  # also around the stop's checkpoint: a second signal aborts it
            model.learn(
                remaining,
                callback=CallbackList(cbs),
                reset_num_timesteps=False,
                progress_bar=progress_bar,
                tb_log_name="train",
            )
            run_cb.check_finite()
            # Stopped by Ctrl-C: keep the trained part (the partial rollout was not trained on). A stop
            # asked for during the last update comes too late to cut the budget: the run is finished.
            stopped_at = run_cb.save(run_cb.trained_timesteps) if run_cb.stopped_early else None
            if stopped_at is not None:
                write_status(run_dir, "interrupted", run_cb.trained_timesteps, stopped_at)
            else:  # done: the final model next to its config
                final = save_checkpoint(model, rundir.final_model(run_dir), config, run_dir=str(run_dir))
                write_status(run_dir, "finished", model.num_timesteps, final)
    except TrainingDiverged:
        raise
    except BaseException as err:
        # A NaN usually surfaces inside the update as an invalid-distribution error, not in our check.
        if isinstance(err, Exception) and not params_finite(model):
            raise diverged(run_dir, model.num_timesteps, f"a policy parameter is NaN/inf ({err})") from err
        last = run_cb.last_checkpoint or start_checkpoint
        step = run_cb.last_saved_step if last is not None else 0
        keep = (
            f"the last checkpoint is {last} (step {step}). Resume with: {resume_hint}"
            if last is not None
            else f"no checkpoint had been written; start again after removing {run_dir}"
        )
        if isinstance(err, KeyboardInterrupt):  # a second Ctrl-C: stopped at once, nothing saved now
            with signal_handlers(stop_signals(), signal.SIG_IGN):  # a third Ctrl-C: no traceback
                _note_status(run_dir, "interrupted", step, last, "aborted by a second signal")
            raise TrainingInterrupted(
                f"aborted at step {model.num_timesteps} of {config.timesteps} without saving; {keep}",
                run_dir,
                last,
                run_cb.stop_signal,
            ) from None
        noted = _note_status(run_dir, "failed", step, last, f"{type(err).__name__}: {err}")
        if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:  # not a bug: one line
            raise UserError(
                f"cannot write to {err.filename or run_dir}: {err.strerror or err}. Training stopped at step "
                f"{model.num_timesteps}; {keep} once there is space (or the disk is writable) again"
                + ("" if noted else f" ({rundir.STATUS_NAME} could not be updated either)")
            ) from err
        raise
    finally:
        env.close()

    if stopped_at is None and run_cb.stop_requested:
        # The stop came during the last update: the run is finished, but whoever runs it (compare's
        # loop, tune) must still stop and start nothing more.
        raise TrainingInterrupted(
            f"the run finished ({rundir.final_model(run_dir)}) while the stop was being asked for; "
            "nothing more is started",
            run_dir,
            rundir.final_model(run_dir),
            run_cb.stop_signal,
        )
    if stopped_at is not None:
        raise TrainingInterrupted(
            f"interrupted at step {run_cb.trained_timesteps} of {config.timesteps}; checkpoint saved to "
            f"{stopped_at}. Resume with: {resume_hint}",
            run_dir,
            stopped_at,
            run_cb.stop_signal,
        )
    return run_dir


def _note_status(
    run_dir: Path, state: rundir.State, step: int, checkpoint: Path | None, message: str
) -> bool:
    """``status.json`` on a failing disk: atomically if possible, else in place; False if neither worked."""
    for atomic in (True, False):
        try:
            write_status(run_dir, state, step, checkpoint, message, atomic=atomic)
            return True
        except OSError:
            continue
    return False


def _versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": th.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "sb3_contrib": sb3_contrib.__version__,
        "gymnasium": gymnasium.__version__,
    }
