"""RL Zoo users name our policies in a zoo hyperparameter file; importing rims_rl makes the names resolve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.env_util import make_vec_env

import rims_rl
from rims_rl import cli
from rims_rl.cores.rims import RIMs

ROOT = Path(__file__).resolve().parents[1]


def test_importing_rims_rl_registers_the_policy_names() -> None:
    env = make_vec_env("CartPole-v1", n_envs=1)
    kwargs = {"lstm_hidden_size": 12}
    model = RecurrentPPO("MlpRimsPolicy", env, n_steps=8, batch_size=8, policy_kwargs=kwargs)
    assert type(model.policy) is rims_rl.MlpRimsPolicy and isinstance(model.policy.lstm_actor, RIMs)


def test_a_tiny_zoo_training_with_the_shipped_hyperparameter_file(tmp_path: Path) -> None:
    pytest.importorskip("rl_zoo3")
    cmd = [sys.executable, "-m", "rl_zoo3.train", "--algo", "ppo_lstm", "--env", "CartPole-v1", "-n", "512"]
    cmd += ["--gym-packages", "rims_rl", "--conf-file", str(ROOT / "agents" / "zoo" / "ppo_lstm.yml")]
    cmd += ["-f", str(tmp_path), "--seed", "0", "--eval-freq", "-1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (saved,) = tmp_path.glob("ppo_lstm/CartPole-v1_*/CartPole-v1.zip")
    with zipfile.ZipFile(saved) as zf:
        policy_class = json.loads(zf.read("data"))["policy_class"]
    assert policy_class["__module__"] == "rims_rl.policies"  # the zoo built our MlpRimsPolicy
    assert policy_class["__doc__"] == rims_rl.MlpRimsPolicy.__doc__
    # ... and our CLI evaluates the zoo's file safely (no --trust-checkpoint: nothing is unpickled)
    argv = ["evaluate", "--checkpoint", str(saved), "--env", "CartPole-v1", "--episodes", "2"]
    assert cli.main([*argv, "--out", str(tmp_path / "eval")]) == 0
    (row,) = json.loads((tmp_path / "eval" / "eval-CartPole-v1.json").read_text())
    assert row["episodes"] == 2 and row["num_timesteps"] >= 512
