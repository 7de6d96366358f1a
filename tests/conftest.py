"""Shared test set-up: the example plug-in core joins the registry for every test (and subprocess), and the
tiny settings that keep a training test to seconds live here once.

The tiny settings are constants (``from conftest import TINY_ENV``: parametrize lists and module-scoped
fixtures use them too); a built env is a fixture (``cue_env``), closed after the test.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

import pytest
from plugin_core import expose_example_core  # noqa: E402

if TYPE_CHECKING:
    from stable_baselines3.common.vec_env import VecEnv

expose_example_core()

#: The env of the tiny training runs: MiniGrid's empty 5x5 room, solved in a few steps.
TINY_ENV = "MiniGrid-Empty-5x5-v0"
#: PPO settings for a run of a few seconds: rollouts of 16 steps per env, one minibatch, one epoch.
TINY_PPO: Mapping[str, int] = MappingProxyType({"ppo.n_steps": 16, "ppo.batch_size": 16, "ppo.n_epochs": 1})
#: The same on the command line, with two envs.
TINY_FLAGS: tuple[str, ...] = (
    "--n-envs",
    "2",
    *(arg for key, value in TINY_PPO.items() for arg in ("--set", f"{key}={value}")),
)


@pytest.fixture
def cue_env() -> Iterator[VecEnv]:
    """Two in-process cue-memory envs (delay 3, seed 0): the smallest env a recurrent model trains on."""
    from stable_baselines3.common.env_util import make_vec_env

    from rims_rl.envs.memory import CueMemoryEnv

    env = make_vec_env(lambda: CueMemoryEnv(3), n_envs=2, seed=0)
    yield env
    env.close()
