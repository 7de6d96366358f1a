"""Env keyword arguments limited to known names with bounded values, checked before any env is built.

A spec's kwargs may come from an untrusted checkpoint, a committed ``tune.json``, a suite file or
``evaluate --set env.KEY=VALUE``. ``size=30000`` or ``max_steps=10**9`` would make one episode last for
hours, ``render_mode="human"`` opens a window, and ``size="abc"`` or ``agent_view_size=-3`` crash deep
inside MiniGrid. Each family states its bounds as ``Rule``s (``ATARI_RULES`` in ``envs.atari``,
``MINIGRID_RULES`` in ``envs.minigrid``, ...) and ``check_rules`` refuses a value outside them with a
``ValueError`` naming the env, the key and the accepted values.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

MAX_EPISODE_STEPS = 100_000
"""Longest episode a kwarg may ask for (MiniGrid's own limits are at most a few thousand steps)."""
MAX_GRID = 64
"""Largest grid side and any other count in a MiniGrid env's kwargs (the suites go up to 16)."""

# (kind, low, high, None allowed); kind: "int", "odd", "number", "bool", "names" or a tuple of allowed values.
Rule = tuple[Any, float, float, bool]


def check_rules(env_id: str, kwargs: Mapping[str, Any], rules: Mapping[str, Rule]) -> None:
    """``ValueError`` unless every kwarg that has a rule has a value within it (see module doc).

    Names are each family's to check (``EnvFamily.check_kwargs``); a name without a rule passes here.
    """
    for key, value in kwargs.items():
        if key in rules:
            check_value(env_id, key, value, rules[key])


def rule_from_default(default: Any) -> Rule:
    """A rule for a constructor argument without its own: the type of its default, counts up to MAX_GRID."""
    if isinstance(default, bool):
        return ("bool", 0, 0, False)
    if isinstance(default, int):
        return ("int", 0, MAX_GRID, False)
    if isinstance(default, float):
        return ("number", 0.0, 1e6, False)
    if isinstance(default, tuple | list) and all(isinstance(x, tuple | list | str) for x in default):
        return ("names", 0, MAX_GRID, False)
    nullable = default is None or default is inspect.Parameter.empty
    return ("int", 0, MAX_GRID, nullable)  # no default to go by: a count, or None


def check_value(env_id: str, key: str, value: Any, rule: Rule) -> None:
    """``ValueError`` naming the env, the key and what it must be, unless ``value`` keeps ``rule``."""
    kind, low, high, nullable = rule
    if value is None and nullable:
        return
    ok = False
    if isinstance(kind, tuple):
        ok = value in kind
        want = " or ".join(repr(k) for k in kind) + (" (or null)" if nullable else "")
    elif kind == "bool":
        ok, want = isinstance(value, bool), "true or false"
    elif kind in ("int", "odd"):
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        ok = ok and (kind == "int" or value % 2 == 1)
        want = f"{'an odd' if kind == 'odd' else 'an'} integer in [{low:g}, {high:g}]"
    elif kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and low <= value <= high
        want = f"a number in [{low:g}, {high:g}]"
    else:  # names: a short list of names or of (colour, type) pairs
        ok = isinstance(value, list | tuple) and len(value) <= high and all(_short_names(x) for x in value)
        want = f"a list of at most {high:g} names or pairs of names"
    if not ok:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ValueError(f"env kwarg {key}={shown} for {env_id} must be {want}")


def _short_names(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= 32
    return isinstance(value, list | tuple) and len(value) <= 4 and all(_short_names(x) for x in value)
