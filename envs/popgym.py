"""POPGym memory tasks (Morad et al., ICLR 2023; the MIT ``popgym`` package) as an env family for MLPs.

POPGym registers only its named levels (``popgym-RepeatFirstEasy-v0`` ...). Those are not valid OOD
variants of each other for every task (RepeatPrevious changes its lag k between levels, CountRecall its
deck type and so its spaces), so we also register the parametrised tasks under level-free ids
(``popgym-RepeatFirst-v0`` ...) whose kwargs (``num_decks``, ``max_episode_length``) only make the episode
longer. Every popgym env is built with float32 one-hot/flattened observations (``FlatObs``) and a
``Monitor``; ``pad_actions=N`` widens a ``Discrete`` action space to ``N`` actions so that variants whose
native action space grows with the episode (CountRecall: the count can reach 26 per deck) keep the
training env's spaces; an action the env does not know is simply a wrong answer.

Returns: every diagnostic task scores an episode in [-1, 1] (each step is worth 1/length, plus or minus),
so ``normalised_score`` maps POPGym's return bounds to [0, 1]; a uniformly random policy sits at
``CHANCE_RETURN`` on the card tasks (-0.5: one suit in four is right).
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import load_env_creator
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv

from rims_rl.checks import check_int, unknown_choice_error
from rims_rl.envs.registry import EnvFamily, family_of_id, register_family
from rims_rl.envs.seeding import seeded
from rims_rl.envs.vec import VecClass, build_vec_env

POPGYM_PREFIX = "popgym-"
#: Our level-free ids -> popgym entry point; kwargs of the class (num_decks, k, ...) make the variants.
TASKS: dict[str, str] = {
    "popgym-RepeatFirst-v0": "popgym.envs.repeat_first:RepeatFirst",
    "popgym-RepeatPrevious-v0": "popgym.envs.repeat_previous:RepeatPrevious",
    "popgym-Autoencode-v0": "popgym.envs.autoencode:Autoencode",
    "popgym-CountRecall-v0": "popgym.envs.count_recall:CountRecall",
    "popgym-StatelessCartPole-v0": "popgym.envs.position_only_cartpole:PositionOnlyCartPole",
    "popgym-NoisyStatelessCartPole-v0": "popgym.envs.noisy_position_only_cartpole:NoisyPositionOnlyCartPole",
}
#: Keyword arguments that popgym classes read from ``**kwargs`` (invisible to their signatures).
KWARGS_FROM_VAR_KEYWORD: dict[str, tuple[str, ...]] = {
    "PositionOnlyCartPole": ("max_episode_length",),
    "NoisyPositionOnlyCartPole": ("max_episode_length", "noise_sigma"),
}
#: Keyword arguments this module consumes itself (not passed to the popgym class).
WRAPPER_KWARGS: tuple[str, ...] = ("pad_actions",)
#: Bounds of an episode's return in POPGym (its rewards are scaled so an episode sums to at most 1 in size).
RETURN_BOUNDS: tuple[float, float] = (-1.0, 1.0)
#: Expected return of a uniformly random policy on the suit-guessing tasks (RepeatFirst/Previous, Autoencode).
CHANCE_RETURN = -0.5


#: CountRecall answers a count of up to 26 per deck (colours): room for the 4-deck variant's answers.
COUNT_RECALL_ACTIONS = 26 * 4 + 1


@dataclass(frozen=True)
class SuiteDef:
    """A length-generalisation suite as data: train kwargs, then (variant name, kwargs) on the same id."""

    name: str
    env_id: str
    train: Mapping[str, Any]
    variants: tuple[tuple[str, Mapping[str, Any]], ...]
    description: str
    budget: int | None = None
    """Training steps at which lstm_ppo learns the training env and ppo does not (the learnability search,
    docs/results/learnability.md); None while no budget this project can afford was found."""


def _decks(base: Mapping[str, Any], decks: tuple[int, ...]) -> tuple[tuple[str, Mapping[str, Any]], ...]:
    return tuple((f"decks-{n}", {**base, "num_decks": n}) for n in decks)


#: The built-in POPGym suites (registered by ``envs.suites``). Every variant keeps the rule and the
#: spaces of its training env and only lengthens the episode; POPGym's named levels are not used as
#: variants because some change the rule (RepeatPrevious's lag k) or the spaces (CountRecall's deck type).
SUITES: tuple[SuiteDef, ...] = (
    SuiteDef(
        "popgym-repeat-first",
        "popgym-RepeatFirst-v0",
        {"num_decks": 1},
        _decks({}, (2, 4, 8)),
        "recall the first card's suit: 1 deck (51 steps) -> 2, 4, 8 decks (103, 207, 415 steps)",
        budget=400_000,
    ),
    SuiteDef(
        "popgym-repeat-previous",
        "popgym-RepeatPrevious-v0",
        {"num_decks": 1, "k": 4},
        _decks({"k": 4}, (4, 16, 32)),
        "repeat the suit of 4 cards ago: 1 deck (51 steps) -> 4, 16, 32 decks (207, 831, 1663 steps)",
        budget=200_000,
    ),
    SuiteDef(
        "popgym-autoencode",
        "popgym-Autoencode-v0",
        {"num_decks": 1},
        _decks({}, (2, 3, 4)),
        "watch a deck, then recite its suits backwards: 1 deck (103 steps) -> 2, 3, 4 decks (207, 311, 415)",
    ),
    SuiteDef(
        "popgym-count-recall",
        "popgym-CountRecall-v0",
        {"num_decks": 1, "pad_actions": COUNT_RECALL_ACTIONS},
        _decks({"pad_actions": COUNT_RECALL_ACTIONS}, (2, 4)),
        "answer how often a colour was dealt: 1 deck (51 steps, counts <= 26) -> 2, 4 decks (103, 207)",
        budget=300_000,
    ),
    SuiteDef(
        "popgym-stateless-cartpole",
        "popgym-StatelessCartPole-v0",
        {"max_episode_length": 200},
        tuple((f"len-{n}", {"max_episode_length": n}) for n in (400, 800, 1600)),
        "cart-pole from positions only (control): 200 steps -> 400, 800, 1600 steps",
        budget=100_000,
    ),
)


def register_popgym_envs() -> None:
    """Register POPGym's own levels (by importing it) and our level-free ids (idempotent)."""
    import popgym  # noqa: F401  (registers popgym-*Easy/Medium/Hard-v0)

    for env_id, entry_point in TASKS.items():
        if env_id not in gym.registry:
            # order_enforce off as popgym registers its own (its envs may be stepped after the last step).
            gym.register(env_id, entry_point=entry_point, order_enforce=False, disable_env_checker=True)


def normalised_score(mean_return: float) -> float:
    """POPGym's episodic return rescaled from its bounds [-1, 1] to [0, 1] (0.25 is chance on card tasks)."""
    low, high = RETURN_BOUNDS
    return (float(mean_return) - low) / (high - low)


def is_popgym_id(env_id: str) -> bool:
    """POPGym's levels and our level-free tasks: ``popgym-...``."""
    return env_id.startswith(POPGYM_PREFIX)


class FlatObs(gym.ObservationWrapper):
    """Observations as a float32 vector: ``Discrete`` -> one-hot, ``MultiDiscrete``/``Tuple`` -> concatenated.

    POPGym's card tasks emit integer suits (or tuples of them); an MLP policy needs them one-hot, not as
    magnitudes, and SB3's recurrent policies expect a flat ``Box``.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        flat = spaces.flatten_space(env.observation_space)
        assert isinstance(flat, spaces.Box)
        self.observation_space = spaces.Box(
            flat.low.astype(np.float32), flat.high.astype(np.float32), dtype=np.float32
        )

    def observation(self, observation: Any) -> np.ndarray:
        return np.asarray(spaces.flatten(self.env.observation_space, observation), dtype=np.float32)


class PadActions(gym.ActionWrapper):
    """A ``Discrete(n)`` action space over an env whose own is ``Discrete(m)``, ``m <= n``; actions pass.

    Lets a variant with a longer episode (more possible answers) share the training env's action space.
    """

    def __init__(self, env: gym.Env, n: int) -> None:
        super().__init__(env)
        space = env.action_space
        if not isinstance(space, spaces.Discrete):
            raise ValueError(f"pad_actions needs a Discrete action space, {env.spec} has {space}")
        if n < int(space.n):
            raise ValueError(f"pad_actions={n} is below the env's own {int(space.n)} actions")
        self.action_space = spaces.Discrete(n)

    def action(self, action: Any) -> int:
        return int(action)


def popgym_kwarg_names(env_id: str) -> tuple[str, ...]:
    """Keyword arguments a popgym id accepts: its class's ``__init__`` parameters, plus ours.

    The most derived popgym ``__init__`` decides (POPGym's named levels take none). The cart-pole tasks
    read theirs from ``**kwargs``, so those are listed by hand (``KWARGS_FROM_VAR_KEYWORD``).
    """
    register_popgym_envs()
    creator = gym.registry[env_id].entry_point
    cls = load_env_creator(creator) if isinstance(creator, str) else creator
    names: list[str] = []
    for klass in inspect.getmro(cls):  # type: ignore[arg-type]
        if "__init__" not in vars(klass) or klass.__module__.split(".")[0] != "popgym":
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            named = p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            if named and p.name != "self" and p.name not in names:
                names.append(p.name)
        names.extend(KWARGS_FROM_VAR_KEYWORD.get(klass.__name__, ()))
        break
    return (*names, *WRAPPER_KWARGS)


#: Bounds of the integer settings (they may come from an untrusted checkpoint or suite file, and each
#: grows an episode or a space): name -> (lowest, highest).
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "num_decks": (1, 64),
    "k": (1, 1024),
    "max_episode_length": (1, 100_000),
    "pad_actions": (1, 4096),
}


def validate_popgym_kwargs(env_id: str, env_kwargs: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` with the closest valid names for a kwarg the popgym env would not accept, or
    naming an integer setting outside its bounds (``INT_BOUNDS``)."""
    allowed = popgym_kwarg_names(env_id)
    for key in env_kwargs:
        if key not in allowed:
            raise unknown_choice_error("keyword argument", key, allowed, where=f"for {env_id}")
    for key, (low, high) in INT_BOUNDS.items():
        value = env_kwargs.get(key)
        if value is not None:
            check_int(f"{key} for {env_id}", value, low, high)
    _check_by_building(env_id, env_kwargs)


#: (id, settings) already built once by ``_check_by_building``: every env of a run is checked, built once.
_BUILT: set[tuple[str, str]] = set()


def _check_by_building(env_id: str, env_kwargs: Mapping[str, Any]) -> None:
    """Build the env, reset it and take one step: popgym checks some settings only there (``k`` against
    the deck size, ``pad_actions`` on a continuous action space), with asserts; they become one
    ``ValueError`` naming the settings, before a run starts rather than inside its first rollout."""
    key = (env_id, repr(sorted(env_kwargs.items())))
    if key in _BUILT:
        return
    try:
        with warnings.catch_warnings():  # a throwaway env: gymnasium's checker notes are the run's to give
            warnings.simplefilter("ignore")
            env = _popgym_env(env_id, 0, **env_kwargs)
            try:
                env.reset(seed=0)
                env.step(env.action_space.sample())
            finally:
                env.close()
    except Exception as err:  # popgym's asserts and its own errors: the settings are what is wrong
        settings = ", ".join(f"{k}={v!r}" for k, v in env_kwargs.items()) or "its defaults"
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise ValueError(f"{env_id} cannot be built with {settings}: {reason}") from err
    _BUILT.add(key)


def make_popgym_env(env_id: str, seed: int | None = None, **env_kwargs: Any) -> gym.Env:
    """One popgym env with flat float32 observations and a ``Monitor`` (``info['episode']``)."""
    _check_popgym_id(env_id)
    validate_popgym_kwargs(env_id, env_kwargs)
    return _popgym_env(env_id, seed, **env_kwargs)


def _popgym_env(env_id: str, seed: int | None, **env_kwargs: Any) -> gym.Env:
    """``make_popgym_env`` for an id and kwargs already checked."""
    kwargs = dict(env_kwargs)
    pad = kwargs.pop("pad_actions", None)
    env: gym.Env = Monitor(gym.make(env_id, **kwargs))
    if pad is not None:
        env = PadActions(env, pad)
    return seeded(FlatObs(env), seed)


def make_popgym_vec_env(
    env_id: str,
    n_envs: int = 1,
    seed: int | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    vec_cls: VecClass = None,
) -> VecEnv:
    """``n_envs`` copies of ``make_popgym_env`` as an SB3 VecEnv; env ``i`` is seeded ``seed + i``."""
    _check_popgym_id(env_id)
    validate_popgym_kwargs(env_id, env_kwargs or {})
    return _popgym_vec_env(env_id, env_kwargs or {}, n_envs=n_envs, seed=seed, training=True, vec_cls=vec_cls)


def _check_popgym_id(env_id: str) -> None:
    if not is_popgym_id(env_id):
        raise ValueError(f"{env_id!r} is not a popgym id (they start with {POPGYM_PREFIX!r})")
    family_of_id(env_id)


def _family_env(env_id: str, kwargs: Mapping[str, Any], *, seed: int | None, training: bool) -> gym.Env:
    return _popgym_env(env_id, seed, **kwargs)


def _popgym_vec_env(
    env_id: str,
    kwargs: Mapping[str, Any],
    *,
    n_envs: int,
    seed: int | None,
    training: bool,
    vec_cls: VecClass,
) -> VecEnv:
    thunk = functools.partial(_popgym_env, env_id, None, **dict(kwargs))
    return build_vec_env([thunk] * n_envs, seed, vec_cls)


POPGYM = register_family(
    EnvFamily(
        name="popgym",
        ids="popgym-*",
        owns=is_popgym_id,
        register_envs=register_popgym_envs,
        make_env=_family_env,
        make_vec_env=_popgym_vec_env,
        check_kwargs=validate_popgym_kwargs,
        preset_family="popgym",
        has_success=False,  # returns in [-1, 1]: a score, not solved/unsolved
        normalised_score=normalised_score,
        vec_env="dummy",  # card games step in microseconds: subprocesses cost more than they save
    )
)
