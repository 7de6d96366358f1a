"""Encode MiniGrid mission strings as one-hot (colour, type) vectors the policy can read.

For tasks like Fetch, GoToObject, PutNear or our distractor room, the image alone does not say
which object is wanted; the mission does. We parse it with MiniGrid's own vocabulary
(``COLOR_NAMES``, ``OBJECT_TO_IDX``) into ``n_slots`` objects (PutNear names two) and one-hot each:
``[colour (6) | type (4: door, key, ball, box)]`` per slot, float32.
"""

from __future__ import annotations

import re
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from minigrid.core.constants import COLOR_NAMES, OBJECT_TO_IDX

MISSION_COLORS: tuple[str, ...] = tuple(COLOR_NAMES)
# Object types a mission can refer to, in MiniGrid's own index order.
MISSION_TYPES: tuple[str, ...] = tuple(t for t in OBJECT_TO_IDX if t in {"door", "key", "ball", "box"})
SLOT_DIM = len(MISSION_COLORS) + len(MISSION_TYPES)

# Substring of the env id -> how many objects its mission names. Others: the mission is constant.
MISSION_SLOTS: dict[str, int] = {
    "MiniGrid-Fetch-": 1,
    "MiniGrid-GoToObject-": 1,
    "MiniGrid-GoToDoor-": 1,
    "MiniGrid-PutNear-": 2,
    "RimsRL/Distractors-": 1,
}

ObjectRef = tuple[str | None, str | None]


def mission_slots(env_id: str) -> int:
    """How many (colour, type) objects the mission of ``env_id`` names; 0 when it carries no information."""
    return next((n for key, n in MISSION_SLOTS.items() if key in env_id), 0)


def parse_mission(mission: str) -> list[ObjectRef]:
    """Objects named in ``mission``, in order, as (colour, type); a colour opens a new object."""
    objects: list[ObjectRef] = []
    for word in re.findall(r"[a-z]+", mission.lower()):
        if word in MISSION_COLORS:
            objects.append((word, None))
        elif word in MISSION_TYPES:
            if objects and objects[-1][1] is None:
                objects[-1] = (objects[-1][0], word)
            else:
                objects.append((None, word))
    return objects


def encode_mission(mission: str, n_slots: int = 1) -> np.ndarray:
    """One-hot ``[colour | type]`` for each of the first ``n_slots`` named objects (zeros if absent)."""
    objects = parse_mission(mission)
    if not objects:
        raise ValueError(
            f"Mission {mission!r} names no object; expected a colour in {MISSION_COLORS} "
            f"and/or a type in {MISSION_TYPES}"
        )
    vec = np.zeros(n_slots * SLOT_DIM, dtype=np.float32)
    for slot, (colour, obj_type) in enumerate(objects[:n_slots]):
        base = slot * SLOT_DIM
        if colour is not None:
            vec[base + MISSION_COLORS.index(colour)] = 1.0
        if obj_type is not None:
            vec[base + len(MISSION_COLORS) + MISSION_TYPES.index(obj_type)] = 1.0
    return vec


def decode_mission(vec: np.ndarray) -> list[ObjectRef]:
    """Inverse of ``encode_mission`` (for checks and debugging)."""
    out: list[ObjectRef] = []
    for slot in np.asarray(vec).reshape(-1, SLOT_DIM):
        colours, types = slot[: len(MISSION_COLORS)], slot[len(MISSION_COLORS) :]
        out.append(
            (
                MISSION_COLORS[int(colours.argmax())] if colours.any() else None,
                MISSION_TYPES[int(types.argmax())] if types.any() else None,
            )
        )
    return out


class MissionObsWrapper(gym.ObservationWrapper):
    """MiniGrid dict obs -> ``{"image": uint8 (7,7,3), "mission": float32 one-hot (n_slots*10,)}``."""

    def __init__(self, env: gym.Env, n_slots: int = 1) -> None:
        super().__init__(env)
        self.n_slots = n_slots
        assert isinstance(env.observation_space, spaces.Dict)
        self.observation_space = spaces.Dict(
            {
                "image": env.observation_space["image"],
                "mission": spaces.Box(0.0, 1.0, (n_slots * SLOT_DIM,), np.float32),
            }
        )

    def observation(self, observation: dict[str, Any]) -> dict[str, np.ndarray]:
        return {
            "image": observation["image"],
            "mission": encode_mission(observation["mission"], self.n_slots),
        }
