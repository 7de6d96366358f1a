"""What the CLI can list: agents, suites and env ids, gathered from the lower layers."""

from __future__ import annotations

import agents as _agents
from envs import Suite, get_suite, list_suites, supported_env_ids
from rims_rl.app.errors import user_input


def agents() -> tuple[str, ...]:
    """The named agents (``agents.AGENTS``)."""
    return _agents.AGENTS


def suites() -> dict[str, str]:
    """Registered suites with what their variants change."""
    return list_suites()


def suite(name: str) -> Suite:
    """A registered suite by name; ``UserError`` listing the suites (closest first) otherwise."""
    with user_input():
        return get_suite(name)


def env_ids() -> list[str]:
    """Every env id the project can build."""
    return supported_env_ids()
