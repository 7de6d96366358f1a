"""Seed a single env on its first reset, so ``make_*_env(seed=...)`` is reproducible without a reset call.

Vectorised envs are seeded through ``VecEnv.seed`` instead (SB3 passes ``seed + rank`` at reset).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym


class SeedOnFirstReset(gym.Wrapper):
    """Pass ``seed`` to the first ``reset`` that does not bring its own; later resets continue the RNG."""

    def __init__(self, env: gym.Env, seed: int | None) -> None:
        super().__init__(env)
        self._pending_seed = seed
        if seed is not None:
            env.action_space.seed(seed)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        if seed is None and self._pending_seed is not None:
            seed = self._pending_seed
        self._pending_seed = None
        return self.env.reset(seed=seed, options=options)


def seeded(env: gym.Env, seed: int | None) -> gym.Env:
    """``env`` itself when ``seed`` is None, else wrapped so its first reset uses ``seed``."""
    return env if seed is None else SeedOnFirstReset(env, seed)
