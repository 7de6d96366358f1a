"""A MiniGrid room for the "novel distractors" OOD setting: fetch the named object, ignore the rest.

The mission names a target (colour + type). Picking it up pays ``1 - 0.9 * step / max_steps``;
picking up any distractor pays 0 and ends the episode. Training uses distractors drawn from a
fixed set of (colour, type) pairs; OOD variants draw more of them, or ones with colours/types the
agent never saw (the target set stays the same, so only the distractors are novel).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import gymnasium as gym
from minigrid.core.constants import COLOR_NAMES
from minigrid.core.grid import Grid
from minigrid.core.mission import MissionSpace
from minigrid.core.world_object import Ball, Box, Key, WorldObj
from minigrid.minigrid_env import MiniGridEnv

from rims_rl.checks import unknown_choice_error

ObjectPair = tuple[str, str]  # (colour, type)
OBJECT_TYPES: tuple[str, ...] = ("key", "ball", "box")
_OBJECT_CLASSES: dict[str, type[WorldObj]] = {"key": Key, "ball": Ball, "box": Box}

TRAIN_COLORS: tuple[str, ...] = ("red", "green", "blue")
TRAIN_TYPES: tuple[str, ...] = ("key", "ball")
TRAIN_PAIRS: tuple[ObjectPair, ...] = tuple(itertools.product(TRAIN_COLORS, TRAIN_TYPES))
# Every pair that never occurs in training: a novel colour (purple/yellow/grey) or the novel type (box).
NOVEL_PAIRS: tuple[ObjectPair, ...] = tuple(
    p for p in itertools.product(COLOR_NAMES, OBJECT_TYPES) if p not in TRAIN_PAIRS
)

DISTRACTOR_ENV_IDS: dict[str, dict[str, Any]] = {
    "RimsRL/Distractors-Train-v0": {"n_distractors": 2, "distractor_pairs": TRAIN_PAIRS},
    "RimsRL/Distractors-More-v0": {"n_distractors": 6, "distractor_pairs": TRAIN_PAIRS},
    "RimsRL/Distractors-Novel-v0": {"n_distractors": 2, "distractor_pairs": NOVEL_PAIRS},
    "RimsRL/Distractors-MoreNovel-v0": {"n_distractors": 6, "distractor_pairs": NOVEL_PAIRS},
}


def _check_pairs(pairs: Iterable[ObjectPair], what: str) -> tuple[ObjectPair, ...]:
    checked = tuple((str(c), str(t)) for c, t in pairs)
    if not checked:
        raise ValueError(f"{what} must not be empty")
    for colour, obj_type in checked:
        if colour not in COLOR_NAMES:
            raise unknown_choice_error(f"colour in {what}", colour, COLOR_NAMES)
        if obj_type not in OBJECT_TYPES:
            raise unknown_choice_error(f"object type in {what}", obj_type, OBJECT_TYPES)
    return checked


class DistractorEnv(MiniGridEnv):
    """One room, one target and ``n_distractors`` other objects; the mission says which to pick up."""

    def __init__(
        self,
        size: int = 8,
        n_distractors: int = 2,
        distractor_pairs: Iterable[ObjectPair] = TRAIN_PAIRS,
        target_pairs: Iterable[ObjectPair] = TRAIN_PAIRS,
        max_steps: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.size = size
        self.n_distractors = n_distractors
        self.distractor_pairs = _check_pairs(distractor_pairs, "distractor_pairs")
        self.target_pairs = _check_pairs(target_pairs, "target_pairs")
        if n_distractors + 2 > (size - 2) ** 2:
            raise ValueError(f"{n_distractors} distractors do not fit in a {size}x{size} room")
        self.target_pair: ObjectPair = self.target_pairs[0]
        super().__init__(
            mission_space=MissionSpace(
                mission_func=self._gen_mission, ordered_placeholders=[list(COLOR_NAMES), list(OBJECT_TYPES)]
            ),
            width=size,
            height=size,
            see_through_walls=True,
            max_steps=5 * size**2 if max_steps is None else max_steps,
            **kwargs,
        )

    @staticmethod
    def _gen_mission(color: str, obj_type: str) -> str:
        return f"pick up the {color} {obj_type}"

    def _gen_grid(self, width: int, height: int) -> None:
        self.grid = Grid(width, height)
        self.grid.wall_rect(0, 0, width, height)
        self.target_pair = self.target_pairs[self._rand_int(0, len(self.target_pairs))]
        self.place_obj(_OBJECT_CLASSES[self.target_pair[1]](self.target_pair[0]))
        # Distractors never look exactly like the target, so the mission is always unambiguous.
        candidates = [p for p in self.distractor_pairs if p != self.target_pair]
        for _ in range(self.n_distractors if candidates else 0):
            colour, obj_type = candidates[self._rand_int(0, len(candidates))]
            self.place_obj(_OBJECT_CLASSES[obj_type](colour))
        self.place_agent()
        self.mission = self._gen_mission(*self.target_pair)

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = super().step(action)
        if self.carrying is not None:
            picked = (self.carrying.color, self.carrying.type)
            reward = self._reward() if picked == self.target_pair else 0.0
            terminated = True
            info = {**info, "picked": picked, "success": picked == self.target_pair}
        return obs, float(reward), terminated, truncated, info


def register_distractor_envs() -> None:
    """Register the ``RimsRL/Distractors-*-v0`` ids (idempotent)."""
    for env_id, kwargs in DISTRACTOR_ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=DistractorEnv, kwargs=dict(kwargs))


register_distractor_envs()
