"""Shared check: the training forward reproduces a rollout's log-probs and values on unchanged weights."""

from __future__ import annotations

import torch as th
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.callbacks import CallbackList


def assert_training_reproduces_rollouts(model: RecurrentPPO, rollouts: int = 2, batch_size: int = 64) -> int:
    """Collect ``rollouts`` rollouts, recompute every sample as training does, compare; return the count.

    If this fails, PPO's ratio differs from 1 on unchanged weights, i.e. the update optimises a wrong
    objective.
    """
    model._setup_learn(rollouts * model.n_steps * model.n_envs, callback=None)
    callback = CallbackList([])
    callback.init_callback(model)
    for _ in range(rollouts):
        model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
    policy = model.policy.eval()
    checked = 0
    for batch in model.rollout_buffer.get(batch_size):
        with th.no_grad():
            values, log_prob, _ = policy.evaluate_actions(
                batch.observations, batch.actions.long().flatten(), batch.lstm_states, batch.episode_starts
            )
        real = batch.mask > 1e-8
        th.testing.assert_close(log_prob[real], batch.old_log_prob[real], rtol=0, atol=1e-5)
        th.testing.assert_close(values.flatten()[real], batch.old_values[real], rtol=0, atol=1e-5)
        checked += int(real.sum())
    return checked
