"""Choose the SB3 VecEnv class: in-process for one env (or when asked), subprocesses for many."""

from __future__ import annotations

import atexit
import os
import signal
import weakref
from collections.abc import Callable, Sequence
from typing import Literal

import gymnasium as gym
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from rims_rl.checks import check_positive, unknown_choice_error

#: "ale" (ale-py's native vector env) is accepted for Atari only, see ``envs.atari.make_atari_vec_env``.
VecClass = Literal["dummy", "subproc", "ale"] | type[VecEnv] | None
_BY_NAME: dict[str, type[VecEnv]] = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}


def resolve_vec_cls(vec_cls: VecClass, n_envs: int) -> type[VecEnv]:
    """``DummyVecEnv`` for one env, ``SubprocVecEnv`` otherwise, unless ``vec_cls`` says which."""
    if vec_cls is None:
        return DummyVecEnv if n_envs == 1 else SubprocVecEnv
    if isinstance(vec_cls, str):
        if vec_cls == "ale":
            raise ValueError("vec_cls='ale' is ale-py's Atari vector env; use 'dummy' or 'subproc' here")
        if vec_cls not in _BY_NAME:
            raise unknown_choice_error("vec_cls", vec_cls, (*_BY_NAME, "ale"))
        return _BY_NAME[vec_cls]
    return vec_cls


def build_vec_env(
    thunks: Sequence[Callable[[], gym.Env]], seed: int | None, vec_cls: VecClass = None
) -> VecEnv:
    """Vectorise env factories; env ``i`` gets ``seed + i`` at its first reset (SB3 convention)."""
    check_positive("n_envs", len(thunks))
    cls = resolve_vec_cls(vec_cls, len(thunks))
    subproc = isinstance(cls, type) and issubclass(cls, SubprocVecEnv)
    if subproc:
        thunks = [_ignoring_stop_signals(thunk, os.getpid()) for thunk in thunks]
    vec_env = cls(list(thunks))
    if subproc:  # workers that ignore SIGTERM outlive multiprocessing's exit-time terminate(): close first
        atexit.register(_close_if_open, weakref.ref(vec_env))
    if seed is not None:
        vec_env.seed(seed)
        vec_env.action_space.seed(seed)
    return vec_env


def _close_if_open(ref: weakref.ref[VecEnv]) -> None:
    vec_env = ref()
    if vec_env is not None and not getattr(vec_env, "closed", True):
        vec_env.close()


def _ignoring_stop_signals(thunk: Callable[[], gym.Env], trainer_pid: int) -> Callable[[], gym.Env]:
    """The env factory, run in a subprocess worker, first makes that worker ignore SIGINT and SIGTERM.

    A terminal's Ctrl-C goes to the whole process group, and pre-emption often sends SIGTERM to every
    process: only the trainer must see them (it stops at the next step and saves a checkpoint); a worker
    killed by them would break the pipe mid-step instead. Workers still exit when the trainer closes
    them or dies (their pipe ends).
    """

    def make() -> gym.Env:
        if os.getpid() != trainer_pid:  # only ever in the worker, even if a VecEnv called it in place
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return thunk()

    return make
