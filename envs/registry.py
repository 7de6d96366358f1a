"""Env families: one ``EnvFamily`` record per family, one registry, and the one place env ids are validated.

A family (Atari, MiniGrid, POPGym, classic control) is everything the project knows about a kind of env:
which gymnasium ids it builds, how it builds one env and a vector of them, which kwargs it accepts and
their bounds, the preset block agents use on it (``agents/presets.yml``), whether its episodes have a
success notion, a normalised score if its returns have fixed bounds, its default vectorisation and its
frame stacking. Code above ``envs/`` asks the family object (``EnvSpec.family``); it never compares
family names.

Adding a family: write one module in ``envs/`` that builds its envs and ends with
``register_family(EnvFamily(...))``, then add its name to the single import line of built-in families
at the top of ``envs/__init__.py`` (importing the module is its registration). A family from another
package registers the same way when that package is imported.

``family_of_id`` validates an id against ``gymnasium.registry`` and the families, so a typo fails fast with
the closest valid ids; ``EnvSpec`` calls it once, when the spec is created.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import gymnasium as gym
from stable_baselines3.common.vec_env import VecEnv

from rims_rl.checks import unknown_choice_error
from rims_rl.envs.vec import VecClass


class EnvBuilder(Protocol):
    """Builds one env of a family from an id and kwargs that were already validated."""

    def __call__(
        self, env_id: str, kwargs: Mapping[str, Any], *, seed: int | None, training: bool
    ) -> gym.Env: ...


class VecEnvBuilder(Protocol):
    """Builds ``n_envs`` envs of a family as an SB3 VecEnv (env ``i`` seeded ``seed + i``); kwargs checked."""

    def __call__(
        self,
        env_id: str,
        kwargs: Mapping[str, Any],
        *,
        n_envs: int,
        seed: int | None,
        training: bool,
        vec_cls: VecClass,
    ) -> VecEnv: ...


@dataclass(frozen=True, eq=False)
class EnvFamily:
    """Everything the project needs to know about one family of envs, in one record (see module doc)."""

    name: str
    """Short name, as in messages and ``list envs``: ``atari``, ``minigrid``, ``popgym``, ``classic``."""
    ids: str
    """What its ids look like, for messages: ``ALE/<Game>-v5``."""
    owns: Callable[[str], bool]
    """Whether a registered gymnasium id belongs to this family; families never share an id."""
    register_envs: Callable[[], None]
    """Registers the family's ids with gymnasium (idempotent; called before any id is looked up)."""
    make_env: EnvBuilder
    """One env (``training`` matters only where the family trains on other wrappers than it scores)."""
    make_vec_env: VecEnvBuilder
    """A vector of envs."""
    check_kwargs: Callable[[str, Mapping[str, Any]], None]
    """``ValueError`` naming a kwarg the env does not take or a value outside its bounds (the kwargs may
    come from an untrusted file), before anything is built."""
    preset_family: str
    """The preset block agents use on this family: ``agents.get_preset(agent, preset_family)``."""
    has_success: bool
    """Whether a return above 0 means the task was solved (MiniGrid's goal reward): a success rate."""
    normalised_score: Callable[[float], float] | None = None
    """The mean return on a fixed [0, 1] scale, where the family's returns have fixed bounds (POPGym)."""
    vec_env: Literal["dummy", "subproc"] | None = None
    """Training vectorisation: "dummy" (in-process) for envs that step in microseconds, where
    subprocesses cost more than they save; None: SB3's rule, subprocesses for more than one env."""
    frame_stack: int | None = None
    """The default of the family's ``frame_stack`` kwarg; None where the family does not stack frames
    (so a foreign checkpoint's stacked frames are applied only to families that take them)."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled by name (specs travel to worker processes), so it unpickles to the registered record.
        return (get_family, (self.name,))


_FAMILIES: dict[str, EnvFamily] = {}


def register_family(family: EnvFamily, overwrite: bool = False) -> EnvFamily:
    """Add ``family`` to the registry under its name and return it; refuses a second one of that name."""
    if family.name in _FAMILIES and not overwrite:
        raise ValueError(f"env family {family.name!r} is already registered (pass overwrite=True)")
    _FAMILIES[family.name] = family
    return family


def families() -> tuple[EnvFamily, ...]:
    """The registered families, in registration order."""
    return tuple(_FAMILIES.values())


def get_family(name: str) -> EnvFamily:
    """The family called ``name``; ``ValueError`` with the closest names otherwise."""
    if name not in _FAMILIES:
        raise unknown_choice_error("env family", name, list(_FAMILIES))
    return _FAMILIES[name]


def register_all_envs() -> None:
    """Register every family's ids with gymnasium (idempotent, quiet on re-import)."""
    for family in families():
        family.register_envs()


def family_of_id(env_id: str) -> EnvFamily:
    """The family that builds ``env_id``; ``ValueError`` (closest valid ids first) for an id gymnasium does
    not know or no family builds. The one function that validates env ids: ``EnvSpec`` calls it once."""
    register_all_envs()
    if env_id in gym.registry:
        for family in families():
            if family.owns(env_id):
                return family
    raise _unknown_id(env_id)


_SUPPORTED: tuple[int, int, list[str]] = (-1, -1, [])  # (registry size, families, ids)


def supported_env_ids() -> list[str]:
    """Every registered id some family builds, the families' ids taken in turns (so that a list cut
    short, as in an error message, shows every family).

    Computed once per registry size (ids are only ever added), so listing them many times is cheap.
    """
    global _SUPPORTED
    register_all_envs()
    if _SUPPORTED[:2] != (len(gym.registry), len(_FAMILIES)):
        per_family = [[i for i in gym.registry if family.owns(i)] for family in families()]
        taken_in_turns = [i for row in itertools.zip_longest(*per_family) for i in row if i is not None]
        _SUPPORTED = (len(gym.registry), len(_FAMILIES), taken_in_turns)
    return list(_SUPPORTED[2])


def env_ids_by_family() -> dict[str, list[str]]:
    """Family name -> the registered ids it builds, in gymnasium's order."""
    register_all_envs()
    return {family.name: [i for i in gym.registry if family.owns(i)] for family in families()}


def _unknown_id(env_id: str) -> ValueError:
    known = "gymnasium has it, but no env family here builds it; " if env_id in gym.registry else ""
    kinds = "; ".join(f"{family.name} ({family.ids})" for family in families())
    return unknown_choice_error("env id", env_id, supported_env_ids(), where=f"({known}families: {kinds})")
