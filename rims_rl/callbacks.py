"""TensorBoard statistics of the recurrent cores during training (SB3 callback).

Each core reports its own scalars (``RecurrentCore.stats``): after every environment step of a rollout
the callback calls the policy's cores' ``on_rollout_step`` (so cores can count rollout steps, not training
minibatches), and at the end of the rollout it logs their ``stats()`` as ``<core>/<key>`` for the actor's
core and ``<core>_critic/<key>`` for a separate critic core, ``<core>`` being the policy's ``core`` name.
The built-in cores log:

- ``rims/unit_<i>_active`` and ``rims/usage_entropy``: how often each RIMs unit was active, and how evenly
  the units were used (1: every unit equally often; a collapse onto the same ``k`` units shows as less);
- ``tlb/slow_attention_entropy``: normalised entropy of the slow latents' attention over the steps of the
  most recent chunk (1: every step read equally; low: the bottleneck picks a few steps);
- ``assembly/contraction_margin``: ``1 - rho``, the guaranteed per-step contraction of the assembly.

Policies without such cores (stock SB3 ones) log nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn

from rims_rl.cores.base import RecurrentCore


def policy_cores(policy: nn.Module) -> dict[str, RecurrentCore]:
    """A policy's cores by TensorBoard prefix (``rims``, ``rims_critic``, ...); empty for stock policies."""
    name = getattr(policy, "core", None)
    if not isinstance(name, str):
        return {}
    found = {}
    for role, suffix in (("lstm_actor", ""), ("lstm_critic", "_critic")):
        core = getattr(policy, role, None)
        if isinstance(core, RecurrentCore):
            found[name + suffix] = core
    return found


class CoreStatsCallback(BaseCallback):
    """Log every core's ``stats()`` once per rollout (after counting its rollout steps)."""

    def _on_step(self) -> bool:
        for core in policy_cores(self.model.policy).values():
            core.on_rollout_step()
        return True

    def _on_rollout_end(self) -> None:
        for prefix, core in policy_cores(self.model.policy).items():
            for key, value in core.stats().items():
                self.logger.record(f"{prefix}/{key}", value)


class PolicyShiftCallback(BaseCallback):
    """How far each PPO update moves the policy: ``train/policy_kl`` = mean over the rollout's steps of
    KL(pi_before || pi_after), both evaluated on the rollout the update trained on, each step from the
    recurrent state the rollout stored for it (so the shift of the policy, not of its memory).

    Why: PPO's clip bounds each sample's probability ratio, not how much the distribution as a whole
    moves; a core whose few parameters steer many units (RIMs' attention) may move further per update
    than an LSTM at the same settings (issue 41). Costs two forward passes over each rollout.
    """

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self._batch: tuple[Any, ...] | None = None
        self._before: Any = None
        self.shifts: list[float] = []
        """Every measured update's KL, in order (also logged)."""

    def _on_step(self) -> bool:
        return True

    def _distribution(self) -> Any:
        assert self._batch is not None
        obs, states, starts = self._batch
        policy: Any = self.model.policy  # a recurrent policy (sb3-contrib's or ours): get_distribution
        with th.no_grad():
            dist, _ = policy.get_distribution(obs, states, starts)
        return dist.distribution

    def _on_rollout_end(self) -> None:
        """Keep the rollout (the buffer is cleared before the next one) and the policy's view of it."""
        buffer: Any = self.model.rollout_buffer  # type: ignore[attr-defined]  # on-policy algorithms have one
        if not hasattr(buffer, "hidden_states_pi"):
            return  # feed-forward PPO: no recurrent state to start from (SB3's approx_kl is its measure)
        device = self.model.policy.device
        n = buffer.buffer_size * buffer.n_envs  # steps flattened step-major: index = step * n_envs + env

        def flat(array: np.ndarray) -> th.Tensor:
            return th.as_tensor(array.reshape(n, *array.shape[2:]), device=device)

        def state(array: np.ndarray) -> th.Tensor:  # [steps, layers, envs, h] -> [layers, steps * envs, h]
            layers = array.shape[1]
            return th.as_tensor(
                array.swapaxes(1, 2).reshape(n, layers, -1).swapaxes(0, 1).copy(), device=device
            )

        observations = buffer.observations
        obs = (
            {k: flat(v) for k, v in observations.items()}
            if isinstance(observations, dict)
            else flat(observations)
        )
        states = (state(buffer.hidden_states_pi), state(buffer.cell_states_pi))
        self._batch = (obs, states, flat(buffer.episode_starts).float())
        self._before = self._distribution()

    def _measure(self) -> None:
        if self._before is None:
            return
        kl = th.distributions.kl_divergence(self._before, self._distribution())
        value = float(kl.reshape(kl.shape[0], -1).sum(dim=1).mean())
        self.shifts.append(value)
        self.logger.record("train/policy_kl", value)
        self._batch = self._before = None

    def _on_rollout_start(self) -> None:
        self._measure()  # the update after the previous rollout has run

    def _on_training_end(self) -> None:
        self._measure()  # the last update
