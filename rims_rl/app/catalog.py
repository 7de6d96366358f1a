"""What the CLI can list: agents, suites, env ids and pretrained models, gathered from the lower layers."""

from __future__ import annotations

from typing import NamedTuple

import rims_rl.agents as _agents
from rims_rl.app import checkpoint as _checkpoint
from rims_rl.app.errors import user_input
from rims_rl.cores.registry import CoreLoadError, core_defaults, core_names, get_core
from rims_rl.envs import Suite, get_suite, list_suites
from rims_rl.envs.registry import env_ids_by_family as _env_ids_by_family
from rims_rl.envs.registry import get_family
from rims_rl.envs.untrusted import UntrustedFileError, load_json


def agents() -> tuple[str, ...]:
    """The named agents (``agents.AGENTS``)."""
    return _agents.AGENTS


def cores() -> dict[str, str]:
    """Registered recurrent cores (entry-point group ``rims_rl.cores``) with their default settings; a
    plug-in that cannot be loaded is listed with its one-line error, and the others still are."""
    out = {}
    for name in core_names():
        try:
            cls = get_core(name)
        except CoreLoadError as err:
            out[name] = f"BROKEN: {err}"
            continue
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


def env_ids_by_family(text: str | None = None, family: str | None = None) -> dict[str, list[str]]:
    """Env family name -> the ids it builds, narrowed to ids containing ``text`` (any case) and to one
    ``family`` (``UserError`` with the closest family names for an unknown one)."""
    if family is not None:
        with user_input():
            get_family(family)
    needle = (text or "").lower()
    found = {
        name: [i for i in ids if needle in i.lower()]
        for name, ids in _env_ids_by_family().items()
        if family is None or name == family
    }
    return {name: ids for name, ids in found.items() if ids}


class Pretrained(NamedTuple):
    """A shipped (or ``RIMS_RL_PRETRAINED``) model: what `list pretrained` shows beside its alias."""

    alias: str
    agent: str
    train_env: str
    suite: str | None
    card: str
    """The model card's path (MODEL_CARD.md, else card.json), ``-`` without either."""


def pretrained() -> list[Pretrained]:
    """Every pretrained alias with its agent, training env, suite and card; a folder's ``card.json`` is read
    as untrusted data (a user's folder can stand in for the shipped one), and a missing or unreadable
    card leaves its fields as ``?`` rather than hiding the model."""
    out = []
    for alias in _checkpoint.list_pretrained():
        folder = _checkpoint.PRETRAINED_DIR / alias
        try:
            card = load_json(folder / "card.json", "model card")
        except UntrustedFileError:
            card = {}
        fields = {k: card.get(k) if isinstance(card, dict) else None for k in ("agent", "train_env", "suite")}
        # printable and short, or "?": a hostile card cannot put terminal escapes on the user's screen
        text = {k: v if isinstance(v, str) and _printable(v) else "?" for k, v in fields.items()}
        card_file = next((f for f in (folder / "MODEL_CARD.md", folder / "card.json") if f.is_file()), None)
        out.append(
            Pretrained(
                alias=alias if _printable(alias) else repr(alias),  # a folder name is untrusted too
                agent=text["agent"],
                train_env=text["train_env"],
                suite=text["suite"] if fields["suite"] is not None else None,
                card="-" if card_file is None else _shown(str(card_file)),
            )
        )
    return out


def _printable(value: str) -> bool:
    return 0 < len(value) <= 200 and value.isprintable()


def _shown(text: str) -> str:
    """``text`` if it prints as itself, else its ``repr`` (escapes visible, never interpreted)."""
    return text if text.isprintable() else repr(text)
