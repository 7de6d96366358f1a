"""The checks of user-given values, written once: positive integers, ranges, names with did-you-mean hints.

Every layer checks values the user typed or a file held, and each check used to be written out where it
was needed, with its own wording. They live here, as pure functions that import only the standard library:
this module is the one leaf that every layer may import (``envs/`` included, which imports no other project
code), because it holds no behaviour of the project's to depend on, only the wording of a refusal.

Each check raises ``ValueError`` naming the value and what would be right, or the subclass the caller
passes as ``error`` (a ``UserError``, a ``CheckpointError``, ...), and returns the checked value.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from typing import Any

#: What ``safe_name`` keeps of a name: letters, digits, ``.``, ``_`` and ``-``.
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def is_int(value: Any) -> bool:
    """True for an integer; ``bool`` is not one (``True`` as a width or a count is a mistake)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for a finite int or float (``bool``, NaN and infinities are not numbers here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_positive(
    name: str,
    value: Any,
    *,
    error: type[Exception] = ValueError,
    type_error: type[Exception] | None = None,
) -> int:
    """``value`` if it is an integer >= 1, else ``error`` (``type_error`` for a non-integer, if given)."""
    if not is_int(value) or value < 1:
        raise (type_error if type_error is not None and not is_int(value) else error)(
            f"{name} must be a positive integer, got {value!r}"
        )
    return int(value)


def check_int(
    name: str, value: Any, low: int, high: int | None = None, *, error: type[Exception] = ValueError
) -> int:
    """``value`` if it is an integer in ``[low, high]`` (``high=None``: no upper bound), else ``error``."""
    if not is_int(value) or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise error(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def check_number(
    name: str, value: Any, low: float, high: float | None = None, *, error: type[Exception] = ValueError
) -> float:
    """``value`` if it is a finite number in ``[low, high]`` (``high=None``: no upper bound), else
    ``error``."""
    if not is_number(value) or value < low or (high is not None and value > high):
        bound = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise error(f"{name} must be a number {bound}, got {value!r}")
    return float(value)


def check_positive_number(name: str, value: Any, *, error: type[Exception] = ValueError) -> float:
    """``value`` if it is a finite number above 0 (a learning rate, a clip range), else ``error``."""
    if not is_number(value) or value <= 0:
        raise error(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def hint(name: object, valid: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for a misspelt name, else an empty string."""
    close = difflib.get_close_matches(str(name), list(valid), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def ranked_choices(value: object, choices: Iterable[object], n_close: int = 5) -> list[str]:
    """All ``choices`` as strings, the ones closest to ``value`` first (then in their given order).

    Numbers (Atari modes and difficulties) are ranked by value, not spelling; names that match nothing
    are tried again without case (``alE/breakout-V5``).
    """
    choices = list(choices)
    if is_int(value) and choices and all(is_int(c) for c in choices):
        return [str(c) for c in sorted(choices, key=lambda c: (abs(c - value), c))]  # type: ignore[operator]
    names = [str(c) for c in choices]
    close = difflib.get_close_matches(str(value), names, n=n_close, cutoff=0.5)
    if not close:
        lowered = {n.lower(): n for n in names}
        close = [lowered[c] for c in difflib.get_close_matches(str(value).lower(), list(lowered), n=n_close)]
    return close + [n for n in names if n not in close]


#: How many of a long list of choices an error names (the closest).
N_CLOSE = 5


def unknown_choice_error(
    kind: str,
    value: object,
    choices: Iterable[object],
    where: str = "",
    max_listed: int = 25,
    *,
    error: type[Exception] = ValueError,
) -> Exception:
    """An ``error`` (to raise) naming the bad ``value`` and the valid choices, closest first: all of
    them up to ``max_listed``, else only the ``N_CLOSE`` closest (an env id's choices run to hundreds,
    and one line of 1,400 characters helps nobody): a typo fails where it is made, not deep inside
    gymnasium or after training."""
    ranked = ranked_choices(value, choices)
    shown = ranked if len(ranked) <= max_listed else ranked[:N_CLOSE]
    rest = len(ranked) - len(shown)
    more = f", ... and {rest} more (`list` shows them)" if rest else ""
    where = f" {where}" if where else ""
    return error(f"unknown {kind} {value!r}{where}. Valid choices (closest first): {', '.join(shown)}{more}")


def safe_name(name: str, default: str = "_", max_length: int = 100) -> str:
    """``name`` as one safe path component: runs of characters other than letters, digits, ``.``, ``_``
    and ``-`` become ``_``, leading and trailing dots go (never ``.`` or ``..``), at most ``max_length``
    characters; ``default`` if nothing is left."""
    return (_UNSAFE.sub("_", name).strip(".") or default)[:max_length]
