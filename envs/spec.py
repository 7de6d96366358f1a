"""An env spec: a named (env id, kwargs) pair, the unit that suites and ``make_env`` work with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rims_rl.envs.registry import EnvFamily, env_family


@dataclass(frozen=True, eq=True)
class EnvSpec:
    """``name`` labels the variant in results; ``kwargs`` go to the family's ``make_*_env``."""

    name: str
    env_id: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> EnvFamily:
        """``'atari'``, ``'minigrid'`` or ``'popgym'``, decided by the id (validated against the registry)."""
        return env_family(self.env_id)
