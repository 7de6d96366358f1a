"""MiniGrid envs as the policy sees them: the 7x7x3 egocentric view, plus the mission where it matters.

Tasks whose mission varies per episode (Fetch, GoToObject, GoToDoor, PutNear, our distractor
room) get ``Dict{"image", "mission"}`` observations; tasks with a constant mission get the plain
image ``Box``. SB3's ``Monitor`` sits under the observation wrapper so ``info["episode"]`` exists.
Image values are small integer codes, not pixels: build policies with ``minigrid_policy_kwargs()``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import load_env_creator
from minigrid.minigrid_env import MiniGridEnv
from minigrid.wrappers import ImgObsWrapper
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv

from rims_rl.envs.errors import unknown_choice_error
from rims_rl.envs.mission import MissionObsWrapper, mission_slots
from rims_rl.envs.registry import MINIGRID_PREFIXES, env_family
from rims_rl.envs.seeding import seeded
from rims_rl.envs.vec import VecClass, build_vec_env


def minigrid_kwarg_defaults(env_id: str) -> dict[str, Any]:
    """Keyword arguments ``gym.make(env_id, ...)`` accepts, those of every ``__init__`` in the env's MRO,
    with their defaults (the id's registered kwargs first; ``inspect.Parameter.empty`` when none)."""
    spec = gym.registry[env_id]
    creator = spec.entry_point
    cls = load_env_creator(creator) if isinstance(creator, str) else creator
    found: dict[str, Any] = {}
    for klass in inspect.getmro(cls):  # type: ignore[arg-type]
        if "__init__" not in vars(klass) or not issubclass(klass, MiniGridEnv):
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                found.setdefault(p.name, p.default)
    found.update({k: v for k, v in (spec.kwargs or {}).items() if k in found})
    return {**found, "max_episode_steps": spec.max_episode_steps, "disable_env_checker": False}


def minigrid_kwarg_names(env_id: str) -> tuple[str, ...]:
    """Keyword arguments ``gym.make(env_id, ...)`` accepts: those of every ``__init__`` in the env's MRO."""
    return tuple(minigrid_kwarg_defaults(env_id))


def validate_minigrid_kwargs(env_id: str, env_kwargs: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` with the closest valid names for a kwarg the env would not accept."""
    allowed = minigrid_kwarg_names(env_id)
    for key in env_kwargs:
        if key not in allowed:
            raise unknown_choice_error("keyword argument", key, allowed, where=f"for {env_id}")


def make_minigrid_env(
    env_id: str, seed: int | None = None, encode_mission: bool | None = None, **env_kwargs: Any
) -> gym.Env:
    """One MiniGrid env with image (or image + mission) observations and a ``Monitor``.

    ``encode_mission=None`` decides by task (see ``envs.mission.MISSION_SLOTS``); True/False forces it.
    """
    if env_family(env_id) != "minigrid":
        raise unknown_choice_error(
            "MiniGrid env id", env_id, [i for i in gym.registry if i.startswith(MINIGRID_PREFIXES)]
        )
    validate_minigrid_kwargs(env_id, env_kwargs)
    env: gym.Env = Monitor(gym.make(env_id, **env_kwargs))
    slots = mission_slots(env_id)
    if encode_mission is True:
        slots = max(slots, 1)
    elif encode_mission is False:
        slots = 0
    env = MissionObsWrapper(env, slots) if slots else ImgObsWrapper(env)
    return seeded(env, seed)


def make_minigrid_vec_env(
    env_id: str,
    n_envs: int = 1,
    seed: int | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    vec_cls: VecClass = None,
    encode_mission: bool | None = None,
) -> VecEnv:
    """``n_envs`` copies of ``make_minigrid_env`` as an SB3 VecEnv; env ``i`` is seeded ``seed + i``."""
    env_family(env_id)  # validate before spawning workers
    validate_minigrid_kwargs(env_id, env_kwargs or {})
    thunk = functools.partial(make_minigrid_env, env_id, None, encode_mission, **dict(env_kwargs or {}))
    return build_vec_env([thunk] * n_envs, seed, vec_cls)
