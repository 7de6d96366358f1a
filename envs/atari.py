"""Atari (ALE v5) with the standard DQN/PPO preprocessing, reporting raw full-episode game scores.

Wrapper order matters: SB3's ``Monitor`` sits directly on the emulator, *below* episodic-life and
reward clipping, so ``info["episode"]["r"]`` is the unclipped score of a whole game (all lives) even
in training mode, where the agent sees clipped rewards and a terminal on every life loss.
``info["episode"]["l"]`` therefore counts emulator frames (agent steps x frame skip).
"""

from __future__ import annotations

import functools
import inspect
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image
from stable_baselines3.common.atari_wrappers import (
    ClipRewardEnv,
    EpisodicLifeEnv,
    FireResetEnv,
    MaxAndSkipEnv,
    NoopResetEnv,
)
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv

from rims_rl.checks import check_positive, unknown_choice_error
from rims_rl.envs.ale_vec import AleVecEnv
from rims_rl.envs.env_kwargs import Rule, check_rules
from rims_rl.envs.registry import EnvFamily, family_of_id, register_family
from rims_rl.envs.seeding import seeded
from rims_rl.envs.vec import VecClass, build_vec_env

ATARI_PREFIX = "ALE/"
DEFAULT_STICKY = 0.25  # ALE v5 default repeat_action_probability (Machado et al., 2018)
#: Bounds of the Atari kwargs' values (names: ``ATARI_KWARGS``); mode/difficulty are checked against the ROM.
ATARI_RULES: dict[str, Rule] = {
    "frame_stack": ("int", 1, 16, False),
    "mode": ("int", 0, 1024, True),
    "difficulty": ("int", 0, 1024, True),
    "repeat_action_probability": ("number", 0.0, 1.0, False),
    "noop_max": ("int", 0, 1000, False),
    "frame_skip": ("int", 1, 16, False),
    "screen_size": ("int", 8, 256, False),
    "terminal_on_life_loss": ("bool", 0, 0, True),
}


def is_atari_id(env_id: str) -> bool:
    """ALE's image games, ``ALE/<Game>-v5`` (not the ``-ram`` observation variants)."""
    return env_id.startswith(ATARI_PREFIX) and "-ram" not in env_id


def register_atari_envs() -> None:
    """Register ALE's ids with gymnasium (idempotent)."""
    import ale_py

    gym.register_envs(ale_py)


@dataclass(frozen=True)
class AtariGameInfo:
    """What a game offers: its modes, difficulties and minimal action set."""

    modes: tuple[int, ...]
    difficulties: tuple[int, ...]
    action_meanings: tuple[str, ...]


@functools.cache
def atari_game_info(env_id: str) -> AtariGameInfo:
    """Query the ROM once (lazily, cached) for its modes/difficulties; the first of each is the default."""
    _check_atari_id(env_id)
    env = gym.make(env_id)
    try:
        ale = env.unwrapped.ale  # type: ignore[attr-defined]
        return AtariGameInfo(
            modes=tuple(int(m) for m in ale.getAvailableModes()),
            difficulties=tuple(int(d) for d in ale.getAvailableDifficulties()),
            action_meanings=tuple(env.unwrapped.get_action_meanings()),  # type: ignore[attr-defined]
        )
    finally:
        env.close()


def validate_atari_options(env_id: str, mode: int | None = None, difficulty: int | None = None) -> None:
    """Raise ``ValueError`` naming the valid modes/difficulties if ``mode``/``difficulty`` is not one."""
    if mode is None and difficulty is None:
        _check_atari_id(env_id)  # no ROM query needed for the defaults
        return
    info = atari_game_info(env_id)
    if mode is not None and mode not in info.modes:
        raise unknown_choice_error("mode", mode, info.modes, where=f"for {env_id}")
    if difficulty is not None and difficulty not in info.difficulties:
        raise unknown_choice_error("difficulty", difficulty, info.difficulties, where=f"for {env_id}")


class GrayResize(gym.ObservationWrapper):
    """Grayscale ALE frame (210x160) -> ``size x size x 1`` uint8, bilinear with antialiasing (no cv2)."""

    def __init__(self, env: gym.Env, size: int = 84) -> None:
        super().__init__(env)
        self.size = size
        self.observation_space = spaces.Box(0, 255, (size, size, 1), np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        frame = observation if observation.ndim == 2 else observation[..., 0]
        img = Image.fromarray(frame).resize((self.size, self.size), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)[..., None]


class ChannelFrameStack(gym.Wrapper):
    """Stack the last ``k`` frames along the channel (last) axis: ``(H, W, C) -> (H, W, k*C)``."""

    def __init__(self, env: gym.Env, k: int) -> None:
        super().__init__(env)
        self.k = k
        self._frames: deque[np.ndarray] = deque(maxlen=k)
        space = env.observation_space
        assert isinstance(space, spaces.Box)
        self.observation_space = spaces.Box(
            np.repeat(space.low, k, axis=-1), np.repeat(space.high, k, axis=-1), dtype=space.dtype
        )

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
        obs, info = self.env.reset(**kwargs)
        for _ in range(self.k):
            self._frames.append(obs)
        return self._stacked(), info

    def step(self, action: Any) -> tuple[np.ndarray, Any, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._frames.append(obs)
        return self._stacked(), reward, terminated, truncated, info

    def _stacked(self) -> np.ndarray:
        return np.concatenate(list(self._frames), axis=-1)


def make_atari_env(
    env_id: str,
    seed: int | None = None,
    training: bool = True,
    frame_stack: int = 1,
    mode: int | None = None,
    difficulty: int | None = None,
    repeat_action_probability: float = DEFAULT_STICKY,
    noop_max: int = 30,
    frame_skip: int = 4,
    screen_size: int = 84,
    terminal_on_life_loss: bool | None = None,
) -> gym.Env:
    """One preprocessed Atari env; ``training`` adds episodic life + reward clipping (never to the score).

    ``terminal_on_life_loss`` (None: same as ``training``) decides episodic life on its own, as in the
    RL Zoo's ``AtariWrapper(terminal_on_life_loss=...)``; evaluation (``training=False``) never uses it.

    Chain: ALE(frameskip=1, grayscale) -> Monitor (raw score) -> no-op reset -> max-and-skip ->
    [episodic life] -> fire reset (if the game has FIRE) -> 84x84 -> [clip reward] -> frame stack.
    """
    check_positive("frame_stack", frame_stack)
    validate_atari_options(env_id, mode, difficulty)
    env = gym.make(
        env_id,
        obs_type="grayscale",
        frameskip=1,
        repeat_action_probability=repeat_action_probability,
        mode=mode,
        difficulty=difficulty,
    )
    env = Monitor(env)
    if noop_max > 0:
        env = NoopResetEnv(env, noop_max=noop_max)
    env = MaxAndSkipEnv(env, skip=frame_skip)
    if training and (terminal_on_life_loss is None or terminal_on_life_loss):
        env = EpisodicLifeEnv(env)
    if "FIRE" in env.unwrapped.get_action_meanings():  # type: ignore[attr-defined]
        env = FireResetEnv(env)
    env = GrayResize(env, screen_size)
    if training:
        env = ClipRewardEnv(env)
    if frame_stack > 1:
        env = ChannelFrameStack(env, frame_stack)
    return seeded(env, seed)


def make_atari_vec_env(
    env_id: str,
    n_envs: int = 1,
    seed: int | None = None,
    training: bool = True,
    frame_stack: int = 1,
    mode: int | None = None,
    difficulty: int | None = None,
    repeat_action_probability: float = DEFAULT_STICKY,
    vec_cls: VecClass = None,
    noop_max: int = 30,
    frame_skip: int = 4,
    screen_size: int = 84,
    terminal_on_life_loss: bool | None = None,
) -> VecEnv:
    """``n_envs`` copies of ``make_atari_env`` as an SB3 VecEnv (channel-last uint8, ready for CnnPolicy).

    ``vec_cls="ale"`` uses ale-py's native vector env instead (``envs.ale_vec.AleVecEnv``): faster, same
    observations and score contract, but no ``mode``/``difficulty``.
    """
    validate_atari_options(env_id, mode, difficulty)  # fail here, not inside a subprocess
    if vec_cls == "ale":
        if mode is not None or difficulty is not None:
            raise ValueError(
                f"vec_cls='ale' (ale-py's vector env) has no mode/difficulty options, got mode={mode}, "
                f"difficulty={difficulty}; use vec_cls='subproc' or 'dummy' for game variants"
            )
        venv = AleVecEnv(
            env_id,
            n_envs=n_envs,
            training=training,
            frame_stack=frame_stack,
            repeat_action_probability=repeat_action_probability,
            noop_max=noop_max,
            frame_skip=frame_skip,
            screen_size=screen_size,
            terminal_on_life_loss=terminal_on_life_loss,
        )
        if seed is not None:
            venv.seed(seed)
            venv.action_space.seed(seed)
        return venv
    thunk = functools.partial(
        make_atari_env,
        env_id,
        None,
        training=training,
        frame_stack=frame_stack,
        mode=mode,
        difficulty=difficulty,
        repeat_action_probability=repeat_action_probability,
        noop_max=noop_max,
        frame_skip=frame_skip,
        screen_size=screen_size,
        terminal_on_life_loss=terminal_on_life_loss,
    )
    return build_vec_env([thunk] * n_envs, seed, vec_cls)


@functools.cache  # ids are only ever added to gymnasium's registry: a valid id stays valid
def _check_atari_id(env_id: str) -> None:
    if not is_atari_id(env_id):
        register_atari_envs()
        atari_ids = [i for i in gym.registry if is_atari_id(i)]
        raise unknown_choice_error("Atari env id (expected ALE/<Game>-v5)", env_id, atari_ids)
    family_of_id(env_id)


#: Keyword arguments an Atari spec may carry (everything else is a typo, reported with choices).
ATARI_KWARGS: tuple[str, ...] = tuple(
    p for p in inspect.signature(make_atari_env).parameters if p not in ("env_id", "seed", "training")
)


def check_atari_kwargs(env_id: str, kwargs: Mapping[str, Any]) -> None:
    """Names (``ATARI_KWARGS``), bounded values (``ATARI_RULES``) and mode/difficulty against the ROM."""
    for key in kwargs:
        if key not in ATARI_KWARGS:
            raise unknown_choice_error("Atari kwarg", key, ATARI_KWARGS, where=f"for {env_id}")
    check_rules(env_id, kwargs, ATARI_RULES)
    if kwargs.get("mode") is not None or kwargs.get("difficulty") is not None:
        validate_atari_options(env_id, kwargs.get("mode"), kwargs.get("difficulty"))


def _family_env(env_id: str, kwargs: Mapping[str, Any], *, seed: int | None, training: bool) -> gym.Env:
    return make_atari_env(env_id, seed=seed, training=training, **kwargs)


def _family_vec_env(
    env_id: str,
    kwargs: Mapping[str, Any],
    *,
    n_envs: int,
    seed: int | None,
    training: bool,
    vec_cls: VecClass,
) -> VecEnv:
    return make_atari_vec_env(env_id, n_envs=n_envs, seed=seed, training=training, vec_cls=vec_cls, **kwargs)


ATARI = register_family(
    EnvFamily(
        name="atari",
        ids="ALE/<Game>-v5",
        owns=is_atari_id,
        register_envs=register_atari_envs,
        make_env=_family_env,
        make_vec_env=_family_vec_env,
        check_kwargs=check_atari_kwargs,
        preset_family="atari",
        has_success=False,  # raw game scores: no solved/unsolved notion
        vec_env=None,  # emulators are slow: subprocesses for more than one env
        frame_stack=1,
    )
)
