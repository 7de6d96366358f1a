"""Helpful errors for bad names: say what was wrong and what would have been right.

A typo in an env id or suite name should fail at construction time with the closest valid
choices listed first, instead of deep inside gymnasium or after minutes of training.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def ranked_choices(value: object, choices: Iterable[object], n_close: int = 5) -> list[str]:
    """All ``choices`` as strings, the ones closest to ``value`` first (then in their given order)."""
    choices = list(choices)
    if isinstance(value, int) and choices and all(isinstance(c, int) for c in choices):
        # Numbers (Atari modes/difficulties): nearest by value, not by spelling.
        return [str(c) for c in sorted(choices, key=lambda c: (abs(c - value), c))]  # type: ignore[operator]
    names = [str(c) for c in choices]
    close = difflib.get_close_matches(str(value), names, n=n_close, cutoff=0.5)
    if not close:
        # Case-insensitive retry helps with ids like "alE/breakout-V5".
        lowered = {n.lower(): n for n in names}
        close = [lowered[c] for c in difflib.get_close_matches(str(value).lower(), list(lowered), n=n_close)]
    return close + [n for n in names if n not in close]


def unknown_choice_error(
    kind: str, value: object, choices: Iterable[object], where: str = "", max_listed: int = 25
) -> ValueError:
    """Build a ``ValueError`` naming the bad ``value`` and the valid choices, closest matches first."""
    ranked = ranked_choices(value, choices)
    listed = ", ".join(ranked[:max_listed])
    more = f", ... and {len(ranked) - max_listed} more" if len(ranked) > max_listed else ""
    where = f" {where}" if where else ""
    return ValueError(f"Unknown {kind} {value!r}{where}. Valid choices (closest first): {listed}{more}")
