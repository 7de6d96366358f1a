"""Build any supported env from an id or an ``EnvSpec``: the spec's family (``envs.registry``) builds it.

This is the single entry point for training/eval code, so it never needs to know the family.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from stable_baselines3.common.vec_env import VecEnv

from rims_rl.envs.spec import EnvSpec
from rims_rl.envs.vec import VecClass


def as_spec(spec_or_id: EnvSpec | str, **overrides: Any) -> EnvSpec:
    """An ``EnvSpec`` from a spec or a bare id, with ``overrides`` merged over its kwargs.

    A bare id is validated here (``EnvSpec`` resolves its family); a spec keeps the family it has.
    """
    if isinstance(spec_or_id, str):
        return EnvSpec(name=spec_or_id, env_id=spec_or_id, kwargs=dict(overrides))
    return spec_or_id.with_kwargs({**spec_or_id.kwargs, **overrides})


def check_spec_kwargs(spec: EnvSpec) -> None:
    """Validate the kwarg names and their bounded values (the family's ``check_kwargs``: for Atari also
    mode/difficulty against the ROM) before anything is built; the id was validated with the spec."""
    spec.family.check_kwargs(spec.env_id, spec.kwargs)


def make_env(
    spec_or_id: EnvSpec | str, seed: int | None = None, training: bool = True, **kwargs: Any
) -> gym.Env:
    """One (non-vectorised) env; ``training`` only matters for Atari (episodic life, reward clipping)."""
    spec = as_spec(spec_or_id, **kwargs)
    check_spec_kwargs(spec)
    return spec.family.make_env(spec.env_id, spec.kwargs, seed=seed, training=training)


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
    return spec.family.make_vec_env(
        spec.env_id, spec.kwargs, n_envs=n_envs, seed=seed, training=training, vec_cls=vec_cls
    )
