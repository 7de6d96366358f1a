"""experiments/rims_usage.py (issue 41.3): the suit each step asks for is the one the env rewards, the
mutual information is in bits, and a trained checkpoint's summary is consistent with its core."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def usage() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rims_usage", ROOT / "experiments" / "rims_usage.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["rims_usage"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_recall_targets_are_what_the_env_rewards(usage: ModuleType) -> None:
    from rims_rl.envs import get_suite, make_env

    train = get_suite("popgym-repeat-previous").train
    k = int(dict(train.kwargs).get("k", 4))
    env = make_env(train, seed=3, training=False)
    rng = np.random.default_rng(0)
    steps, shown, actions, rewards = [], [], [], []
    for _ in range(2):
        obs, _ = env.reset()
        done, t = False, 0
        while not done:
            action = int(rng.integers(4))
            steps.append(t)
            shown.append(int(np.argmax(obs)))
            actions.append(action)
            obs, reward, term, trunc, _ = env.step(action)
            rewards.append(reward)
            done, t = term or trunc, t + 1
    target = usage.recall_targets(np.array(steps), np.array(shown), k)
    recall = np.array(steps) >= k - 1
    assert (target[~recall] == -1).all() and (target[recall] >= 0).all()
    np.testing.assert_array_equal((np.array(actions) == target)[recall], (np.array(rewards) > 0)[recall])
    assert (np.array(rewards)[~recall] == 0).all()


def test_mutual_information_in_bits(usage: ModuleType) -> None:
    suits = np.tile(np.arange(4), 50)
    assert usage.mutual_information(suits < 2, suits) == pytest.approx(1.0)  # one bit: which half
    assert usage.mutual_information(np.ones(200, dtype=bool), suits) == pytest.approx(0.0)
    alternating = np.tile([True, False], 100)  # independent of the suit (period 4 vs 2: balanced)
    assert usage.mutual_information(alternating, np.repeat(np.arange(4), 50)) == pytest.approx(0.0, abs=1e-9)


def test_a_trained_checkpoints_usage_is_read_per_step(usage: ModuleType, tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = ["train", "--agent", "rims_ppo", "--suite", "popgym-repeat-previous", "--timesteps", "256"]
    argv += ["--n-envs", "2", "--set", "ppo.n_steps=64", "--set", "ppo.batch_size=64", "--run-dir", str(run)]
    subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], cwd=ROOT, check=True, capture_output=True)
    row = usage.summarise(str(run), episodes=2, seed=0)
    assert row.steps == 2 * 51  # a one-deck episode: 51 steps
    # exactly k = 4 of 6 units are active on every step, cue or recall
    assert sum(row.active_cue) == pytest.approx(4.0) and sum(row.active_recall) == pytest.approx(4.0)
    assert 0 < row.usage_entropy <= 1 and 0 <= row.recall_accuracy <= 1
    assert all(0 <= m <= 2 for m in (*row.mi_shown, *row.mi_recalled))
    assert usage.main(["--checkpoint", str(run), "--episodes", "1", "--out", str(tmp_path / "out")]) == 0
    assert "| recall accuracy |" in (tmp_path / "out" / "rims_usage.md").read_text()
