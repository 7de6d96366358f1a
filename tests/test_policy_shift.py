"""PolicyShiftCallback (issue 41.3): train/policy_kl is the KL of one update, measured on its rollout."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.vec_env import VecEnv

from rims_rl.agents import apply_overrides, build_model, get_preset
from rims_rl.callbacks import PolicyShiftCallback

TINY = {"ppo.n_steps": 16, "ppo.batch_size": 32, "ppo.n_epochs": 2, "policy_kwargs.lstm_hidden_size": 16}


class RolloutCheck(PolicyShiftCallback):
    """Also checks that the policy's view of the kept rollout is the one the rollout was collected with."""

    def _on_rollout_end(self) -> None:
        super()._on_rollout_end()
        buffer = self.model.rollout_buffer  # type: ignore[attr-defined]
        actions = th.as_tensor(buffer.actions.reshape(-1, *buffer.actions.shape[2:])).squeeze(-1)
        logp = self._before.log_prob(actions).numpy()
        np.testing.assert_allclose(logp, buffer.log_probs.reshape(-1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("agent", ["lstm_ppo", "rims_ppo"])
def test_policy_kl_is_zero_without_learning_and_positive_with_it(agent: str, cue_env: VecEnv) -> None:
    shifts = {}
    for lr in (1e-12, 3e-3):  # (a learning rate must be positive: 1e-12 moves nothing measurable)
        preset = apply_overrides(get_preset(agent, "classic"), {**TINY, "ppo.learning_rate": lr})
        if agent == "rims_ppo":
            preset = apply_overrides(
                preset, {"policy_kwargs.lstm_hidden_size": None, "policy_kwargs.rims_kwargs.unit_size": 4}
            )
        model = build_model(preset, cue_env, seed=0)
        callback = RolloutCheck()
        model.learn(3 * 16 * cue_env.num_envs, callback=callback)
        assert len(callback.shifts) == 3  # one per update, the last one at the end of training
        shifts[lr] = callback.shifts
    assert max(shifts[1e-12]) == pytest.approx(0.0, abs=1e-7)
    assert min(shifts[3e-3]) > 1e-6
