"""What the CLI can list: agents, suites and env ids, gathered from the lower layers."""

from __future__ import annotations

import rims_rl.agents as _agents
from rims_rl.app.errors import user_input
from rims_rl.cores.registry import core_defaults, core_names, get_core
from rims_rl.envs import Suite, get_suite, list_suites
from rims_rl.envs.registry import env_ids_by_family as _env_ids_by_family


def agents() -> tuple[str, ...]:
    """The named agents (``agents.AGENTS``)."""
    return _agents.AGENTS


def cores() -> dict[str, str]:
    """Registered recurrent cores (entry-point group ``rims_rl.cores``) with their default settings."""
    out = {}
    for name in core_names():
        cls = get_core(name)
        defaults = ", ".join(f"{k}={v!r}" for k, v in core_defaults(cls).items())
        out[name] = f"{cls.__module__}.{cls.__qualname__}({defaults})"
    return out


def with_core(agent: str, core: str | None) -> str:
    """``--agent A --core NAME``: agent A's settings and output width with core NAME (``A+NAME``)."""
    return agent if core is None else f"{agent}{_agents.CORE_SEP}{core}"


def suites() -> dict[str, str]:
    """Registered suites with what their variants change."""
    return list_suites()


def suite(name: str) -> Suite:
    """A registered suite by name; ``UserError`` listing the suites (closest first) otherwise."""
    with user_input():
        return get_suite(name)


def env_ids_by_family() -> dict[str, list[str]]:
    """Env family name -> the ids it builds."""
    return _env_ids_by_family()
