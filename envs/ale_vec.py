"""ale-py's C++ ``AtariVectorEnv`` behind SB3's ``VecEnv`` interface: same observations, same score contract.

ale-py steps its emulators in native threads, which beats SB3's subprocesses on few cores
(``python benchmarks/bench_atari_envs.py``). The adapter makes it interchangeable with
``make_atari_vec_env(..., vec_cls="subproc")``:

- observations channel-last ``[n, 84, 84, frame_stack]`` uint8, stacked here as our gymnasium wrappers
  stack them (a reset fills the stack with its first frame; ale-py would pad with zeros), so a model
  trained on one backend runs on the other;
- ale-py runs with raw rewards and real game-over terminals; in training mode the adapter clips
  rewards to their sign and (with ``terminal_on_life_loss``) ends the agent's episode on a life loss,
  as ``EpisodicLifeEnv`` does, while the game itself goes on;
- ``info["episode"] = {"r": raw score of the whole game, "l": emulator frames, "t": seconds}`` at game
  over, as SB3's ``Monitor`` reports it; ``env_is_wrapped(Monitor)`` answers True so
  ``evaluate_policy`` counts whole games;
- ``info["terminal_observation"]`` and ``info["TimeLimit.truncated"]`` on every done, for bootstrapping.

Differences that remain: no ``mode``/``difficulty`` (ale-py's vector env has no such options; the
OOD suites use the gymnasium backend), and after a life loss ale-py does not press FIRE for the agent.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn

from rims_rl.checks import check_positive


def ale_game_name(env_id: str) -> str:
    """``"ALE/Breakout-v5"`` -> ``"breakout"`` (ale-py's ROM name)."""
    name = env_id.split("/", 1)[-1].rsplit("-v", 1)[0]
    return "".join(("_" + ch.lower()) if ch.isupper() and i else ch.lower() for i, ch in enumerate(name))


class AleVecEnv(VecEnv):
    """``n_envs`` Atari games in ale-py's vector env, presented as an SB3 ``VecEnv``.

    Args mirror ``envs.atari.make_atari_env``; ``training`` turns on reward clipping and (unless
    ``terminal_on_life_loss`` is False) life-loss terminals, never touching the reported score.
    """

    def __init__(
        self,
        env_id: str,
        n_envs: int = 1,
        training: bool = True,
        frame_stack: int = 1,
        repeat_action_probability: float = 0.25,
        noop_max: int = 30,
        frame_skip: int = 4,
        screen_size: int = 84,
        terminal_on_life_loss: bool | None = None,
        num_threads: int = 0,
    ) -> None:
        from ale_py.vector_env import AtariVectorEnv

        check_positive("frame_stack", frame_stack)
        self.env_id = env_id
        self.training = training
        self.life_loss_done = training and terminal_on_life_loss is not False
        self.frame_skip = frame_skip
        self._ale = AtariVectorEnv(
            game=ale_game_name(env_id),
            num_envs=n_envs,
            num_threads=num_threads,
            repeat_action_probability=repeat_action_probability,
            autoreset_mode="SameStep",
            img_height=screen_size,
            img_width=screen_size,
            grayscale=True,
            stack_num=1,  # stacked here, see _stack
            frameskip=frame_skip,
            maxpool=True,
            noop_max=noop_max,
            episodic_life=False,
            life_loss_info=False,
            reward_clipping=False,
            use_fire_reset=True,
        )
        observation_space = spaces.Box(0, 255, (screen_size, screen_size, frame_stack), np.uint8)
        action_space = self._ale.single_action_space
        super().__init__(n_envs, observation_space, action_space)
        self._actions = np.zeros(n_envs, dtype=np.int64)
        self._score = np.zeros(n_envs, dtype=np.float64)
        self._steps = np.zeros(n_envs, dtype=np.int64)
        self._lives = np.zeros(n_envs, dtype=np.int64)
        self._t0 = time.time()
        self._frames = np.zeros((n_envs, screen_size, screen_size, frame_stack), dtype=np.uint8)

    def _pushed(self, frame: np.ndarray) -> np.ndarray:
        """The stacks with ``frame`` ([n, H, W]) appended and the oldest frame dropped (a new array)."""
        return np.concatenate([self._frames[..., 1:], frame[..., None]], axis=-1)

    def _stack(self, frames: np.ndarray, new_game: np.ndarray) -> np.ndarray:
        """Push ale-py's ``[n, 1, H, W]`` frames; envs in ``new_game`` restart their stack."""
        frame = frames[:, 0]
        self._frames = self._pushed(frame)
        if new_game.any():
            self._frames[new_game] = frame[new_game][..., None]
        return self._frames.copy()

    def reset(self) -> np.ndarray:
        # VecEnv.seed(s) asked for env i to get s + i at this reset (SB3 convention), as ale-py does.
        seed = self._seeds[0]
        obs, info = self._ale.reset(seed=None if seed is None else int(seed))
        self._reset_seeds()
        self._score[:] = 0.0
        self._steps[:] = 0
        self._lives = np.asarray(info["lives"], dtype=np.int64).copy()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return self._stack(obs, np.ones(self.num_envs, dtype=bool))

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, terminated, truncated, info = self._ale.step(self._actions)
        rewards = np.asarray(rewards, dtype=np.float64)
        game_over = np.logical_or(terminated, truncated)
        self._score += rewards
        self._steps += 1
        lives = np.asarray(info["lives"], dtype=np.int64)
        life_lost = (lives < self._lives) & (lives > 0) & ~game_over
        self._lives = lives.copy()  # after a game over these are the new game's lives
        dones = game_over | life_lost if self.life_loss_done else game_over
        if game_over.any():  # the finished games' last stacks, before the reset overwrites them
            final_stack = self._pushed(info["final_obs"][:, 0])
        obs = self._stack(obs, game_over)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(dones):
            if game_over[i]:
                infos[i]["terminal_observation"] = final_stack[i]
                infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                infos[i]["episode"] = {
                    "r": float(self._score[i]),
                    "l": int(self._steps[i] * self.frame_skip),
                    "t": round(time.time() - self._t0, 6),
                }
                self._score[i], self._steps[i] = 0.0, 0
            else:  # life lost: the agent's episode ends, the game continues from this frame
                infos[i]["terminal_observation"] = obs[i].copy()
                infos[i]["TimeLimit.truncated"] = False
        if self.training:
            rewards = np.sign(rewards)
        return obs, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self._ale.close()

    def _indices(self, indices: VecEnvIndices) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, int):
            return [indices]
        return list(indices)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        if attr_name == "render_mode":
            value = None
        elif attr_name == "spec":
            value = gym.spec(self.env_id)
        else:
            raise AttributeError(f"AleVecEnv sub-environments do not expose {attr_name!r}")
        return [value for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        raise AttributeError(f"AleVecEnv cannot set {attr_name!r} on ale-py's native environments")

    def env_method(
        self, method_name: str, *args: Any, indices: VecEnvIndices = None, **kwargs: Any
    ) -> list[Any]:
        raise AttributeError(f"AleVecEnv cannot call {method_name!r} on ale-py's native environments")

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        # The adapter reports whole-game scores in info["episode"], which is Monitor's contract.
        return [issubclass(Monitor, wrapper_class) for _ in self._indices(indices)]

    def get_images(self) -> Iterable[np.ndarray]:
        raise AttributeError("AleVecEnv does not render; use the gymnasium backend (vec_cls='dummy')")
