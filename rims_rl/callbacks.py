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
