"""Gymnasium's classic-control tasks with discrete actions (CartPole, Acrobot, MountainCar) as an env family.

They are what the ``classic`` presets of ``agents/presets.yml`` were written for (the RL Zoo's
``CartPoleNoVel-v1`` block), with flat float observations an MLP policy reads as they are: the env is
gymnasium's own under SB3's ``Monitor``, nothing else. Returns have no fixed bounds and no goal reward,
so there is neither a normalised score nor a success rate. The continuous-action tasks (Pendulum,
MountainCarContinuous) are left out: the presets and ``play_episode`` assume discrete actions.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv

from rims_rl.checks import unknown_choice_error
from rims_rl.envs.env_kwargs import MAX_EPISODE_STEPS, Rule, check_rules
from rims_rl.envs.registry import EnvFamily, register_family
from rims_rl.envs.seeding import seeded
from rims_rl.envs.vec import VecClass, build_vec_env

#: The classic-control ids of this family (gymnasium registers them itself).
CLASSIC_IDS: tuple[str, ...] = ("CartPole-v0", "CartPole-v1", "Acrobot-v1", "MountainCar-v0")
#: The kwargs a classic env takes, with their bounds: the episode's length and rendering for GIFs.
CLASSIC_RULES: dict[str, Rule] = {
    "max_episode_steps": ("int", 1, MAX_EPISODE_STEPS, True),
    "render_mode": (("rgb_array",), 0, 0, True),  # never "human": evaluation opens no window
}


def is_classic_id(env_id: str) -> bool:
    """One of ``CLASSIC_IDS``."""
    return env_id in CLASSIC_IDS


def register_classic_envs() -> None:
    """Nothing to do: gymnasium registers its classic-control tasks on import."""


def check_classic_kwargs(env_id: str, kwargs: Mapping[str, Any]) -> None:
    """Only ``CLASSIC_RULES``' names, with values in their bounds."""
    for key in kwargs:
        if key not in CLASSIC_RULES:
            raise unknown_choice_error("keyword argument", key, CLASSIC_RULES, where=f"for {env_id}")
    check_rules(env_id, kwargs, CLASSIC_RULES)


def _classic_env(env_id: str, seed: int | None, **kwargs: Any) -> gym.Env:
    return seeded(Monitor(gym.make(env_id, **kwargs)), seed)


def _family_env(env_id: str, kwargs: Mapping[str, Any], *, seed: int | None, training: bool) -> gym.Env:
    return _classic_env(env_id, seed, **kwargs)


def _family_vec_env(
    env_id: str,
    kwargs: Mapping[str, Any],
    *,
    n_envs: int,
    seed: int | None,
    training: bool,
    vec_cls: VecClass,
) -> VecEnv:
    thunk = functools.partial(_classic_env, env_id, None, **dict(kwargs))
    return build_vec_env([thunk] * n_envs, seed, vec_cls)


CLASSIC = register_family(
    EnvFamily(
        name="classic",
        ids=", ".join(CLASSIC_IDS),
        owns=is_classic_id,
        register_envs=register_classic_envs,
        make_env=_family_env,
        make_vec_env=_family_vec_env,
        check_kwargs=check_classic_kwargs,
        preset_family="classic",
        has_success=False,  # no goal reward (CartPole pays +1 per step)
        vec_env="dummy",  # physics in microseconds: subprocesses cost more than they save
    )
)
