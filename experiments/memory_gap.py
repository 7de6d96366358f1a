"""Why a rims_ppo run once looked solved in training and scored chance in evaluation (explained).

    python experiments/memory_gap.py     # ~45 s on one CPU core

Cue-memory task, delay 10, seed 0, classic preset. The run is stopped the old way: when the mean success
of the last 64 training episodes reaches 0.95. That window was filled by the policies of earlier rollouts;
the update right after the last of them wrecked the policy, and the run stopped a few episodes later
with the wrecked weights. The script snapshots the weights that collected each rollout and evaluates
them on fresh environments (sampled actions, 200 episodes), then shows what the last update did to the
last rollout's own query steps (PPO ratio new/old of the taken action).

Seen 2026-11-23: weights of rollouts 38-41 score 0.785, 0.910, 0.965, 0.960 on fresh envs; the final weights
0.490 (they answer "1" whatever the cue); on rollout 41's query steps the final/old ratio drops to 0.055
on at least a tenth of them (approx_kl of the update 0.063, 20 epochs, no target_kl). The policy and
the sequence fast path are not at fault: on every rollout the training forward reproduces the rollout's
log-probs exactly. ``experiments/memory_task.py`` now judges each rollout on the weights that collected it
and stops before the next update.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch as th
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

ROOT = Path(__file__).resolve().parents[1]

from memory_task import OVERRIDES  # noqa: E402

from rims_rl.agents import apply_overrides, build_model, get_preset  # noqa: E402
from rims_rl.envs.memory import CueMemoryEnv  # noqa: E402

DELAY = 10


def fresh_success(policy: th.nn.Module, episodes: int = 200) -> float:
    """Success rate with sampled actions on 8 new environments, starting from zero states."""
    env = make_vec_env(lambda: CueMemoryEnv(DELAY), n_envs=8, seed=1000)
    zeros = th.zeros(1, 8, policy.lstm_actor.hidden_size)
    states = RNNStates((zeros, zeros), (zeros, zeros))
    obs, starts, successes = env.reset(), np.ones(8, np.float32), []
    rng = th.get_rng_state()  # keep the training run's random stream untouched
    while len(successes) < episodes:
        with th.no_grad():
            actions, _, _, states = policy(th.as_tensor(obs), states, th.as_tensor(starts))
        obs, _, dones, infos = env.step(actions.numpy())
        successes += [info["is_success"] for info, done in zip(infos, dones, strict=True) if done]
        starts = dones.astype(np.float32)
    th.set_rng_state(rng)
    return float(np.mean(successes[:episodes]))


class TrailingWindowStop(BaseCallback):
    """The old stop rule; also keeps the last rollouts' weights and buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.snapshots: list[tuple[int, dict, object]] = []
        self.rollouts = 0

    def _on_step(self) -> bool:
        buf = self.model.ep_success_buffer
        return not (len(buf) >= 64 and np.mean(list(buf)[-64:]) >= 0.95)

    def _on_rollout_end(self) -> None:
        self.rollouts += 1
        state = copy.deepcopy(self.model.policy.state_dict())
        buffer = copy.deepcopy(self.model.rollout_buffer)
        self.snapshots = self.snapshots[-3:] + [(self.rollouts, state, buffer)]


def main() -> None:
    th.set_num_threads(1)
    env = make_vec_env(lambda: CueMemoryEnv(DELAY), n_envs=8, seed=0)
    model = build_model(apply_overrides(get_preset("rims_ppo", "classic"), OVERRIDES), env, seed=0)
    stop = TrailingWindowStop()
    model.learn(60_000, callback=stop)
    policy = model.policy
    policy.set_training_mode(False)
    print(f"stopped after {model.num_timesteps} steps, {stop.rollouts} rollouts")
    final = copy.deepcopy(policy.state_dict())
    for n, state, _ in stop.snapshots:
        policy.load_state_dict(state)
        print(f"weights that collected rollout {n}: fresh success {fresh_success(policy):.3f}")
    policy.load_state_dict(final)
    success = fresh_success(policy)
    print(f"final weights (after the update on rollout {stop.rollouts}): fresh success {success:.3f}")
    n, _, buffer = stop.snapshots[-1]
    np_state = np.random.get_state()
    with th.no_grad():
        for data in buffer.get(batch_size=None):
            query = (data.mask > 1e-8) & (data.observations[:, 2] == 1)
            _, log_prob, _ = policy.evaluate_actions(
                data.observations, data.actions.long().flatten(), data.lstm_states, data.episode_starts
            )
            ratio = (log_prob - data.old_log_prob)[query].exp()
    np.random.set_state(np_state)
    quantiles = ratio.quantile(th.tensor([0.0, 0.1, 0.5, 0.9, 1.0])).numpy().round(3)
    steps = int(query.sum())
    print(f"final/old ratio on rollout {n}'s {steps} query steps, quantiles 0/.1/.5/.9/1: {quantiles}")
    print(f"last update: approx_kl {model.logger.name_to_value['train/approx_kl']:.3f}")


if __name__ == "__main__":
    main()
