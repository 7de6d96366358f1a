"""The shipped agent presets: ``agents/presets.yml`` (data with its sources), read once and validated.

The YAML holds one block per ``<agent>/<family>``; keys starting with ``_`` hold shared pieces (YAML
anchors) and are not presets. Each block becomes an ``AgentPreset``, so a bad value in the file fails
at import with the block's name.
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

from agents.config import AgentPreset

PRESETS_FILE = Path(__file__).with_name("presets.yml")
AGENTS: tuple[str, ...] = ("rims_ppo", "lstm_ppo", "ppo", "tlb_ppo", "assembly_ppo", "rims_spatial_ppo")
FAMILIES: tuple[str, ...] = ("atari", "minigrid", "classic", "popgym")
#: Agents that exist for some families only (every other agent has a block for every family).
AGENT_FAMILIES: dict[str, tuple[str, ...]] = {"rims_spatial_ppo": ("atari", "minigrid")}  # image input


def families_of(agent: str) -> tuple[str, ...]:
    """The environment families ``agent`` has a preset for."""
    return AGENT_FAMILIES.get(agent, FAMILIES)


@functools.cache
def shipped_presets() -> dict[tuple[str, str], AgentPreset]:
    """Every shipped preset by ``(agent, family)``."""
    raw = yaml.safe_load(PRESETS_FILE.read_text())
    presets: dict[tuple[str, str], AgentPreset] = {}
    for key, block in raw.items():
        if key.startswith("_"):
            continue
        agent, _, family = key.partition("/")
        try:
            presets[(agent, family)] = AgentPreset.from_dict({"agent": agent, "family": family, **block})
        except ValueError as err:
            raise ValueError(f"{PRESETS_FILE.name} block {key!r}: {err}") from err
    missing = [(a, f) for a in AGENTS for f in families_of(a) if (a, f) not in presets]
    if missing:
        raise ValueError(f"{PRESETS_FILE.name} lacks blocks for {missing}")
    return presets
