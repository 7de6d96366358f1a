"""Named OOD suites: train on one env spec, evaluate zero-shot on variants that change one factor.

Built-ins cover MiniGrid (room size, number of rooms, distractors, obstacles, memory corridor length),
POPGym episode length (``envs.popgym.SUITES``) and Atari game modes/difficulties/sticky actions (queried
from the ROM lazily, on first use). Users add their own
with ``register_suite`` or a small YAML file (``load_suite_file``)::

    name: my-doorkey          # optional, defaults to the file name
    description: room size    # optional
    train: {id: MiniGrid-DoorKey-5x5-v0, kwargs: {}}
    variants:
      - {name: 8x8, id: MiniGrid-DoorKey-8x8-v0}
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym

from rims_rl.checks import unknown_choice_error
from rims_rl.envs.atari import ATARI_PREFIX, DEFAULT_STICKY, atari_game_info, is_atari_id
from rims_rl.envs.make import as_spec, check_spec_kwargs
from rims_rl.envs.popgym import SUITES as POPGYM_SUITES
from rims_rl.envs.registry import EnvFamily, register_all_envs
from rims_rl.envs.spec import EnvSpec
from rims_rl.envs.untrusted import load_yaml

VariantSource = tuple[EnvSpec, ...] | Callable[[], Iterable[EnvSpec]]
ATARI_SUITE_PREFIX = "atari-modes-"
ATARI_SUITE_GAMES: tuple[str, ...] = ("breakout", "pong", "spaceinvaders", "freeway")
MAX_SUITE_BYTES = 2**20  # a suite file is a few hundred bytes


@dataclass(frozen=True, eq=False)
class Suite:
    """A training spec plus OOD variant specs; ``variants`` may be computed lazily (Atari ROM queries)."""

    name: str
    description: str
    train: EnvSpec
    variant_source: VariantSource

    @functools.cached_property
    def variants(self) -> tuple[EnvSpec, ...]:
        """The variant specs (resolved on first access)."""
        src = self.variant_source
        variants = tuple(src() if callable(src) else src)
        names = [self.train.name] + [v.name for v in variants]
        for name in names:  # scores are keyed by env name: one name, one env
            if names.count(name) > 1:
                raise ValueError(
                    f"suite {self.name} has two envs named {name!r}: give each variant its own name"
                )
        return variants

    @property
    def family(self) -> EnvFamily:
        """Env family of the training spec."""
        return self.train.family

    def specs(self) -> tuple[EnvSpec, ...]:
        """Training spec first, then every variant."""
        return (self.train, *self.variants)

    def variant(self, name: str) -> EnvSpec:
        """The variant called ``name``; ``ValueError`` with the closest names otherwise."""
        for spec in self.variants:
            if spec.name == name:
                return spec
        raise unknown_choice_error("variant", name, [v.name for v in self.variants], where=f"in {self.name}")


_SUITES: dict[str, Suite] = {}


def register_suite(suite: Suite, overwrite: bool = False) -> Suite:
    """Add ``suite`` under ``suite.name``; refuses to replace an existing one unless ``overwrite``."""
    if suite.name in _SUITES and not overwrite:
        raise ValueError(f"Suite {suite.name!r} already registered (pass overwrite=True to replace it)")
    check_spec_kwargs(suite.train)
    if not callable(suite.variant_source):
        for spec in suite.variant_source:
            check_spec_kwargs(spec)
    _SUITES[suite.name] = suite
    return suite


def make_suite(
    name: str,
    train: EnvSpec | str,
    variants: Iterable[EnvSpec] | Callable[[], Iterable[EnvSpec]],
    description: str = "",
) -> Suite:
    """Convenience constructor: ``train`` may be a bare id; a list of variants is frozen to a tuple."""
    source: VariantSource = variants if callable(variants) else tuple(variants)
    train_spec = as_spec(train)
    return Suite(name, description, EnvSpec("train", train_spec.env_id, train_spec.kwargs), source)


def get_suite(name: str) -> Suite:
    """A registered suite by name, or a suite YAML file by path (``*.yml``/``*.yaml``, read each time,
    so a path works in any process); ``atari-modes-<game>`` is built on demand for any ALE game."""
    if name in _SUITES:
        return _SUITES[name]
    if name.endswith((".yml", ".yaml")):
        return load_suite_file(name, register=False)  # a missing file: "suite file ... does not exist"
    if name.startswith(ATARI_SUITE_PREFIX):
        games = _atari_games()
        game = name[len(ATARI_SUITE_PREFIX) :]
        if game in games:
            return register_suite(atari_modes_suite(game))
        raise unknown_choice_error("Atari game", game, games, where=f"in suite name {name!r}")
    raise unknown_choice_error("suite", name, list(_SUITES))


def list_suites() -> dict[str, str]:
    """Suite name -> one-line description of what its variants change."""
    return {name: suite.description for name, suite in _SUITES.items()}


def load_suite_file(path: str | Path, register: bool = True, overwrite: bool = False) -> Suite:
    """Read a YAML suite (``train: {id, kwargs}``, ``variants: [{name, id, kwargs}]``), validating ids."""
    path = Path(path)
    data = load_yaml(path, "suite file", limit=MAX_SUITE_BYTES)  # bounded: no aliases, depth, size
    if not isinstance(data, Mapping) or "train" not in data or "variants" not in data:
        raise ValueError(f"{path}: a suite file needs top-level 'train' and 'variants' keys")
    allowed = ("name", "description", "train", "variants")
    for key in data:
        if key not in allowed:
            raise unknown_choice_error("suite file key", key, allowed, where=f"in {path}")
    if not isinstance(data["variants"], list | None):
        raise ValueError(f"{path}: 'variants' must be a list of env entries, got {data['variants']!r}")
    train = _spec_from_yaml(data["train"], path, default_name="train")
    variants = [_spec_from_yaml(v, path) for v in data["variants"] or []]
    if not variants:
        raise ValueError(f"{path}: 'variants' must list at least one variant")
    suite = Suite(str(data.get("name", path.stem)), str(data.get("description", "")), train, tuple(variants))
    try:
        suite.variants  # noqa: B018 - resolving them checks that every env has its own name
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    for spec in suite.specs():  # every env's kwargs, before any env is built or scored
        try:
            check_spec_kwargs(spec)
        except ValueError as err:
            raise ValueError(f"{path}: env entry {spec.name!r}: {err}") from err
    if register:
        return register_suite(suite, overwrite=overwrite)
    return suite


def _spec_from_yaml(entry: Any, path: Path, default_name: str | None = None) -> EnvSpec:
    if not isinstance(entry, Mapping) or "id" not in entry:
        raise ValueError(
            f"{path}: each env entry needs an 'id' (and optionally 'name', 'kwargs'); got {entry!r}"
        )
    for key in entry:
        if key not in ("name", "id", "kwargs"):
            raise unknown_choice_error("env entry key", key, ("name", "id", "kwargs"), where=f"in {path}")
    name = entry.get("name", default_name or entry["id"])
    kwargs = entry.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{path}: 'kwargs' of env entry {str(name)!r} must be a mapping, got {kwargs!r}")
    try:
        return EnvSpec(str(name), str(entry["id"]), dict(kwargs))  # validates the id
    except ValueError as err:
        raise ValueError(f"{path}: env entry {str(name)!r}: {err}") from err


def _atari_games() -> dict[str, str]:
    """Lower-case game name -> ALE v5 id, e.g. ``spaceinvaders -> ALE/SpaceInvaders-v5``."""
    register_all_envs()
    return {
        i[len(ATARI_PREFIX) : -len("-v5")].lower(): i
        for i in gym.registry
        if is_atari_id(i) and i.endswith("-v5")
    }


def atari_modes_suite(game: str) -> Suite:
    """Default mode/difficulty with sticky actions -> every other mode, every other difficulty, no sticky."""
    games = _atari_games()
    if game not in games:
        raise unknown_choice_error("Atari game", game, games)
    env_id = games[game]

    def variants() -> list[EnvSpec]:
        info = atari_game_info(env_id)  # the first mode/difficulty is the ROM default (checked in tests)
        out = [EnvSpec(f"mode-{m}", env_id, {"mode": m}) for m in info.modes[1:]]
        out += [EnvSpec(f"difficulty-{d}", env_id, {"difficulty": d}) for d in info.difficulties[1:]]
        out.append(EnvSpec("sticky-0.0", env_id, {"repeat_action_probability": 0.0}))
        return out

    return Suite(
        f"{ATARI_SUITE_PREFIX}{game}",
        f"{env_id}: default mode/difficulty, sticky {DEFAULT_STICKY} -> other modes, difficulties, sticky 0",
        EnvSpec("train", env_id, {}),
        variants,
    )


def _register_builtins() -> None:
    mg = "MiniGrid-"
    register_suite(
        make_suite(
            "minigrid-doorkey",
            f"{mg}DoorKey-5x5-v0",
            [EnvSpec(s, f"{mg}DoorKey-{s}-v0") for s in ("6x6", "8x8", "16x16")],
            "DoorKey room size: 5x5 -> 6x6, 8x8, 16x16",
        )
    )
    register_suite(
        make_suite(
            "minigrid-multiroom",
            f"{mg}MultiRoom-N2-S4-v0",
            [EnvSpec("N4-S5", f"{mg}MultiRoom-N4-S5-v0"), EnvSpec("N6", f"{mg}MultiRoom-N6-v0")],
            "number and size of rooms: 2 rooms (size <= 4) -> 4 rooms (size <= 5), 6 rooms",
        )
    )
    register_suite(
        make_suite(
            "minigrid-distractors",
            "RimsRL/Distractors-Train-v0",
            [
                EnvSpec("more", "RimsRL/Distractors-More-v0"),
                EnvSpec("novel", "RimsRL/Distractors-Novel-v0"),
                EnvSpec("more-novel", "RimsRL/Distractors-MoreNovel-v0"),
                EnvSpec("novel-matched", "RimsRL/Distractors-NovelMatched-v0"),
                EnvSpec("more-novel-matched", "RimsRL/Distractors-MoreNovelMatched-v0"),
            ],
            "fetch-the-named-object: 2 seen distractors -> 6, novel colours/types (box), 6 novel; "
            "*-matched: novel ones as alike to the target as training's (envs/distractors.py)",
        )
    )
    register_suite(
        make_suite(
            "minigrid-memory",
            f"{mg}MemoryS7-v0",
            [EnvSpec(s, f"{mg}Memory{s}-v0") for s in ("S9", "S11", "S13", "S17Random")],
            "recall the cue object at the corridor's end: size 7 -> 9, 11, 13, 17 (random), longer recall",
        )
    )
    register_suite(
        make_suite(
            "minigrid-obstacles",
            f"{mg}Dynamic-Obstacles-5x5-v0",
            [EnvSpec(s, f"{mg}Dynamic-Obstacles-{s}-v0") for s in ("6x6", "8x8", "16x16")],
            "arena size with moving obstacles: 5x5 -> 6x6, 8x8, 16x16",
        )
    )
    for game in ATARI_SUITE_GAMES:
        register_suite(atari_modes_suite(game))
    for d in POPGYM_SUITES:
        variants = [EnvSpec(name, d.env_id, kwargs) for name, kwargs in d.variants]
        register_suite(Suite(d.name, d.description, EnvSpec("train", d.env_id, d.train), tuple(variants)))


_register_builtins()
