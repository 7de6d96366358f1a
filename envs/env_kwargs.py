"""Env keyword arguments limited to known names with bounded values, checked before any env is built.

A spec's kwargs may come from an untrusted checkpoint, a committed ``tune.json``, a suite file or
``evaluate --set env.KEY=VALUE``. ``size=30000`` or ``max_steps=10**9`` would make one episode last for
hours, ``render_mode="human"`` opens a window, and ``size="abc"`` or ``agent_view_size=-3`` crash deep
inside MiniGrid. ``check_env_kwargs`` refuses each with a ``ValueError`` naming the env, the key and the
accepted values.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

from rims_rl.envs.minigrid import minigrid_kwarg_defaults, validate_minigrid_kwargs

MAX_EPISODE_STEPS = 100_000
"""Longest episode a kwarg may ask for (MiniGrid's own limits are at most a few thousand steps)."""
MAX_GRID = 64
"""Largest grid side and any other count in a MiniGrid env's kwargs (the suites go up to 16)."""

# (kind, low, high, None allowed); kind: "int", "odd", "number", "bool" or a tuple of allowed values.
_Rule = tuple[Any, float, float, bool]
ATARI_RULES: dict[str, _Rule] = {
    "frame_stack": ("int", 1, 16, False),
    "mode": ("int", 0, 1024, True),  # checked against the ROM's modes by validate_atari_options
    "difficulty": ("int", 0, 1024, True),
    "repeat_action_probability": ("number", 0.0, 1.0, False),
    "noop_max": ("int", 0, 1000, False),
    "frame_skip": ("int", 1, 16, False),
    "screen_size": ("int", 8, 256, False),
    "terminal_on_life_loss": ("bool", 0, 0, True),
}
MINIGRID_RULES: dict[str, _Rule] = {
    "max_steps": ("int", 1, MAX_EPISODE_STEPS, True),
    "max_episode_steps": ("int", 1, MAX_EPISODE_STEPS, True),
    "render_mode": (("rgb_array",), 0, 0, True),  # never "human": evaluation opens no window
    "encode_mission": ("bool", 0, 0, True),
    "agent_view_size": ("odd", 3, 31, False),
    "size": ("int", 3, MAX_GRID, True),
    "width": ("int", 3, MAX_GRID, True),
    "height": ("int", 3, MAX_GRID, True),
    "grid_size": ("int", 3, MAX_GRID, True),
    "tile_size": ("int", 1, MAX_GRID, False),
    "screen_size": ("int", 1, 2048, True),
}


def check_env_kwargs(env_id: str, family: str, kwargs: Mapping[str, Any]) -> None:
    """``ValueError`` unless every kwarg is one the env takes, with a value in its bounds (see module doc).

    Atari names are checked by ``envs.make.check_spec_kwargs``; here their values. MiniGrid names are
    those of the env's constructors; values follow ``MINIGRID_RULES``, else the type of the default.
    """
    if family == "atari":
        for key, value in kwargs.items():
            if key in ATARI_RULES:
                _check(env_id, key, value, ATARI_RULES[key])
        return
    if family != "minigrid":
        return
    validate_minigrid_kwargs(env_id, {k: v for k, v in kwargs.items() if k != "encode_mission"})
    defaults = minigrid_kwarg_defaults(env_id)
    for key, value in kwargs.items():
        _check(env_id, key, value, MINIGRID_RULES.get(key) or _rule_from_default(defaults.get(key)))


def _rule_from_default(default: Any) -> _Rule:
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


def _check(env_id: str, key: str, value: Any, rule: _Rule) -> None:
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
