"""A cue-recall memory task: feed-forward policies are stuck at chance (0.5), memory solves it (1.0).

Observation ``[cue_a, cue_b, query]``: step 0 shows a one-hot cue, the next ``delay - 1`` steps show
zeros, the last step shows ``[0, 0, 1]`` and the action there (Discrete(2)) is graded: reward 1 if it
matches the cue, else 0, and the episode ends. Actions before the query are ignored. The query
observation is the same whatever the cue, so without memory the best success rate is 0.5.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rims_rl.checks import check_positive


class CueMemoryEnv(gym.Env):
    """Remember a binary cue for ``delay`` steps; episode length ``delay + 1``."""

    def __init__(self, delay: int = 4) -> None:
        check_positive("delay", delay)
        self.delay = delay
        self.observation_space = spaces.Box(0.0, 1.0, (3,), np.float32)
        self.action_space = spaces.Discrete(2)
        self._cue = 0
        self._t = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(3, np.float32)
        if self._t == 0:
            obs[self._cue] = 1.0
        elif self._t == self.delay:
            obs[2] = 1.0
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._cue = int(self.np_random.integers(2))
        self._t = 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._t == self.delay:
            success = int(action) == self._cue
            return self._obs(), float(success), True, False, {"is_success": success}
        self._t += 1
        return self._obs(), 0.0, False, False, {}
