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

from rims_rl.checks import unknown_choice_error
from rims_rl.envs.distractors import register_distractor_envs
from rims_rl.envs.env_kwargs import MAX_EPISODE_STEPS, MAX_GRID, Rule, check_value, rule_from_default
from rims_rl.envs.mission import MissionObsWrapper, mission_slots
from rims_rl.envs.registry import EnvFamily, family_of_id, register_family
from rims_rl.envs.seeding import seeded
from rims_rl.envs.vec import VecClass, build_vec_env

#: MiniGrid's and BabyAI's grid worlds, and ours (the distractor room) under ``RimsRL/``.
MINIGRID_PREFIXES = ("MiniGrid-", "BabyAI-", "RimsRL/")
#: Bounds of the common MiniGrid kwargs; a constructor argument without one is bounded by its default's type.
MINIGRID_RULES: dict[str, Rule] = {
    "max_steps": ("int", 1, MAX_EPISODE_STEPS, True),
    "max_episode_steps": ("int", 1, MAX_EPISODE_STEPS, True),
    "render_mode": (("rgb_array",), 0, 0, True),  # never "human": evaluation opens no window
    "encode_mission": ("bool", 0, 0, True),
    "agent_view_size": ("odd", 3, 31, False),
    "size": ("int", 3, MAX_GRID, True),
    "width": ("int", 3, MAX_GRID, True),
    "height": ("int", 3, MAX_GRID, True),
    "grid_size": ("int", 3, MAX_GRID, True),
    "tile_size": ("int", 1, MAX_GRID, False),
    "screen_size": ("int", 1, 2048, True),
}


def is_minigrid_id(env_id: str) -> bool:
    """MiniGrid-style grid worlds: ``MINIGRID_PREFIXES``."""
    return env_id.startswith(MINIGRID_PREFIXES)


def register_minigrid_envs() -> None:
    """Register MiniGrid's, BabyAI's and our grid worlds with gymnasium (idempotent)."""
    import minigrid

    if "MiniGrid-Empty-5x5-v0" not in gym.registry:  # importing minigrid usually registers already
        minigrid.register_minigrid_envs()
    register_distractor_envs()


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
    _check_minigrid_id(env_id)
    validate_minigrid_kwargs(env_id, env_kwargs)
    return _minigrid_env(env_id, seed, encode_mission, **env_kwargs)


def _minigrid_env(env_id: str, seed: int | None, encode_mission: bool | None, **env_kwargs: Any) -> gym.Env:
    """``make_minigrid_env`` for an id and kwargs already checked."""
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
    _check_minigrid_id(env_id)  # validate before spawning workers
    validate_minigrid_kwargs(env_id, env_kwargs or {})
    return _minigrid_vec_env(env_id, n_envs, seed, env_kwargs or {}, vec_cls, encode_mission)


def _minigrid_vec_env(
    env_id: str,
    n_envs: int,
    seed: int | None,
    env_kwargs: Mapping[str, Any],
    vec_cls: VecClass,
    encode_mission: bool | None,
) -> VecEnv:
    thunk = functools.partial(_minigrid_env, env_id, None, encode_mission, **dict(env_kwargs))
    return build_vec_env([thunk] * n_envs, seed, vec_cls)


def _check_minigrid_id(env_id: str) -> None:
    if not is_minigrid_id(env_id):
        register_minigrid_envs()
        raise unknown_choice_error("MiniGrid env id", env_id, [i for i in gym.registry if is_minigrid_id(i)])
    family_of_id(env_id)


def check_minigrid_kwargs(env_id: str, kwargs: Mapping[str, Any]) -> None:
    """Names: those of the env's constructors (plus ``encode_mission``); values: ``MINIGRID_RULES``, else
    the type of the constructor's default."""
    validate_minigrid_kwargs(env_id, {k: v for k, v in kwargs.items() if k != "encode_mission"})
    defaults = minigrid_kwarg_defaults(env_id)
    for key, value in kwargs.items():
        check_value(env_id, key, value, MINIGRID_RULES.get(key) or rule_from_default(defaults.get(key)))


def _family_env(env_id: str, kwargs: Mapping[str, Any], *, seed: int | None, training: bool) -> gym.Env:
    settings = dict(kwargs)
    encode_mission = settings.pop("encode_mission", None)
    return _minigrid_env(env_id, seed, encode_mission, **settings)


def _family_vec_env(
    env_id: str,
    kwargs: Mapping[str, Any],
    *,
    n_envs: int,
    seed: int | None,
    training: bool,
    vec_cls: VecClass,
) -> VecEnv:
    settings = dict(kwargs)
    encode_mission = settings.pop("encode_mission", None)
    return _minigrid_vec_env(env_id, n_envs, seed, settings, vec_cls, encode_mission)


MINIGRID = register_family(
    EnvFamily(
        name="minigrid",
        ids="MiniGrid-*, BabyAI-*, RimsRL/*",
        owns=is_minigrid_id,
        register_envs=register_minigrid_envs,
        make_env=_family_env,
        make_vec_env=_family_vec_env,
        check_kwargs=check_minigrid_kwargs,
        preset_family="minigrid",
        has_success=True,  # reward > 0 only on reaching the goal
        vec_env="dummy",  # grid worlds step in microseconds: subprocesses cost more than they save
    )
)
