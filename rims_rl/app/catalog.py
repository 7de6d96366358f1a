"""What the CLI can list: agents, suites and env ids, gathered from the lower layers."""

from __future__ import annotations

import agents as _agents
from envs import list_suites, supported_env_ids


def agents() -> tuple[str, ...]:
    """The named agents (``agents.AGENTS``)."""
    return _agents.AGENTS


def suites() -> dict[str, str]:
    """Registered suites with what their variants change."""
    return list_suites()


def env_ids() -> list[str]:
    """Every env id the project can build."""
    return supported_env_ids()
