"""The POPGym env family and the memory suites: ids, kwargs, spaces, stepping, normalised score, presets."""

from __future__ import annotations

import numpy as np
import pytest

from rims_rl.agents import AGENTS, families_of, get_preset
from rims_rl.app.evaluation import EvalResult, format_table
from rims_rl.envs import EnvSpec, family_of_id, get_suite, make_env, make_vec_env_for
from rims_rl.envs.make import as_spec, check_spec_kwargs
from rims_rl.envs.popgym import (
    COUNT_RECALL_ACTIONS,
    SUITES,
    TASKS,
    normalised_score,
)

POPGYM_SUITES = [d.name for d in SUITES]


def _episode(env, policy=None) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """Play one episode with random (or given) actions; return (return, length)."""
    env.reset()
    total, n, done = 0.0, 0, False
    while not done:
        action = env.action_space.sample() if policy is None else policy()
        _, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        n += 1
        done = terminated or truncated
    return total, n


def test_level_free_ids_are_registered_in_the_popgym_family() -> None:
    for env_id in (*TASKS, "popgym-RepeatFirstEasy-v0"):
        assert family_of_id(env_id).name == "popgym"
        assert EnvSpec(env_id, env_id).family.preset_family == "popgym"


def test_suites_train_on_one_deck_and_only_lengthen_the_episode() -> None:
    expected = {
        "popgym-repeat-first": ("popgym-RepeatFirst-v0", [2, 4, 8]),
        "popgym-repeat-previous": ("popgym-RepeatPrevious-v0", [4, 16, 32]),
        "popgym-autoencode": ("popgym-Autoencode-v0", [2, 3, 4]),
        "popgym-count-recall": ("popgym-CountRecall-v0", [2, 4]),
    }
    for name, (env_id, decks) in expected.items():
        suite = get_suite(name)
        assert suite.family.name == "popgym"
        assert suite.train.env_id == env_id and suite.train.kwargs["num_decks"] == 1
        assert [v.env_id for v in suite.variants] == [env_id] * len(decks)
        assert [v.kwargs["num_decks"] for v in suite.variants] == decks
        rest = {k: v for k, v in suite.train.kwargs.items() if k != "num_decks"}
        for variant in suite.variants:  # the rule (k, deck type, padding) is the training env's
            assert {k: v for k, v in variant.kwargs.items() if k != "num_decks"} == rest
    assert get_suite("popgym-repeat-previous").train.kwargs["k"] == 4
    cartpole = get_suite("popgym-stateless-cartpole")
    assert cartpole.train.kwargs == {"max_episode_length": 200}
    assert [v.kwargs["max_episode_length"] for v in cartpole.variants] == [400, 800, 1600]


def test_minigrid_memory_suite_lengthens_the_corridor() -> None:
    suite = get_suite("minigrid-memory")
    assert suite.train.env_id == "MiniGrid-MemoryS7-v0"
    assert [v.env_id for v in suite.variants] == [
        f"MiniGrid-Memory{s}-v0" for s in ("S9", "S11", "S13", "S17Random")
    ]


@pytest.mark.parametrize("name", POPGYM_SUITES)
def test_variants_keep_the_training_envs_spaces_and_run_longer(name: str) -> None:
    suite = get_suite(name)
    train = make_env(suite.train, seed=0)
    _, train_len = _episode(train)
    for spec in suite.variants:
        env = make_env(spec, seed=0)
        assert env.observation_space == train.observation_space, spec.name
        assert env.action_space == train.action_space, spec.name
        if "num_decks" in spec.kwargs:  # card tasks: the length is fixed by the deck
            assert _episode(env)[1] > train_len, spec.name
        env.close()
    train.close()


def test_count_recall_is_padded_to_the_longest_variants_answers() -> None:
    env = make_env(get_suite("popgym-count-recall").variants[-1], seed=0)
    assert env.action_space.n == COUNT_RECALL_ACTIONS == 26 * 4 + 1
    # A count above one deck's 26 is a real answer on 4 decks: the padded actions reach the env.
    ret, length = _episode(env, policy=lambda: COUNT_RECALL_ACTIONS - 1)
    assert length == 207 and ret < 0


def test_observations_are_flat_float_one_hots() -> None:
    env = make_env("popgym-Autoencode-v0", seed=3)
    obs, _ = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (6,)  # mode one-hot (2) + suit one-hot (4)
    assert obs[:2].sum() == 1 and obs[2:].sum() == 1


def test_popgym_vec_env_steps_and_reports_bounded_returns() -> None:
    vec = make_vec_env_for(get_suite("popgym-repeat-first").train, n_envs=2, seed=0)
    assert vec.num_envs == 2
    vec.reset()
    returns = []
    for _ in range(60):
        _, _, _, infos = vec.step(np.array([vec.action_space.sample() for _ in range(2)]))
        returns += [info["episode"]["r"] for info in infos if "episode" in info]
    vec.close()
    assert len(returns) >= 2  # 51-step episodes in 60 steps
    assert all(-1.0 <= r <= 1.0 for r in returns)


def test_same_seed_same_cards() -> None:
    a, b = make_env("popgym-RepeatFirst-v0", seed=7), make_env("popgym-RepeatFirst-v0", seed=7)
    assert np.array_equal(a.reset()[0], b.reset()[0])
    for _ in range(10):
        assert np.array_equal(a.step(0)[0], b.step(0)[0])


@pytest.mark.parametrize(
    ("env_id", "kwargs", "message"),
    [
        ("popgym-RepeatFirst-v0", {"num_deck": 2}, "num_decks"),
        ("popgym-CountRecall-v0", {"pad_actions": 0}, "must be an integer in \\[1, 4096\\]"),
        ("popgym-RepeatFirstEasy-v0", {"num_decks": 2}, "pad_actions"),  # a named level takes none
        ("popgym-StatelessCartPole-v0", {"noise_sigma": 0.1}, "max_episode_length"),
    ],
)
def test_bad_kwargs_fail_before_building(env_id: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_spec_kwargs(EnvSpec(env_id, env_id, kwargs))


def test_pad_actions_below_the_envs_own_is_refused() -> None:
    with pytest.raises(ValueError, match="below"):
        make_env("popgym-CountRecall-v0", pad_actions=5)


def test_normalised_score_maps_popgyms_return_bounds_to_unit_interval() -> None:
    assert normalised_score(-1.0) == 0.0
    assert normalised_score(1.0) == 1.0
    assert normalised_score(-0.5) == pytest.approx(0.25)  # chance on the suit-guessing tasks
    score = family_of_id("popgym-RepeatFirst-v0").normalised_score
    assert score is not None and score(0.0) == pytest.approx(0.5)
    assert family_of_id("MiniGrid-MemoryS7-v0").normalised_score is None


def test_eval_table_shows_the_normalised_score_only_where_an_env_has_one() -> None:
    def result(env_id: str, score: float | None) -> EvalResult:
        fields = (env_id, env_id, 1, 0.5, 0.0, 0.5, 0.5, None, 51.0, True, 0, "m.zip", 1)
        return EvalResult(*fields, normalised_score=score)  # type: ignore[arg-type]

    table = format_table([result("popgym-RepeatFirst-v0", 0.75)])
    assert "normalised" in table and "0.750" in table
    assert "normalised" not in format_table([result("MiniGrid-MemoryS7-v0", None)])


def test_every_agent_with_flat_input_has_a_popgym_preset() -> None:
    for agent in AGENTS:
        families = families_of(agent)
        if "classic" in families:
            assert "popgym" in families, agent  # every flat-input agent runs the memory suites
        if "popgym" not in families:
            assert set(families) <= {"atari", "minigrid"}, agent  # image-only agents
            continue
        preset = get_preset(agent, "popgym")
        assert preset.policy in ("MlpRimsPolicy", "MlpPolicy")
        assert "POPGym" in preset.source


@pytest.mark.parametrize(
    "kwargs", [{"num_decks": 10**9}, {"num_decks": 0}, {"pad_actions": True}, {"max_episode_length": 10**7}]
)
def test_settings_that_would_grow_an_episode_without_bound_are_refused(kwargs: dict) -> None:
    env_id = "popgym-StatelessCartPole-v0" if "max_episode_length" in kwargs else "popgym-RepeatFirst-v0"
    with pytest.raises(ValueError, match="must be an integer in"):
        check_spec_kwargs(as_spec(env_id, **kwargs))


def test_tune_trains_on_the_suites_training_env_kwargs(tmp_path) -> None:
    """A suite whose training env has kwargs (POPGym's deck count and lag) is tuned on exactly that env."""
    import json

    from rims_rl.app.tune import run_tune

    out = tmp_path / "tune"
    grid = {"ppo.learning_rate": [1e-3]}
    run_tune("popgym-repeat-previous", grid, agents=["ppo"], seeds=1, timesteps=64, out=out, eval_episodes=1)
    (config_file,) = out.glob("ppo/config0/runs/*/config.json")
    config = json.loads(config_file.read_text())
    assert config["model"]["env"] == {"num_decks": 1, "k": 4}
    assert json.loads((out / "tune.json").read_text())["agents"]["ppo"]["chosen"] == {
        "ppo.learning_rate": 1e-3
    }


def test_tune_evaluates_on_the_training_env_it_trained_on(tmp_path) -> None:
    """A tuning run is scored on its training env with the same kwargs: CountRecall's padded answers (a
    default env has fewer actions, and the checkpoint was refused) and its deck count."""
    import json

    from rims_rl.app.tune import run_tune

    out = tmp_path / "tune"
    suite = get_suite("popgym-count-recall")
    run_tune(
        "popgym-count-recall",
        {"ppo.learning_rate": [1e-3]},
        agents=["ppo"],
        seeds=1,
        timesteps=64,
        out=out,
        eval_episodes=1,
    )
    (eval_file,) = out.glob("ppo/config0/runs/*/compare_eval.json")
    (result,) = json.loads(eval_file.read_text())["raw"]
    assert result["kwargs"] == dict(suite.train.kwargs)
    assert json.loads((out / "tune.json").read_text())["agents"]["ppo"]["chosen"] == {
        "ppo.learning_rate": 1e-3
    }


@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [("popgym-RepeatPrevious-v0", {"k": 1024}), ("popgym-StatelessCartPole-v0", {"pad_actions": 4})],
)
def test_settings_popgym_itself_refuses_are_one_line_before_a_run(env_id: str, kwargs: dict) -> None:
    """Issue 39.4: settings inside the bounds that popgym refuses only when built or stepped (k against
    the deck size, padded actions on a continuous space) are found by building the env once."""
    with pytest.raises(ValueError, match=f"{env_id} cannot be built with") as err:
        make_env(env_id, **kwargs)
    assert "\n" not in str(err.value)
