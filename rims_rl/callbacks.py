"""TensorBoard statistics of RIMs unit usage during training (SB3 callback).

RIMs is meant to specialise units; a collapse to the same ``k`` units every step, or perfectly uniform
use, is visible only in the activation masks. This callback counts, over each rollout, how often each
unit of the actor's (and a separate critic's) RIMs core is active, and logs:

- ``rims/unit_<i>_active``: fraction of steps unit ``i`` was active (sums to ``k`` over units);
- ``rims/usage_entropy``: entropy of the usage distribution ``p_i = freq_i / k`` divided by
  ``log(n_units)``; 1.0 means every unit is used equally often, lower means some units dominate.

Critic statistics go under ``rims_critic/``. The other modular cores log their ``stats()`` at the end of
each rollout (the state after the rollout's last step):

- ``tlb/slow_attention_entropy``: normalised entropy of the slow latents' attention over the steps of the
  most recent chunk (1: every step read equally; low: the bottleneck picks a few steps);
- ``assembly/contraction_margin``: ``1 - rho``, the guaranteed per-step contraction of the assembly.

Critic cores log under ``tlb_critic/`` and ``assembly_critic/``. Policies without such cores log nothing.
"""

from __future__ import annotations

import math

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback

from rims_rl.assembly import StableAssembly
from rims_rl.core import RIMs
from rims_rl.tlb import TemporalLatentBottleneck

_STATS_PREFIX: dict[type, str] = {TemporalLatentBottleneck: "tlb", StableAssembly: "assembly"}


def usage_entropy(active_fraction: np.ndarray) -> float:
    """Normalised entropy (in [0, 1]) of unit usage, from per-unit active fractions."""
    freq = np.asarray(active_fraction, dtype=np.float64)
    n = freq.size
    total = freq.sum()
    if n < 2 or total <= 0:
        return 1.0
    p = freq / total
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / math.log(n))


def unit_usage(mask: th.Tensor) -> tuple[np.ndarray, float]:
    """Per-unit active fraction and normalised usage entropy of a ``[..., n_units]`` bool mask."""
    freq = mask.reshape(-1, mask.shape[-1]).float().mean(0).cpu().numpy()
    return freq, usage_entropy(freq)


def _rims_cores(policy: th.nn.Module) -> dict[str, RIMs]:
    cores = {"rims": getattr(policy, "lstm_actor", None), "rims_critic": getattr(policy, "lstm_critic", None)}
    return {prefix: c for prefix, c in cores.items() if isinstance(c, RIMs)}


def _modular_cores(policy: th.nn.Module) -> dict[str, TemporalLatentBottleneck | StableAssembly]:
    """TLB / assembly cores of a policy by TensorBoard prefix (``tlb``, ``assembly_critic``, ...)."""
    found: dict[str, TemporalLatentBottleneck | StableAssembly] = {}
    for role, suffix in (("lstm_actor", ""), ("lstm_critic", "_critic")):
        core = getattr(policy, role, None)
        prefix = _STATS_PREFIX.get(type(core))
        if prefix is not None and isinstance(core, (TemporalLatentBottleneck, StableAssembly)):
            found[prefix + suffix] = core
    return found


class RimsStatsCallback(BaseCallback):
    """Log per-unit activation frequency and usage evenness of the RIMs cores once per rollout (and the
    TLB / assembly cores' ``stats()``).

    Reads ``last_active_mask`` after every environment step (the policy ran the cores on that step's
    observation just before), so only rollout steps are counted, not training minibatches.
    """

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self._counts: dict[str, th.Tensor] = {}
        self._steps: dict[str, int] = {}
        self._seen: dict[str, th.Tensor] = {}

    def _on_rollout_start(self) -> None:
        self._counts, self._steps = {}, {}

    def _on_step(self) -> bool:
        for prefix, core in _rims_cores(self.model.policy).items():
            mask = core.last_active_mask
            # The same mask object twice means the core did not run in between: do not count it again.
            if mask is None or self._seen.get(prefix) is mask:
                continue
            self._seen[prefix] = mask
            flat = mask.reshape(-1, mask.shape[-1])
            self._counts[prefix] = self._counts.get(prefix, 0) + flat.sum(0).cpu()
            self._steps[prefix] = self._steps.get(prefix, 0) + flat.shape[0]
        return True

    def _on_rollout_end(self) -> None:
        for prefix, counts in self._counts.items():
            freq = (counts.double() / max(1, self._steps[prefix])).numpy()
            for i, f in enumerate(freq):
                self.logger.record(f"{prefix}/unit_{i}_active", float(f))
            self.logger.record(f"{prefix}/usage_entropy", usage_entropy(freq))
        for prefix, core in _modular_cores(self.model.policy).items():
            for key, value in core.stats().items():
                self.logger.record(f"{prefix}/{key}", value)
