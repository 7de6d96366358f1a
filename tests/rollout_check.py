"""Shared checks that the training path computes what the rollout (and sb3-contrib's step loop) computed."""

from __future__ import annotations

from typing import Any

import torch as th
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.callbacks import CallbackList


def check_buffer(model: RecurrentPPO, batch_size: int) -> tuple[int, list[Any]]:
    """Recompute every collected sample as training does (policy in eval mode) and compare with the
    rollout's log-probs and values; return the number of real samples and the minibatches seen.

    If this fails, PPO's ratio differs from 1 on unchanged weights, i.e. the update optimises a wrong
    objective.
    """
    policy = model.policy.eval()
    checked, batches = 0, []
    for batch in model.rollout_buffer.get(batch_size):
        with th.no_grad():
            values, log_prob, _ = policy.evaluate_actions(
                batch.observations, batch.actions.long().flatten(), batch.lstm_states, batch.episode_starts
            )
        real = batch.mask > 1e-8
        th.testing.assert_close(log_prob[real], batch.old_log_prob[real], rtol=0, atol=1e-5)
        th.testing.assert_close(values.flatten()[real], batch.old_values[real], rtol=0, atol=1e-5)
        checked += int(real.sum())
        batches.append(batch)
    return checked, batches


def assert_training_reproduces_rollouts(model: RecurrentPPO, rollouts: int = 2, batch_size: int = 64) -> int:
    """Collect ``rollouts`` rollouts, then ``check_buffer``; return the number of samples checked."""
    model._setup_learn(rollouts * model.n_steps * model.n_envs, callback=None)
    callback = CallbackList([])
    callback.init_callback(model)
    for _ in range(rollouts):
        model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
    return check_buffer(model, batch_size)[0]


def assert_sequence_call_matches_step_loop(
    policy: Any, feats: th.Tensor, states: tuple[th.Tensor, th.Tensor], starts: th.Tensor
) -> None:
    """Our one-call ``_process_sequence`` equals sb3-contrib's per-step loop (outputs and final state)."""
    with th.no_grad():
        out_fast, (h_fast, c_fast) = policy._process_sequence(feats, states, starts, policy.lstm_actor)
        out_slow, (h_slow, c_slow) = RecurrentActorCriticPolicy._process_sequence(
            feats, states, starts, policy.lstm_actor
        )
    th.testing.assert_close(out_fast, out_slow, rtol=1e-5, atol=1e-6)
    th.testing.assert_close(h_fast, h_slow, rtol=1e-5, atol=1e-6)
    th.testing.assert_close(c_fast, c_slow, rtol=1e-5, atol=1e-6)
