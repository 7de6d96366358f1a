"""Fast checks of envs/: suites build and step, preprocessing shapes, raw-score bookkeeping, missions,
the distractor room, the MiniGrid CNN with (Recurrent)PPO, and helpful errors. No learning."""

from __future__ import annotations

import re

import numpy as np
import pytest
from gymnasium import spaces
from minigrid.core.actions import Actions
from minigrid.core.world_object import Ball, Box, Key

from rims_rl.envs import (
    NOVEL_MATCHED_PAIRS,
    NOVEL_PAIRS,
    TRAIN_PAIRS,
    EnvSpec,
    atari_game_info,
    decode_mission,
    encode_mission,
    get_suite,
    list_suites,
    load_suite_file,
    make_atari_env,
    make_env,
    make_minigrid_env,
    make_vec_env_for,
    parse_mission,
)
from rims_rl.envs.suites import ATARI_SUITE_GAMES

MINIGRID_SUITES = ["minigrid-doorkey", "minigrid-multiroom", "minigrid-distractors", "minigrid-obstacles"]
ATARI_SUITES = [f"atari-modes-{g}" for g in ATARI_SUITE_GAMES]
OBJECT_CLASSES = {"key": Key, "ball": Ball, "box": Box}


def first_choice(message: str) -> str:
    """The first valid choice listed in one of our ValueError messages."""
    return message.split("(closest first): ", 1)[1].split(",")[0].strip()


def image_of(obs: object) -> np.ndarray:
    return obs["image"] if isinstance(obs, dict) else obs  # type: ignore[index,return-value]


# ---------------------------------------------------------------- suites construct, reset, step


def test_builtin_suites_listed_with_descriptions() -> None:
    suites = list_suites()
    for name in MINIGRID_SUITES + ATARI_SUITES:
        assert name in suites and len(suites[name]) > 10


@pytest.mark.parametrize("suite_name", MINIGRID_SUITES)
def test_minigrid_suite_every_spec_steps(suite_name: str) -> None:
    suite = get_suite(suite_name)
    assert suite.family.name == "minigrid" and len(suite.variants) >= 2
    for spec in suite.specs():
        env = make_env(spec, seed=0)
        obs, _ = env.reset()
        assert env.observation_space.contains(obs), spec
        assert image_of(obs).shape == (7, 7, 3) and image_of(obs).dtype == np.uint8
        if suite_name == "minigrid-distractors":
            assert isinstance(obs, dict) and obs["mission"].shape == (10,)
        else:
            assert isinstance(obs, np.ndarray)
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs) and np.isfinite(reward)
        env.close()


@pytest.mark.parametrize("suite_name", ATARI_SUITES)
def test_atari_suite_variants_step(suite_name: str) -> None:
    suite = get_suite(suite_name)
    info = atari_game_info(suite.train.env_id)
    # Every non-default mode and difficulty, plus sticky actions off.
    assert len(suite.variants) == (len(info.modes) - 1) + (len(info.difficulties) - 1) + 1
    assert suite.variants[-1].kwargs == {"repeat_action_probability": 0.0}
    subset = [suite.train, suite.variants[0], suite.variants[-1]]
    subset += [v for v in suite.variants if "difficulty" in v.kwargs][:1]
    for spec in subset:
        env = make_env(spec, seed=0, training=False)
        obs, _ = env.reset()
        assert obs.shape == (84, 84, 1) and obs.dtype == np.uint8
        obs, *_ = env.step(0)
        assert obs.shape == (84, 84, 1)
        inner = env.unwrapped  # the requested settings really reached the emulator
        assert inner._game_mode == spec.kwargs.get("mode")  # type: ignore[attr-defined]
        assert inner._game_difficulty == spec.kwargs.get("difficulty")  # type: ignore[attr-defined]
        assert inner.ale.getFloat("repeat_action_probability") == pytest.approx(  # type: ignore[attr-defined]
            spec.kwargs.get("repeat_action_probability", 0.25)
        )
        env.close()


def test_atari_default_mode_is_first_available() -> None:
    """Suites treat modes[0]/difficulties[0] as the ROM default; check the emulator agrees."""
    import gymnasium as gym

    env_id = "ALE/Breakout-v5"
    info = atari_game_info(env_id)
    rams = []
    for kwargs in ({}, {"mode": info.modes[0], "difficulty": info.difficulties[0]}, {"mode": info.modes[1]}):
        env = gym.make(env_id, repeat_action_probability=0.0, **kwargs)
        env.reset(seed=0)
        rams.append(env.unwrapped.ale.getRAM().copy())  # type: ignore[attr-defined]
        env.close()
    assert np.array_equal(rams[0], rams[1])
    assert not np.array_equal(rams[0], rams[2])


# ---------------------------------------------------------------- Atari preprocessing and raw scores


@pytest.mark.parametrize("frame_stack", [1, 4])
def test_atari_obs_shape_and_vec_env(frame_stack: int) -> None:
    venv = make_vec_env_for("ALE/Breakout-v5", n_envs=2, seed=0, frame_stack=frame_stack, vec_cls="dummy")
    obs = venv.reset()
    assert obs.shape == (2, 84, 84, frame_stack) and obs.dtype == np.uint8
    assert venv.observation_space.shape == (84, 84, frame_stack)
    obs, *_ = venv.step(np.array([1, 1]))
    assert obs.shape == (2, 84, 84, frame_stack)
    venv.close()


def _run_episode_tracking_raw(training: bool) -> tuple[dict, list[float], float, int]:
    """Play random actions until the Monitor reports a full game; record every raw emulator reward."""
    env = make_atari_env("ALE/SpaceInvaders-v5", seed=1, training=training)
    base = env.unwrapped
    raw: list[float] = []
    original_step = base.step

    def recording_step(action: int):  # noqa: ANN202
        out = original_step(action)
        raw.append(float(out[1]))
        return out

    base.step = recording_step  # type: ignore[method-assign]
    env.reset()
    agent_sum, life_terminals = 0.0, 0
    for _ in range(20_000):
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        agent_sum += float(reward)
        if "episode" in info:
            env.close()
            return info["episode"], raw, agent_sum, life_terminals
        if terminated or truncated:
            life_terminals += 1
            env.reset()
    raise AssertionError("no full episode within 20k steps")


def test_atari_training_reports_raw_full_game_score() -> None:
    episode, raw, agent_sum, life_terminals = _run_episode_tracking_raw(training=True)
    assert max(raw) > 1  # a Space Invaders alien is worth 5-30 points
    assert episode["r"] == pytest.approx(sum(raw))  # unclipped, all lives
    assert agent_sum < episode["r"]  # the agent saw clipped rewards...
    assert life_terminals >= 1  # ...and terminals on life loss, but the score spans the whole game


def test_atari_eval_mode_does_not_clip() -> None:
    episode, raw, agent_sum, life_terminals = _run_episode_tracking_raw(training=False)
    assert life_terminals == 0
    assert agent_sum == pytest.approx(sum(raw)) == pytest.approx(episode["r"])


# ---------------------------------------------------------------- ale-py's vector env backend


def _ale_pair(game: str, frame_stack: int = 1) -> tuple:
    """The same game twice through the ale backend, training and evaluation mode, deterministic emulators."""
    kwargs = dict(n_envs=2, seed=3, frame_stack=frame_stack, repeat_action_probability=0.0, vec_cls="ale")
    train = make_vec_env_for(f"ALE/{game}-v5", training=True, **kwargs)
    evaluation = make_vec_env_for(f"ALE/{game}-v5", training=False, **kwargs)
    return train, evaluation


def test_ale_backend_matches_gymnasium_backend_observations() -> None:
    kwargs = dict(n_envs=1, seed=0, frame_stack=4, repeat_action_probability=0.0, noop_max=0)
    ale = make_vec_env_for("ALE/Breakout-v5", vec_cls="ale", **kwargs)
    gym_backend = make_vec_env_for("ALE/Breakout-v5", vec_cls="dummy", **kwargs)
    assert ale.observation_space == gym_backend.observation_space
    assert ale.action_space == gym_backend.action_space
    a, b = ale.reset(), gym_backend.reset()
    assert a.shape == b.shape == (1, 84, 84, 4) and a.dtype == b.dtype == np.uint8
    # Same frame up to resize interpolation (grey levels differ by ~1.3 on average).
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 5
    assert a.mean() > 10  # and not an empty frame
    for _ in range(6):  # the stacks fill the same way (a reset repeats its first frame)
        a, *_ = ale.step(np.array([1]))
        b, *_ = gym_backend.step(np.array([1]))
        for channel in range(4):
            assert np.abs(a[..., channel].astype(int) - b[..., channel].astype(int)).mean() < 5
    ale.close()
    gym_backend.close()


def test_ale_backend_scores_raw_games_and_clips_only_the_training_reward() -> None:
    train, evaluation = _ale_pair("SpaceInvaders")
    train.reset()
    evaluation.reset()
    rng = np.random.default_rng(0)
    raw_sum, clipped, raw_values = np.zeros(2), [], set()
    train_scores, eval_scores, life_dones = [], [], 0
    for _ in range(20_000):
        actions = rng.integers(0, train.action_space.n, size=2)
        _, r_train, d_train, i_train = train.step(actions)
        _, r_eval, d_eval, i_eval = evaluation.step(actions)
        raw_values |= set(r_eval.tolist())
        clipped += r_train.tolist()
        np.testing.assert_array_equal(r_train, np.sign(r_eval))
        raw_sum += r_eval
        for k in range(2):
            if "episode" in i_eval[k]:
                assert d_eval[k] and d_train[k] and "episode" in i_train[k]
                assert i_eval[k]["episode"]["r"] == pytest.approx(raw_sum[k])
                train_scores.append(i_train[k]["episode"]["r"])
                eval_scores.append(i_eval[k]["episode"]["r"])
                raw_sum[k] = 0.0
            else:
                assert not d_eval[k]  # evaluation: done only at game over
                life_dones += int(d_train[k])
            if d_train[k]:
                assert i_train[k]["terminal_observation"].shape == (84, 84, 1)
        if len(eval_scores) >= 2:
            break
    assert len(eval_scores) >= 2, "no two full games within 20k steps"
    assert train_scores == eval_scores  # the training score is the raw score of the whole game
    assert max(raw_values) > 1 and set(clipped) <= {-1.0, 0.0, 1.0}
    assert life_dones >= 2  # training ends the agent's episode on every life lost
    train.close()
    evaluation.close()


def test_ale_backend_refuses_modes_and_non_atari_envs() -> None:
    with pytest.raises(ValueError, match="no mode/difficulty"):
        make_vec_env_for("ALE/Breakout-v5", n_envs=1, mode=0, vec_cls="ale")
    with pytest.raises(ValueError, match="ale-py's Atari vector env"):
        make_vec_env_for("MiniGrid-DoorKey-5x5-v0", n_envs=1, vec_cls="ale")


def test_ale_backend_from_a_run_config() -> None:
    from rims_rl.app.config import resolve_config
    from rims_rl.app.runs import make_train_env
    from rims_rl.envs.ale_vec import AleVecEnv

    config = resolve_config("rims_ppo", "ALE/Pong-v5", n_envs=2, overrides={"vec_env": "ale"})
    venv = make_train_env(config, seed=0)
    assert isinstance(venv, AleVecEnv) and venv.reset().shape == (2, 84, 84, 4)
    venv.close()
    with pytest.raises(ValueError, match="ale-py's Atari vector env"):
        make_train_env(resolve_config("rims_ppo", "MiniGrid-Empty-5x5-v0", overrides={"vec_env": "ale"}), 0)


# ---------------------------------------------------------------- missions


def test_mission_encoding_distinguishes_targets() -> None:
    a = encode_mission("pick up the red key")
    b = encode_mission("pick up the blue key")
    c = encode_mission("pick up the red ball")
    assert a.dtype == np.float32 and a.shape == (10,) and a.sum() == 2
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    assert decode_mission(a) == [("red", "key")]
    assert parse_mission("put the grey box near the purple ball") == [("grey", "box"), ("purple", "ball")]
    assert decode_mission(encode_mission("put the grey box near the purple ball", 2)) == [
        ("grey", "box"),
        ("purple", "ball"),
    ]
    with pytest.raises(ValueError, match="names no object"):
        encode_mission("get to the goal")


@pytest.mark.parametrize(
    "env_id", ["MiniGrid-Fetch-5x5-N2-v0", "MiniGrid-GoToObject-6x6-N2-v0", "RimsRL/Distractors-Train-v0"]
)
def test_mission_obs_matches_env_target(env_id: str) -> None:
    env = make_minigrid_env(env_id, seed=3)
    seen = set()
    for _ in range(5):
        obs, _ = env.reset()
        inner = env.unwrapped
        colour = getattr(inner, "targetColor", None) or getattr(inner, "target_color", None)
        obj_type = getattr(inner, "targetType", None) or getattr(inner, "target_type", None)
        if hasattr(inner, "target_pair"):
            colour, obj_type = inner.target_pair
        assert decode_mission(obs["mission"]) == [(colour, obj_type)], inner.mission
        assert colour in inner.mission and obj_type in inner.mission
        seen.add((colour, obj_type))
    assert len(seen) > 1  # different episodes, different targets, different vectors


def test_constant_mission_env_gives_plain_image() -> None:
    env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0")
    assert isinstance(env.observation_space, spaces.Box) and env.observation_space.shape == (7, 7, 3)


# ---------------------------------------------------------------- our distractor room


def _put_in_front(env, pair: tuple[str, str]) -> None:  # noqa: ANN001
    inner = env.unwrapped
    fx, fy = inner.front_pos
    inner.grid.set(fx, fy, OBJECT_CLASSES[pair[1]](pair[0]))


def _reset_with_free_front(env, seed: int) -> None:  # noqa: ANN001
    for s in range(seed, seed + 50):
        env.reset(seed=s)
        inner = env.unwrapped
        fx, fy = inner.front_pos
        if 0 < fx < inner.width - 1 and 0 < fy < inner.height - 1:
            return
    raise AssertionError("agent always faces a wall")


def test_distractor_pickup_rewards() -> None:
    env = make_minigrid_env("RimsRL/Distractors-Train-v0")
    _reset_with_free_front(env, 0)
    target = env.unwrapped.target_pair
    _put_in_front(env, target)
    _, reward, terminated, _, info = env.step(Actions.pickup)
    assert terminated and reward > 0.5 and info["success"]

    _reset_with_free_front(env, 100)
    target = env.unwrapped.target_pair
    distractor = next(p for p in TRAIN_PAIRS if p != target)
    _put_in_front(env, distractor)
    _, reward, terminated, _, info = env.step(Actions.pickup)
    assert terminated and reward == 0.0 and not info["success"]


@pytest.mark.parametrize(
    ("env_id", "allowed", "n"),
    [
        ("RimsRL/Distractors-Train-v0", TRAIN_PAIRS, 2),
        ("RimsRL/Distractors-MoreNovel-v0", NOVEL_PAIRS, 6),
        ("RimsRL/Distractors-NovelMatched-v0", NOVEL_MATCHED_PAIRS, 2),
        ("RimsRL/Distractors-MoreNovelMatched-v0", NOVEL_MATCHED_PAIRS, 6),
    ],
)
def test_distractors_drawn_from_allowed_set(env_id: str, allowed: tuple, n: int) -> None:
    env = make_minigrid_env(env_id, seed=0)
    for _ in range(3):
        env.reset()
        inner = env.unwrapped
        objs = [(o.color, o.type) for o in inner.grid.grid if o is not None and o.type != "wall"]
        assert len(objs) == n + 1 and inner.target_pair in objs and inner.target_pair in TRAIN_PAIRS
        objs.remove(inner.target_pair)
        assert all(p in allowed for p in objs), objs
    assert not set(TRAIN_PAIRS) & set(NOVEL_PAIRS)
    assert set(NOVEL_MATCHED_PAIRS) < set(NOVEL_PAIRS) and all(c != "grey" for c, _ in NOVEL_MATCHED_PAIRS)


def test_shortcut_success_counts_the_objects_that_fit_what_a_policy_knows() -> None:
    env = make_minigrid_env("RimsRL/Distractors-Train-v0")
    env.reset(seed=0)
    inner = env.unwrapped
    for x in range(1, inner.width - 1):  # a layout by hand: the red key, a red ball and a green key
        for y in range(1, inner.height - 1):
            inner.grid.set(x, y, None)
    inner.target_pair = ("red", "key")
    for x, pair in zip((1, 2, 3), [("red", "key"), ("red", "ball"), ("green", "key")], strict=True):
        inner.grid.set(x, 1, OBJECT_CLASSES[pair[1]](pair[0]))
    assert inner.shortcut_success() == pytest.approx({"colour": 1 / 2, "type": 1 / 2, "random": 1 / 3})
    inner.agent_pos = (1, 3)
    assert inner.target_reachable()  # (1, 2) is free, next to the key at (1, 1)
    inner.grid.set(1, 2, OBJECT_CLASSES["ball"]("blue"))  # the corner's only free neighbour taken
    assert not inner.target_reachable()
    inner.grid.set(1, 1, None)  # picked up: nothing left to reach
    assert not inner.target_reachable()


def test_matched_novel_distractors_are_as_alike_to_the_target_as_training_ones() -> None:
    """Uniform novel distractors rarely share the target's colour, so a colour-only policy does better
    among them than in training; the matched variants keep training's rates (2,000 layouts each)."""
    from distractor_baselines import baselines  # experiments/ is on pytest's pythonpath (pyproject)

    layouts = 2000
    train = baselines("RimsRL/Distractors-Train-v0", layouts)
    assert train["colour"] == pytest.approx(0.81, abs=0.03) and train["random"] == pytest.approx(1 / 3)
    assert baselines("RimsRL/Distractors-Novel-v0", layouts)["colour"] > train["colour"] + 0.07
    for env_id, reference in [
        ("RimsRL/Distractors-NovelMatched-v0", train),
        ("RimsRL/Distractors-MoreNovelMatched-v0", baselines("RimsRL/Distractors-More-v0", layouts)),
    ]:
        rates = baselines(env_id, layouts)
        for key in ("colour", "type", "random"):
            assert rates[key] == pytest.approx(reference[key], abs=0.03), (env_id, key, rates, reference)


def test_minigrid_monitor_reports_episodes_and_seeding() -> None:
    a, b = make_env("MiniGrid-DoorKey-5x5-v0", seed=7), make_env("MiniGrid-DoorKey-5x5-v0", seed=7)
    assert np.array_equal(a.reset()[0], b.reset()[0])
    for _ in range(1000):
        *_, terminated, truncated, info = a.step(a.action_space.sample())
        if terminated or truncated:
            assert set(info["episode"]) >= {"r", "l", "t"}
            return
    raise AssertionError("DoorKey-5x5 episode never ended")


def test_subproc_vec_env_for_minigrid() -> None:
    venv = make_vec_env_for("RimsRL/Distractors-Novel-v0", n_envs=2, seed=0)
    assert type(venv).__name__ == "SubprocVecEnv"
    obs = venv.reset()
    assert obs["image"].shape == (2, 7, 7, 3) and obs["mission"].shape == (2, 10)
    venv.close()


# ---------------------------------------------------------------- user suites


def test_load_suite_file(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "my-suite.yaml"
    path.write_text(
        "description: DoorKey size\n"
        "train: {id: MiniGrid-DoorKey-5x5-v0}\n"
        "variants:\n"
        "  - {name: big, id: MiniGrid-DoorKey-8x8-v0, kwargs: {max_steps: 50}}\n"
        "  - {name: pong-mode-1, id: ALE/Pong-v5, kwargs: {mode: 1}}\n"
    )
    suite = load_suite_file(path)
    assert suite.name == "my-suite" and list_suites()["my-suite"] == "DoorKey size"
    big = get_suite("my-suite").variant("big")
    assert big == EnvSpec("big", "MiniGrid-DoorKey-8x8-v0", {"max_steps": 50})
    assert make_env(big).unwrapped.max_steps == 50
    with pytest.raises(ValueError, match="already registered"):
        load_suite_file(path)

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "train: {id: MiniGrid-DoorKey-5x5-v0}\nvariants:\n  - {name: x, id: MiniGrid-DorKey-8x8-v0}\n"
    )
    with pytest.raises(ValueError) as err:
        load_suite_file(bad)
    assert first_choice(str(err.value)) == "MiniGrid-DoorKey-8x8-v0"

    for twice in ("big", "train"):  # scores are keyed by env name, so each env needs its own
        twin = tmp_path / f"twin-{twice}.yaml"
        twin.write_text(
            "train: {id: MiniGrid-DoorKey-5x5-v0}\nvariants:\n  - {name: big, id: MiniGrid-DoorKey-8x8-v0}\n"
            f"  - {{name: {twice}, id: MiniGrid-DoorKey-6x6-v0}}\n"
        )
        with pytest.raises(
            ValueError, match=f"twin-{twice}.yaml: suite twin-{twice} has two envs named '{twice}'"
        ):
            load_suite_file(twin, register=False)


# ---------------------------------------------------------------- errors name the closest valid choice


@pytest.mark.parametrize(
    ("call", "bad", "closest"),
    [
        (lambda: make_env("ALE/Breakot-v5"), "ALE/Breakot-v5", "ALE/Breakout-v5"),
        (
            lambda: make_vec_env_for("MiniGrid-DorKey-5x5-v0"),
            "MiniGrid-DorKey-5x5-v0",
            "MiniGrid-DoorKey-5x5-v0",
        ),
        (lambda: make_env("Pendulum-v1"), "no env family here builds it", None),  # continuous actions
        (lambda: make_env("CartPol-v1"), "CartPol-v1", "CartPole-v1"),
        (lambda: get_suite("minigrid-doorky"), "minigrid-doorky", "minigrid-doorkey"),
        (lambda: get_suite("atari-modes-brekout"), "brekout", "breakout"),
        (lambda: make_env("ALE/Breakout-v5", mode=5), "5", "4"),
        (lambda: make_vec_env_for("ALE/Pong-v5", difficulty=7), "7", "3"),
        (lambda: make_env("ALE/Pong-v5", frame_stak=4), "frame_stak", "frame_stack"),
        (
            lambda: make_vec_env_for("RimsRL/Distractors-Train-v0", n_distractor=3),
            "n_distractor",
            "n_distractors",
        ),
        (lambda: make_env("RimsRL/Distractors-Train-v0", distractor_pairs=[("pink", "key")]), "pink", None),
        (lambda: get_suite("minigrid-doorkey").variant("8x9"), "8x9", "8x8"),
        (lambda: make_vec_env_for("MiniGrid-DoorKey-5x5-v0", vec_cls="subprocess"), "subprocess", "subproc"),
    ],
)
def test_errors_name_bad_value_and_closest_choice(call, bad: str, closest: str | None) -> None:  # noqa: ANN001
    with pytest.raises(ValueError) as err:
        call()
    message = str(err.value)
    assert re.search(re.escape(bad), message), message
    if closest is not None:
        assert first_choice(message) == closest, message


_SUBPROC_SCRIPT = """
import os, signal, sys, time
sys.path.insert(0, sys.argv[1])
import gymnasium as gym

def make():
    return gym.make("CartPole-v1")

if __name__ == "__main__":
    from rims_rl.envs.vec import build_vec_env
    env = build_vec_env([make] * 2, 0, "subproc")  # still referenced when the interpreter exits
    env.reset()
    if sys.argv[2] == "signals":
        signal.signal(signal.SIGINT, lambda *a: None)  # the trainer's own handlers
        signal.signal(signal.SIGTERM, lambda *a: None)
        os.killpg(os.getpgrp(), signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
        os.killpg(os.getpgrp(), signal.SIGTERM)  # and pre-emption often signals every process
        time.sleep(0.5)
        for _ in range(20):
            env.step_async([0, 0]); env.step_wait()
    print("done: " + sys.argv[2])  # and exit without env.close()
"""


@pytest.mark.parametrize("mode", ["signals", "unclosed"])
def test_subprocess_env_workers_survive_group_signals_and_never_hang_the_exit(tmp_path, mode: str) -> None:
    """Only the trainer decides to stop on Ctrl-C/SIGTERM (and saves first): an env worker killed by the
    group's signal would break the pipe mid-step instead. Since workers ignore SIGTERM, multiprocessing's
    exit-time terminate() cannot end them: an env left open is closed at exit instead of hanging it."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "subproc_env.py"
    script.write_text(_SUBPROC_SCRIPT)
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, str(script), str(root), mode],
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )
    assert out.returncode == 0 and f"done: {mode}" in out.stdout, out.stderr[-2000:]
