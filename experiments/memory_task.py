"""Train an agent on ``CueMemoryEnv`` until it succeeds (or its budget runs out); shared by tests and reports.

Run ``python experiments/memory_task.py rims_ppo lstm_ppo ppo`` for the table in the report.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from rims_rl.agents import apply_overrides, build_model, get_preset  # noqa: E402
from rims_rl.envs.memory import CueMemoryEnv  # noqa: E402

DELAY = 4
#: Same settings for all agents: the classic-control preset, critic without a recurrent core (the value
#: at the query step does not depend on the cue once the policy recalls it), budget in env steps.
OVERRIDES: dict[str, Any] = {"policy_kwargs.enable_critic_lstm": False}


@dataclass
class MemoryResult:
    agent: str
    success: float  # deterministic success rate over eval episodes
    steps: int  # env steps trained
    seconds: float  # wall-clock training time
    reached: bool  # training success rate hit the threshold before the budget ran out


class StopOnSuccess(BaseCallback):
    """Stop at the end of the first rollout whose finished episodes succeed at least ``threshold``.

    Judged per rollout, on the weights that collected it, and before the update that follows: the
    model that stops is the model that was measured. (A trailing window over the success buffer mixes
    several earlier policies, and one bad update right after it passes can leave a model at chance that
    the window called solved; ``experiments/memory_gap.py`` shows such a case.)
    """

    def __init__(self, threshold: float, min_episodes: int = 16) -> None:
        super().__init__()
        self.threshold, self.min_episodes, self.reached = threshold, min_episodes, False
        self._successes: list[bool] = []

    def _on_rollout_start(self) -> None:
        self._successes = []

    def _on_step(self) -> bool:
        infos, dones = self.locals["infos"], self.locals["dones"]
        self._successes += [bool(info["is_success"]) for info, done in zip(infos, dones, strict=True) if done]
        last_step = self.locals["n_steps"] == self.locals["n_rollout_steps"] - 1
        if last_step and len(self._successes) >= self.min_episodes:
            if np.mean(self._successes) >= self.threshold:
                self.reached = True
                return False  # returning False here skips the update after this rollout
        return True


def run_memory_task(
    agent: str,
    budget: int = 8192,
    threshold: float = 0.95,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    n_eval: int = 200,
    delay: int = DELAY,
) -> MemoryResult:
    """Train ``agent`` on the cue-recall task; return deterministic success, steps and seconds."""
    env = make_vec_env(lambda: CueMemoryEnv(delay), n_envs=8, seed=seed)
    preset = get_preset(agent, "classic")
    shared = OVERRIDES if preset.recurrent else {}
    config = apply_overrides(preset, {**shared, **(overrides or {})})
    model = build_model(config, env, seed=seed)
    stop = StopOnSuccess(threshold)
    start = time.perf_counter()
    model.learn(budget, callback=stop)
    seconds = time.perf_counter() - start
    eval_env = make_vec_env(lambda: CueMemoryEnv(delay), n_envs=1, seed=seed + 1000)
    success, _ = evaluate_policy(model, eval_env, n_eval_episodes=n_eval, deterministic=True)
    return MemoryResult(agent, float(success), int(model.num_timesteps), seconds, stop.reached)


if __name__ == "__main__":
    th.set_num_threads(1)
    for name in sys.argv[1:] or ("rims_ppo", "lstm_ppo", "ppo"):
        r = run_memory_task(name)
        print(f"{r.agent:9s} success={r.success:.3f} steps={r.steps} seconds={r.seconds:.1f} ok={r.reached}")
