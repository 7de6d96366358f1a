"""Env families: one record in one registry, resolved once per spec, and every family usable from the CLI.

``family_of_id`` is the one function that validates an env id; the tests count its calls through every
module that holds it, so a second validation anywhere on a path shows up.
"""

from __future__ import annotations

import pickle
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
from conftest import TINY_FLAGS
from sb3_contrib import RecurrentPPO

import train
from rims_rl.envs import (
    EnvFamily,
    EnvSpec,
    families,
    family_of_id,
    get_family,
    make_vec_env_for,
    register_family,
)
from rims_rl.envs import registry as registry_module


@pytest.fixture
def id_checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The ids ``family_of_id`` is asked about, wherever it is called from (every module's binding)."""
    original = registry_module.family_of_id
    calls: list[str] = []

    def counting(env_id: str) -> EnvFamily:
        calls.append(env_id)
        return original(env_id)

    for name, module in list(sys.modules.items()):
        if name.startswith("rims_rl") and getattr(module, "family_of_id", None) is original:
            monkeypatch.setattr(module, "family_of_id", counting)
    yield calls


def test_every_family_is_one_registered_record() -> None:
    assert [f.name for f in families()] == ["atari", "classic", "minigrid", "popgym"]
    for family in families():
        assert get_family(family.name) is family
    expect = {
        "ALE/Breakout-v5": "atari",
        "CartPole-v1": "classic",
        "MiniGrid-DoorKey-5x5-v0": "minigrid",
        "RimsRL/Distractors-Train-v0": "minigrid",
        "popgym-RepeatFirst-v0": "popgym",
    }
    for env_id, name in expect.items():
        assert family_of_id(env_id).name == name
    assert family_of_id("MiniGrid-DoorKey-5x5-v0").has_success
    assert not family_of_id("popgym-RepeatFirst-v0").has_success
    assert family_of_id("popgym-RepeatFirst-v0").normalised_score is not None
    assert family_of_id("ALE/Pong-v5").frame_stack == 1 and family_of_id("CartPole-v1").frame_stack is None
    with pytest.raises(ValueError, match="already registered"):
        register_family(get_family("classic"))


def test_a_spec_resolves_its_family_once_and_keeps_it(id_checks: list[str]) -> None:
    spec = EnvSpec("train", "MiniGrid-DoorKey-5x5-v0")
    assert id_checks == ["MiniGrid-DoorKey-5x5-v0"]
    for _ in range(3):
        assert spec.family.name == "minigrid"
    derived = spec.with_kwargs({"max_steps": 10}, name="short")
    assert derived.family is spec.family and derived == EnvSpec("short", spec.env_id, {"max_steps": 10})
    assert id_checks == ["MiniGrid-DoorKey-5x5-v0"] * 2  # only the comparison's own spec resolved
    # Specs travel to worker processes: the family comes back as the registered record, not a copy.
    assert pickle.loads(pickle.dumps(spec)).family is spec.family
    with pytest.raises(ValueError, match="not an id of the atari env family"):
        EnvSpec("x", "CartPole-v1", family=get_family("atari"))


def test_cli_train_validates_the_env_id_once_before_learning(
    id_checks: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From ``train --agent rims_ppo --env ...`` to the first ``learn``: one validation of the id."""
    at_learn: list[int] = []
    original_learn = RecurrentPPO.learn

    def learn(self: RecurrentPPO, *args: Any, **kwargs: Any) -> RecurrentPPO:
        at_learn.append(len(id_checks))
        return original_learn(self, *args, **kwargs)

    monkeypatch.setattr(RecurrentPPO, "learn", learn)
    argv = ["train", "--agent", "rims_ppo", "--env", "MiniGrid-DoorKey-5x5-v0", "--timesteps", "32"]
    argv += ["--run-dir", str(tmp_path / "run"), "--no-progress", "--eval-episodes", "0", *TINY_FLAGS]
    assert train.main(argv) == 0
    assert at_learn == [1], id_checks


@pytest.mark.parametrize(
    ("env", "agent", "shown"),
    [("CartPole-v1", "lstm_ppo", "n/a"), ("popgym-RepeatFirst-v0", "gru_ppo", "normalised")],
)
def test_classic_and_popgym_envs_train_and_evaluate_from_the_cli(
    env: str, agent: str, shown: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    argv = ["train", "--agent", agent, "--env", env, "--timesteps", "32", "--run-dir", str(run)]
    assert train.main([*argv, "--no-progress", "--eval-episodes", "0", *TINY_FLAGS]) == 0
    config = (run / "config.json").read_text()
    assert f'"family": "{family_of_id(env).preset_family}"' in config  # the family's preset block
    capsys.readouterr()
    assert train.main(["evaluate", "--checkpoint", str(run), "--env", env, "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    assert env in out and shown in out


@pytest.mark.parametrize(
    ("env", "needles"),
    [
        ("CartPol-v1", ("closest first): CartPole-v1,",)),
        ("Pendulum-v1", ("no env family here builds it", "classic (CartPole-v0")),
        ("Minigrid-DoorKey-5x5-v0", ("closest first): MiniGrid-DoorKey-5x5-v0,",)),
    ],
)
def test_an_env_id_no_family_builds_is_refused_with_sensible_choices(
    env: str, needles: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "run"
    assert train.main(["train", "--env", env, "--run-dir", str(target), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1
    for needle in needles:
        assert needle in err, err
    assert not target.exists()


# ------------------------------------------------------------- a new family: one module, one registration
class _Toy(gym.Env):
    """Two steps of a constant observation: the least an env family needs."""

    observation_space = gym.spaces.Box(0.0, 1.0, (2,))
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.low, {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self.t += 1
        return self.observation_space.low, 1.0, self.t >= 2, False, {}


def _register_toy() -> None:
    if "RimsRLTest/Toy-v0" not in gym.registry:
        gym.register("RimsRLTest/Toy-v0", entry_point=_Toy)


def _toy_env(env_id: str, kwargs: Mapping[str, Any], *, seed: int | None, training: bool) -> gym.Env:
    return gym.make(env_id, **kwargs)


def _toy_vec_env(env_id: str, kwargs: Mapping[str, Any], **options: Any) -> Any:
    from rims_rl.envs.vec import build_vec_env

    return build_vec_env([lambda: gym.make(env_id)] * options["n_envs"], options["seed"], "dummy")


def _no_kwargs(env_id: str, kwargs: Mapping[str, Any]) -> None:
    if kwargs:
        raise ValueError(f"{env_id} takes no kwargs")


def test_a_family_registered_from_outside_is_built_with_no_other_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    toy = EnvFamily(
        name="toy",
        ids="RimsRLTest/*",
        owns=lambda env_id: env_id.startswith("RimsRLTest/"),
        register_envs=_register_toy,
        make_env=_toy_env,
        make_vec_env=_toy_vec_env,
        check_kwargs=_no_kwargs,
        preset_family="classic",
        has_success=True,
    )
    monkeypatch.setattr(registry_module, "_FAMILIES", dict(registry_module._FAMILIES))
    register_family(toy)
    spec = EnvSpec("toy", "RimsRLTest/Toy-v0")
    assert spec.family is toy
    env = make_vec_env_for(spec, n_envs=2, seed=0)
    assert env.num_envs == 2 and env.reset().shape == (2, 2)
    env.close()
    with pytest.raises(ValueError, match="takes no kwargs"):
        make_vec_env_for(spec, size=3)


def test_no_code_above_envs_compares_family_names_or_id_prefixes() -> None:
    """The application and CLI ask the family object; a name or prefix test there is a new if/else chain."""
    root = Path(__file__).resolve().parents[1] / "rims_rl"
    pattern = re.compile(
        r"""family\s*(==|!=|\bin\b|\bnot in\b)\s*[("']|startswith\(\s*["'](ALE/|MiniGrid-|popgym-)"""
    )
    found = [
        f"{path.relative_to(root)}:{n}: {line.strip()}"
        for path in sorted(root.rglob("*.py"))
        if "envs" not in path.relative_to(root).parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []
