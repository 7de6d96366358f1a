"""One place that registers every env family we support and validates env ids against it.

Ids are checked against ``gymnasium.registry`` before anything is built, so a typo fails fast
with the closest valid ids, and the family of an id (Atari, MiniGrid or POPGym) decides which
preprocessing ``envs.make`` applies.
"""

from __future__ import annotations

from typing import Literal

import gymnasium as gym

from rims_rl.envs.errors import unknown_choice_error
from rims_rl.envs.popgym import POPGYM_PREFIX, register_popgym_envs

EnvFamily = Literal["atari", "minigrid", "popgym"]
ATARI_PREFIX = "ALE/"
MINIGRID_PREFIXES = ("MiniGrid-", "BabyAI-", "RimsRL/")


def register_all_envs() -> None:
    """Register ALE, MiniGrid, POPGym and our own envs with gymnasium (idempotent, quiet on re-import)."""
    import ale_py
    import minigrid

    gym.register_envs(ale_py)
    if "MiniGrid-Empty-5x5-v0" not in gym.registry:  # importing minigrid usually registers already
        minigrid.register_minigrid_envs()
    # Deferred: envs.distractors imports this module's siblings and registers its ids on import; the
    # registry must be importable first (every env module asks it for ids).
    import rims_rl.envs.distractors  # noqa: F401

    register_popgym_envs()


def env_family(env_id: str) -> EnvFamily:
    """``'atari'`` for ``ALE/...``, ``'popgym'`` for ``popgym-...``, else ``'minigrid'``; validates the id."""
    validate_env_id(env_id)
    if env_id.startswith(ATARI_PREFIX):
        return "atari"
    return "popgym" if env_id.startswith(POPGYM_PREFIX) else "minigrid"


_SUPPORTED: tuple[int, list[str]] = (-1, [])  # (registry size it was computed at, ids)


def supported_env_ids() -> list[str]:
    """Registered ids we can build: ALE v5 image games, MiniGrid-style grid worlds and POPGym tasks.

    Computed once per registry size (ids are only ever added), so validating an id many times is cheap.
    """
    global _SUPPORTED
    register_all_envs()
    if _SUPPORTED[0] == len(gym.registry):
        return list(_SUPPORTED[1])
    ids = []
    for env_id in gym.registry:
        if env_id.startswith(ATARI_PREFIX):
            if "-ram" not in env_id:
                ids.append(env_id)
        elif env_id.startswith((*MINIGRID_PREFIXES, POPGYM_PREFIX)):
            ids.append(env_id)
    _SUPPORTED = (len(gym.registry), ids)
    return list(ids)


def validate_env_id(env_id: str) -> None:
    """Raise ``ValueError`` (closest valid ids first) unless ``env_id`` is a supported registered id."""
    supported = supported_env_ids()
    if env_id in supported:
        return None
    if env_id in gym.registry:
        kind = (
            "env id (registered, but not an ALE/...-v5 Atari, MiniGrid or popgym- env: the CLI builds only "
            "those families' wrappers; the 'classic' presets are for the Python API, agents.get_preset)"
        )
    else:
        kind = "env id"
    raise unknown_choice_error(kind, env_id, supported)
