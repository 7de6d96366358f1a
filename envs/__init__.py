"""Environments for rims-rl: env families (Atari, MiniGrid, POPGym, classic control), our distractor room,
and OOD suites.

Start with ``make_vec_env_for(id_or_spec, n_envs, seed, training=...)`` and ``get_suite(name)``.
"""

# The built-in env families, each registering itself on import (envs/registry.py: adding a family).
from rims_rl.envs import atari, classic, minigrid, popgym  # noqa: F401
from rims_rl.envs.atari import (
    AtariGameInfo,
    atari_game_info,
    make_atari_env,
    make_atari_vec_env,
    validate_atari_options,
)
from rims_rl.envs.distractors import NOVEL_MATCHED_PAIRS, NOVEL_PAIRS, TRAIN_PAIRS, DistractorEnv
from rims_rl.envs.make import make_env, make_vec_env_for
from rims_rl.envs.minigrid import make_minigrid_env, make_minigrid_vec_env
from rims_rl.envs.mission import decode_mission, encode_mission, mission_slots, parse_mission
from rims_rl.envs.registry import (
    EnvFamily,
    families,
    family_of_id,
    get_family,
    register_all_envs,
    register_family,
    supported_env_ids,
)
from rims_rl.envs.spec import EnvSpec
from rims_rl.envs.suites import (
    Suite,
    atari_modes_suite,
    get_suite,
    list_suites,
    load_suite_file,
    make_suite,
    register_suite,
)

__all__ = [
    "AtariGameInfo",
    "DistractorEnv",
    "EnvFamily",
    "EnvSpec",
    "NOVEL_MATCHED_PAIRS",
    "NOVEL_PAIRS",
    "Suite",
    "TRAIN_PAIRS",
    "atari_game_info",
    "atari_modes_suite",
    "decode_mission",
    "encode_mission",
    "families",
    "family_of_id",
    "get_family",
    "get_suite",
    "list_suites",
    "load_suite_file",
    "make_atari_env",
    "make_atari_vec_env",
    "make_env",
    "make_minigrid_env",
    "make_minigrid_vec_env",
    "make_suite",
    "make_vec_env_for",
    "mission_slots",
    "parse_mission",
    "register_all_envs",
    "register_family",
    "register_suite",
    "supported_env_ids",
    "validate_atari_options",
]
