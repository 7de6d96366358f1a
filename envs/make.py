"""Build any supported env from an id or an ``EnvSpec``: ``ALE/...`` ids go to Atari, ``popgym-...`` to
POPGym, the rest to MiniGrid.

This is the single entry point for training/eval code, so it never needs to know the family.
"""

from __future__ import annotations

import inspect
from typing import Any

import gymnasium as gym
from stable_baselines3.common.vec_env import VecEnv

from rims_rl.envs.atari import make_atari_env, make_atari_vec_env, validate_atari_options
from rims_rl.envs.env_kwargs import check_env_kwargs
from rims_rl.envs.errors import unknown_choice_error
from rims_rl.envs.minigrid import make_minigrid_env, make_minigrid_vec_env
from rims_rl.envs.popgym import make_popgym_env, make_popgym_vec_env, validate_popgym_kwargs
from rims_rl.envs.registry import env_family
from rims_rl.envs.spec import EnvSpec
from rims_rl.envs.vec import VecClass

# Keyword arguments an Atari spec may carry (everything else is a typo, reported with choices).
ATARI_KWARGS: tuple[str, ...] = tuple(
    p for p in inspect.signature(make_atari_env).parameters if p not in ("env_id", "seed", "training")
)


def as_spec(spec_or_id: EnvSpec | str, **overrides: Any) -> EnvSpec:
    """An ``EnvSpec`` from a spec or a bare id, with ``overrides`` merged over its kwargs."""
    if isinstance(spec_or_id, str):
        return EnvSpec(name=spec_or_id, env_id=spec_or_id, kwargs=dict(overrides))
    return EnvSpec(spec_or_id.name, spec_or_id.env_id, {**spec_or_id.kwargs, **overrides})


def check_spec_kwargs(spec: EnvSpec) -> None:
    """Validate the id, the kwarg names and their bounded values (``envs.env_kwargs``; POPGym:
    ``envs.popgym``), and for Atari mode/difficulty, before anything is built."""
    family = env_family(spec.env_id)
    if family == "popgym":
        validate_popgym_kwargs(spec.env_id, spec.kwargs)
        return
    check_env_kwargs(spec.env_id, family, spec.kwargs)
    if family != "atari":
        return
    for key in spec.kwargs:
        if key not in ATARI_KWARGS:
            raise unknown_choice_error("Atari kwarg", key, ATARI_KWARGS, where=f"for {spec.env_id}")
    validate_atari_options(spec.env_id, spec.kwargs.get("mode"), spec.kwargs.get("difficulty"))


def make_env(
    spec_or_id: EnvSpec | str, seed: int | None = None, training: bool = True, **kwargs: Any
) -> gym.Env:
    """One (non-vectorised) env; ``training`` only matters for Atari (episodic life, reward clipping)."""
    spec = as_spec(spec_or_id, **kwargs)
    check_spec_kwargs(spec)
    if spec.family == "atari":
        return make_atari_env(spec.env_id, seed=seed, training=training, **spec.kwargs)
    if spec.family == "popgym":
        return make_popgym_env(spec.env_id, seed=seed, **spec.kwargs)
    return make_minigrid_env(spec.env_id, seed=seed, **spec.kwargs)


def make_vec_env_for(
    spec_or_id: EnvSpec | str,
    n_envs: int = 1,
    seed: int | None = None,
    training: bool = True,
    vec_cls: VecClass = None,
    **kwargs: Any,
) -> VecEnv:
    """An SB3 VecEnv of ``n_envs`` envs (Dummy for 1, Subproc otherwise unless ``vec_cls`` says)."""
    spec = as_spec(spec_or_id, **kwargs)
    check_spec_kwargs(spec)
    if spec.family == "atari":
        return make_atari_vec_env(
            spec.env_id, n_envs=n_envs, seed=seed, training=training, vec_cls=vec_cls, **spec.kwargs
        )
    if spec.family == "popgym":
        return make_popgym_vec_env(
            spec.env_id, n_envs=n_envs, seed=seed, env_kwargs=spec.kwargs, vec_cls=vec_cls
        )
    env_kwargs = dict(spec.kwargs)
    encode_mission = env_kwargs.pop("encode_mission", None)
    return make_minigrid_vec_env(
        spec.env_id,
        n_envs=n_envs,
        seed=seed,
        env_kwargs=env_kwargs,
        vec_cls=vec_cls,
        encode_mission=encode_mission,
    )
