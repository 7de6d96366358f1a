"""Other people's SB3 / sb3-contrib checkpoints on our suites, loaded without unpickling anything."""

from __future__ import annotations

import base64
import json
import zipfile
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
from conftest import TINY_ENV
from sb3_contrib import RecurrentPPO
from stable_baselines3 import A2C, PPO

ROOT = Path(__file__).resolve().parents[1]

import train  # noqa: E402
from rims_rl.app.evaluation import evaluate_checkpoint  # noqa: E402
from rims_rl.app.foreign import load_foreign, read_foreign  # noqa: E402
from rims_rl.envs import make_vec_env_for  # noqa: E402


class _Planted:
    """Unpickling this writes a marker file: the test fails if any loader unpickles it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (Path(self.marker), "unpickled"))


def _stock_checkpoint(tmp_path: Path, algo: type = RecurrentPPO) -> Path:
    env = make_vec_env_for(TINY_ENV, n_envs=1, seed=0, vec_cls="dummy")
    policy = "MlpLstmPolicy" if algo is RecurrentPPO else "MlpPolicy"
    kwargs = {"lstm_hidden_size": 16} if algo is RecurrentPPO else {"net_arch": [16]}
    extra = {} if algo is A2C else {"batch_size": 8}
    model = algo(policy, env, n_steps=8, policy_kwargs=kwargs, seed=0, **extra)
    model.learn(16)
    path = tmp_path / f"stock-{algo.__name__}.zip"
    model.save(path)
    env.close()
    return path


def _plant(path: Path, marker: Path) -> Path:
    """Replace every pickled blob in ``data`` with one that writes ``marker`` when unpickled."""
    payload = base64.b64encode(cloudpickle.dumps(_Planted(str(marker)))).decode()
    planted = path.with_name("planted.zip")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(planted, "w") as zf:
        for name in src.namelist():
            data = src.read(name)
            if name == "data":
                meta = json.loads(data)
                for value in meta.values():
                    if isinstance(value, dict) and ":serialized:" in value:
                        value[":serialized:"] = payload
                data = json.dumps(meta).encode()
            zf.writestr(name, data)
    return planted


@pytest.mark.parametrize("algo", [RecurrentPPO, PPO, A2C])
def test_a_stock_checkpoint_evaluates_on_a_suite_without_unpickling(tmp_path: Path, algo: type) -> None:
    marker = tmp_path / "payload-ran"
    planted = _plant(_stock_checkpoint(tmp_path, algo), marker)
    results = evaluate_checkpoint(planted, "minigrid-doorkey", n_episodes=1)
    assert [r.env for r in results] == ["train", "6x6", "8x8", "16x16"]
    assert all(r.episodes == 1 and r.num_timesteps == 16 for r in results)
    assert not marker.exists(), "a pickled blob from the file was executed"


def test_the_safe_rebuild_predicts_what_sb3s_own_loader_predicts(tmp_path: Path) -> None:
    path = _stock_checkpoint(tmp_path)
    env = make_vec_env_for(TINY_ENV, n_envs=1, seed=0, vec_cls="dummy")
    trusted = RecurrentPPO.load(path, env=env)  # SB3's loader (unpickles): the reference
    rebuilt = load_foreign(path, read_foreign(path), env)
    obs = env.reset()
    s1 = s2 = None
    starts = np.ones(1, dtype=bool)
    for _ in range(5):
        a1, s1 = trusted.predict(obs, state=s1, episode_start=starts, deterministic=True)
        a2, s2 = rebuilt.predict(obs, state=s2, episode_start=starts, deterministic=True)
        assert np.array_equal(a1, a2) and np.allclose(s1[0], s2[0])
        obs, _, dones, _ = env.step(a1)
        starts = dones
    env.close()


def test_atari_frame_stack_is_read_from_the_saved_shape(tmp_path: Path) -> None:
    """An agent trained on SB3's Atari wrappers with VecFrameStack(4): (4, 84, 84) after the transpose."""
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    env = VecFrameStack(make_atari_env("ALE/Breakout-v5", n_envs=1, seed=0), n_stack=4)
    model = RecurrentPPO(
        "CnnLstmPolicy", env, n_steps=8, batch_size=8, policy_kwargs={"lstm_hidden_size": 16}
    )
    path = tmp_path / "atari.zip"
    model.save(path)
    env.close()
    foreign = read_foreign(path)
    assert foreign.observation_shape == (4, 84, 84) and foreign.frame_stack() == 4
    # Sampled actions: an untrained greedy policy may never press FIRE, and Breakout would not end.
    results = evaluate_checkpoint(path, "ALE/Breakout-v5", n_episodes=1, deterministic=False)
    assert results[0].kwargs["frame_stack"] == 4 and results[0].episodes == 1


def test_the_cli_evaluates_a_foreign_checkpoint_and_refuses_what_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _stock_checkpoint(tmp_path)
    argv = [
        "evaluate",
        "--checkpoint",
        str(path),
        "--env",
        TINY_ENV,
        "--episodes",
        "1",
        "--out",
        str(tmp_path),
    ]
    assert train.main(argv) == 0, capsys.readouterr().err
    code = train.main(["evaluate", "--checkpoint", str(path), "--episodes", "1"])
    assert code == 2 and "give --env or --suite" in capsys.readouterr().err
    env = make_vec_env_for(TINY_ENV, n_envs=1, seed=0, vec_cls="dummy")
    from torch import nn

    for activation, readable in ((nn.ReLU, True), (nn.Hardswish, False)):  # a known class, an unknown one
        custom = RecurrentPPO(
            "MlpLstmPolicy", env, n_steps=8, batch_size=8, policy_kwargs={"activation_fn": activation}
        )
        custom.save(tmp_path / "custom.zip")
        code = train.main(
            ["evaluate", "--checkpoint", str(tmp_path / "custom.zip"), "--env", TINY_ENV, "--episodes", "1"]
        )
        err = capsys.readouterr().err
        assert (code, "--trust-checkpoint" in err) == ((0, False) if readable else (2, True)), err
