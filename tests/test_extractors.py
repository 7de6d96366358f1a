"""The MiniGrid feature extractors (library) on real MiniGrid observations (envs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

from rims_rl.agents import sb3_policy_name
from rims_rl.envs import make_vec_env_for
from rims_rl.extractors import (
    MINIGRID_CHANNEL_MAX,
    MiniGridCNN,
    MiniGridDictExtractor,
    minigrid_policy_kwargs,
)


def test_channel_maxima_match_minigrid() -> None:
    """The library writes minigrid's code maxima out instead of importing minigrid: keep them equal."""
    expected = tuple(float(max(d.values())) for d in (OBJECT_TO_IDX, COLOR_TO_IDX, STATE_TO_IDX))
    assert MINIGRID_CHANNEL_MAX == expected


def test_minigrid_cnn_batch_and_scaling() -> None:
    space = spaces.Box(0, 255, (7, 7, 3), np.uint8)
    cnn_last = MiniGridCNN(space, features_dim=32)
    assert not cnn_last.channels_first
    cnn_first = MiniGridCNN(spaces.Box(0, 255, (3, 7, 7), np.uint8), features_dim=32)
    assert cnn_first.channels_first
    batch = th.randint(0, 3, (5, 7, 7, 3)).float()
    assert cnn_last(batch).shape == (5, 32)
    cnn_first.load_state_dict(cnn_last.state_dict())
    assert th.allclose(cnn_first(batch.permute(0, 3, 1, 2)), cnn_last(batch))
    assert th.allclose(cnn_last.scale.flatten(), 1 / th.tensor([10.0, 5.0, 2.0]))
    dict_space = spaces.Dict({"image": space, "mission": spaces.Box(0, 1, (10,), np.float32)})
    ext = MiniGridDictExtractor(dict_space, cnn_features_dim=32)
    out = ext({"image": batch, "mission": th.ones(5, 10)})
    assert out.shape == (5, 42) and ext.features_dim == 42
    assert minigrid_policy_kwargs()["normalize_images"] is False


@pytest.mark.parametrize("env_id", ["MiniGrid-DoorKey-5x5-v0", "RimsRL/Distractors-Train-v0"])
def test_sb3_policies_construct_and_predict(env_id: str) -> None:
    from sb3_contrib import RecurrentPPO
    from stable_baselines3 import PPO

    venv = make_vec_env_for(env_id, n_envs=2, seed=0, vec_cls="dummy")
    kwargs = minigrid_policy_kwargs(venv.observation_space, features_dim=32)
    model = RecurrentPPO(
        sb3_policy_name(venv.observation_space), venv, policy_kwargs=kwargs, n_steps=8, batch_size=16
    )
    obs = venv.reset()
    actions, state = model.predict(obs, episode_start=np.ones(2, dtype=bool))
    assert actions.shape == (2,) and state is not None
    extractor = model.policy.pi_features_extractor
    assert isinstance(extractor, MiniGridDictExtractor if isinstance(obs, dict) else MiniGridCNN)
    ppo = PPO(
        sb3_policy_name(venv.observation_space, recurrent=False),
        venv,
        policy_kwargs=kwargs,
        n_steps=8,
        batch_size=16,
    )
    assert ppo.predict(obs)[0].shape == (2,)
    venv.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"convs": [[4096, 16, 1]] * 4, "slot_size": 4096}, "weights"),  # ~13G weights
        ({"convs": [[4096, 1, 1]], "slot_size": 4096}, "features"),  # 84x84 positions x 4096
    ],
)
def test_spatial_cnn_refuses_sizes_from_an_untrusted_file_before_allocating(
    kwargs: dict, message: str
) -> None:
    from rims_rl.spatial import SpatialCNN

    with pytest.raises(ValueError, match=message):
        SpatialCNN(spaces.Box(0, 255, (3, 84, 84), np.uint8), **kwargs)
