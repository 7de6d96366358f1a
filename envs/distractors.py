"""A MiniGrid room for the "novel distractors" OOD setting: fetch the named object, ignore the rest.

The mission names a target (colour + type). Picking it up pays ``1 - 0.9 * step / max_steps``;
picking up any distractor pays 0 and ends the episode. Training uses distractors drawn from a
fixed set of (colour, type) pairs; OOD variants draw more of them, or ones with colours/types the
agent never saw (the target set stays the same, so only the distractors are novel).

Uniform novel distractors are easier to tell from the target than training ones: a training
distractor shares the target's colour 1 time in 5 and its type 2 times in 5, a novel one 1 in 12 and 3
in 12, so a policy that matches only the named colour succeeds more often among novel distractors than
in training. The ``*NovelMatched`` variants (``match_relations``) keep those training rates: each
distractor first draws whether it shares the target's colour, its type or neither, as a uniform draw
from the training pairs would, then a novel pair with that relation. They also leave out grey, the
walls' colour, which every training frame shows. ``shortcut_success`` scores such shortcut policies on
a layout, as the reference lines beside an agent's success.
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

WALL_COLOR = "grey"
"""MiniGrid's walls are grey: a grey object's colour code is in every training frame."""
# Novel pairs without grey: the colours (purple, yellow) and the type (box) no training frame shows.
NOVEL_MATCHED_PAIRS: tuple[ObjectPair, ...] = tuple(p for p in NOVEL_PAIRS if p[0] != WALL_COLOR)

DISTRACTOR_ENV_IDS: dict[str, dict[str, Any]] = {
    "RimsRL/Distractors-Train-v0": {"n_distractors": 2, "distractor_pairs": TRAIN_PAIRS},
    "RimsRL/Distractors-More-v0": {"n_distractors": 6, "distractor_pairs": TRAIN_PAIRS},
    "RimsRL/Distractors-Novel-v0": {"n_distractors": 2, "distractor_pairs": NOVEL_PAIRS},
    "RimsRL/Distractors-MoreNovel-v0": {"n_distractors": 6, "distractor_pairs": NOVEL_PAIRS},
    "RimsRL/Distractors-NovelMatched-v0": {
        "n_distractors": 2,
        "distractor_pairs": NOVEL_MATCHED_PAIRS,
        "match_relations": True,
    },
    "RimsRL/Distractors-MoreNovelMatched-v0": {
        "n_distractors": 6,
        "distractor_pairs": NOVEL_MATCHED_PAIRS,
        "match_relations": True,
    },
}

Relation = str  # "colour" (shares only the target's colour), "type" (only its type) or "neither"
RELATIONS: tuple[Relation, ...] = ("colour", "type", "neither")


def relation(pair: ObjectPair, target: ObjectPair) -> Relation:
    """How a distractor that is not the target resembles it."""
    if pair[0] == target[0]:
        return "colour"
    return "type" if pair[1] == target[1] else "neither"


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
        match_relations: bool = False,
        **kwargs: Any,
    ) -> None:
        self.size = size
        self.n_distractors = n_distractors
        self.match_relations = bool(match_relations)
        """Draw each distractor's relation to the target at the training pairs' rates (module docstring)."""
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
            colour, obj_type = self._draw_distractor(candidates)
            self.place_obj(_OBJECT_CLASSES[obj_type](colour))
        self.place_agent()
        self.mission = self._gen_mission(*self.target_pair)

    def _draw_distractor(self, candidates: list[ObjectPair]) -> ObjectPair:
        if not self.match_relations:
            return candidates[self._rand_int(0, len(candidates))]
        # The relation as a uniform draw from the training pairs gives it (relations with no candidate
        # here are left out), then a candidate with that relation.
        target = self.target_pair
        by_relation = {r: [p for p in candidates if relation(p, target) == r] for r in RELATIONS}
        train = [relation(p, target) for p in TRAIN_PAIRS if p != target]
        weighted = [r for r in train if by_relation[r]] or [r for r in RELATIONS if by_relation[r]]
        pool = by_relation[weighted[self._rand_int(0, len(weighted))]]
        return pool[self._rand_int(0, len(pool))]

    def shortcut_success(self) -> dict[str, float]:
        """The success a policy that knows only part of the mission would have on this layout, picking
        uniformly among the objects that fit what it knows: the named colour (``colour``), the named
        type (``type``), or any object (``random``). The reference lines for an agent's success."""
        objects = [(o.color, o.type) for o in self.grid.grid if o is not None and o.type != "wall"]
        target = self.target_pair

        def chance(fits: list[ObjectPair]) -> float:
            return fits.count(target) / len(fits) if fits else 0.0

        return {
            "colour": chance([p for p in objects if p[0] == target[0]]),
            "type": chance([p for p in objects if p[1] == target[1]]),
            "random": chance(objects),
        }

    def target_reachable(self) -> bool:
        """Whether the agent can walk to a cell next to the target over empty cells (objects block the
        way, and picking up a distractor ends the episode): the layouts where success is possible. A
        lower bound where boxes stand in the way: toggling a box removes it. False once the target is
        no longer on the grid (picked up)."""
        target = next(
            (
                (x, y)
                for x in range(self.width)
                for y in range(self.height)
                if (o := self.grid.get(x, y)) is not None and (o.color, o.type) == self.target_pair
            ),
            None,
        )
        if target is None:
            return False
        start = (int(self.agent_pos[0]), int(self.agent_pos[1]))
        seen, todo = {start}, [start]
        while todo:
            x, y = todo.pop()
            for nx, ny in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
                if (nx, ny) == target:
                    return True
                if (nx, ny) not in seen and self.grid.get(nx, ny) is None:
                    seen.add((nx, ny))
                    todo.append((nx, ny))
        return False

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
