"""The shipped agent presets: ``agents/presets.yml`` (data with its sources), read once and validated.

The YAML holds one block per ``<agent>/<family>``; keys starting with ``_`` hold shared pieces (YAML
anchors) and are not presets. Each block becomes an ``AgentPreset``, so a bad value in the file fails
at import with the block's name.
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

from rims_rl.agents.config import AgentPreset

PRESETS_FILE = Path(__file__).with_name("presets.yml")


@functools.cache
def _raw_blocks() -> dict[tuple[str, str], dict]:
    """The YAML's ``<agent>/<family>`` blocks, in file order (``_`` keys are shared pieces, not presets)."""
    raw = yaml.safe_load(PRESETS_FILE.read_text())
    return {tuple(k.partition("/")[::2]): v for k, v in raw.items() if not k.startswith("_")}


#: Agents and families in the order presets.yml first names them: an agent is its blocks, so adding one
#: is adding its blocks.
AGENTS: tuple[str, ...] = tuple(dict.fromkeys(agent for agent, _ in _raw_blocks()))
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(family for _, family in _raw_blocks()))


def families_of(agent: str) -> tuple[str, ...]:
    """The environment families ``agent`` has a preset for (a block in presets.yml)."""
    return tuple(f for f in FAMILIES if (agent, f) in _raw_blocks())


@functools.cache
def shipped_presets() -> dict[tuple[str, str], AgentPreset]:
    """Every shipped preset by ``(agent, family)``."""
    presets: dict[tuple[str, str], AgentPreset] = {}
    for (agent, family), block in _raw_blocks().items():
        try:
            presets[(agent, family)] = AgentPreset.from_dict({"agent": agent, "family": family, **block})
        except ValueError as err:
            raise ValueError(f"{PRESETS_FILE.name} block '{agent}/{family}': {err}") from err
    return presets
