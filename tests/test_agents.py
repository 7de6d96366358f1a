"""Agent presets, overrides, validation and model building (the contract the CLI builds on)."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv

from rims_rl.agents import (
    AGENTS,
    FAMILIES,
    MEMORY_BUDGET_VAR,
    apply_overrides,
    build_model,
    check_measured_size,
    count_parameters,
    families_of,
    get_preset,
    memory_budget,
    parse_overrides,
    resolve_schedule,
)
from rims_rl.agents.config import AgentPreset
from rims_rl.cores import get_core
from rims_rl.cores.rims import RIMs
from rims_rl.envs.memory import CueMemoryEnv
from rims_rl.policies import CnnRimsPolicy, MlpRimsPolicy, MultiInputRimsPolicy

TINY = {
    "ppo.n_steps": 16,
    "ppo.batch_size": 32,
    "ppo.n_epochs": 1,
    "policy_kwargs.lstm_hidden_size": 24,
    "policy_kwargs.rims_kwargs.unit_size": 4,
}


def tiny(agent: str, family: str = "classic") -> AgentPreset:
    preset = get_preset(agent, family)
    over = {k: v for k, v in TINY.items() if agent != "ppo" or k.startswith("ppo.")}
    if agent not in ("rims_ppo", "rims_spatial_ppo"):
        over.pop("policy_kwargs.rims_kwargs.unit_size", None)
    else:
        over["policy_kwargs.lstm_hidden_size"] = None  # the RIMs size follows n_units * unit_size
    return apply_overrides(preset, over)


def test_agents_and_families() -> None:
    assert AGENTS == (
        "rims_ppo",
        "lstm_ppo",
        "ppo",
        "lstm_eq_ppo",
        "rims_spatial_ppo",
        "tlb_ppo",
        "assembly_ppo",
        "gru_ppo",
    )
    assert families_of("lstm_eq_ppo") == ("minigrid", "popgym")
    assert FAMILIES == ("atari", "minigrid", "classic", "popgym")
    assert families_of("rims_spatial_ppo") == ("atari", "minigrid") and families_of("rims_ppo") == FAMILIES
    with pytest.raises(ValueError, match="no preset for classic envs .* presets for: atari, minigrid"):
        get_preset("rims_spatial_ppo", "classic")


@pytest.mark.parametrize("family", ["atari", "minigrid", "classic", "popgym"])
def test_presets_are_complete_json_and_equal_sized(family: str) -> None:
    presets = {agent: get_preset(agent, family).to_dict() for agent in AGENTS if family in families_of(agent)}
    for agent, preset in presets.items():
        assert json.loads(json.dumps(preset)) == preset
        assert AgentPreset.from_dict(preset) == get_preset(agent, family)
        assert {"algo", "policy", "n_envs", "policy_kwargs", "ppo", "source"} <= set(preset)
        assert len(preset["source"]) > 40
        assert preset["algo"] == ("PPO" if agent == "ppo" else "RecurrentPPO")
        for key in (
            "learning_rate",
            "n_steps",
            "batch_size",
            "n_epochs",
            "gamma",
            "gae_lambda",
            "clip_range",
        ):
            assert key in preset["ppo"]
    # Same PPO settings for all agents; rims/lstm differ only in the core.
    assert presets["rims_ppo"]["ppo"] == presets["lstm_ppo"]["ppo"] == presets["ppo"]["ppo"]
    rims_pk, lstm_pk = presets["rims_ppo"]["policy_kwargs"], presets["lstm_ppo"]["policy_kwargs"]
    rk = rims_pk["rims_kwargs"]
    assert rims_pk["lstm_hidden_size"] == lstm_pk["lstm_hidden_size"] == rk["n_units"] * rk["unit_size"]
    assert {k: v for k, v in rims_pk.items() if k not in ("core", "rims_kwargs")} == {
        k: v for k, v in lstm_pk.items() if k != "core"
    }
    # RIMs with spatial input: the same PPO block, hidden size, RIMs settings and critic layout.
    if "rims_spatial_ppo" in presets:
        spatial = presets["rims_spatial_ppo"]
        assert spatial["ppo"] == presets["rims_ppo"]["ppo"]
        assert spatial["n_envs"] == presets["rims_ppo"]["n_envs"]
        assert spatial["policy_kwargs"]["features_extractor_class"] == "SpatialCNN"
        same = ("lstm_hidden_size", "rims_kwargs", "core", "shared_lstm", "enable_critic_lstm")
        assert {k: spatial["policy_kwargs"][k] for k in same} == {k: rims_pk[k] for k in same}
    # The other modular cores: same PPO block, same policy layout and state size, another core.
    for agent, core in (("tlb_ppo", "tlb"), ("assembly_ppo", "assembly")):
        pk = presets[agent]["policy_kwargs"]
        assert presets[agent]["ppo"] == presets["lstm_ppo"]["ppo"] and pk["core"] == core
        assert {k: v for k, v in pk.items() if k not in ("core", "core_kwargs")} == {
            k: v for k, v in lstm_pk.items() if k != "core"
        }


def test_atari_preset_follows_rl_zoo() -> None:
    ppo = get_preset("rims_ppo", "atari").ppo
    assert get_preset("rims_ppo", "atari").n_envs == 8
    assert (ppo.n_steps, ppo.n_epochs, ppo.batch_size) == (128, 4, 256)
    assert (ppo.learning_rate, ppo.clip_range, ppo.ent_coef, ppo.vf_coef) == (
        "lin_2.5e-4",
        "lin_0.1",
        0.01,
        0.5,
    )


def test_get_preset_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="rims_ppo"):
        get_preset("rim_ppo", "atari")
    with pytest.raises(ValueError, match="minigrid"):
        get_preset("ppo", "minigird")


def test_apply_overrides() -> None:
    preset = get_preset("rims_ppo", "atari")
    config = apply_overrides(
        preset,
        {
            "ppo.learning_rate": "3e-4",
            "policy_kwargs.rims_kwargs.k": 5,
            "ppo.target_kl": 0.02,
            "policy_kwargs.enable_critic_lstm": "false",
        },
    )
    assert config.ppo.learning_rate == 3e-4
    assert config.policy_kwargs["rims_kwargs"]["k"] == 5
    assert config.ppo.target_kl == 0.02
    assert config.policy_kwargs["enable_critic_lstm"] is False
    assert preset.policy_kwargs["rims_kwargs"]["k"] == 4  # the preset is not modified
    from_cli = apply_overrides(preset, parse_overrides(["ppo.n_epochs=8", "ppo.learning_rate=lin_1e-4"]))
    assert from_cli.ppo.n_epochs == 8 and from_cli.ppo.learning_rate == "lin_1e-4"


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("ppo.learnin_rate", "learning_rate"),
        ("policy_kwargs.rims_kwargs.n_unit", "n_units"),
        ("polcy_kwargs.core", "policy_kwargs"),
        ("policy_kwargs.enable_critic_lsm", "enable_critic_lstm"),
    ],
)
def test_apply_overrides_unknown_key_names_close_keys(key: str, hint: str) -> None:
    with pytest.raises(ValueError, match=hint):
        apply_overrides(get_preset("rims_ppo", "classic"), {key: 1})


def test_resolve_schedule() -> None:
    sched = resolve_schedule("lin_2.5e-4")
    assert sched(1.0) == pytest.approx(2.5e-4) and sched(0.5) == pytest.approx(1.25e-4)
    assert resolve_schedule(0.1) == 0.1
    with pytest.raises(ValueError):
        resolve_schedule("cos_1e-3")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ppo.learning_rate": -1e-3}, "learning_rate"),
        ({"ppo.learning_rate": "Infinity"}, "learning_rate"),
        ({"ppo.n_epochs": 0}, "n_epochs"),
        ({"ppo.gamma": 1.5}, "gamma"),
        ({"ppo.batch_size": 4096}, "exceeds"),
        ({"ppo.clip_range": "lin_-0.1"}, "clip_range"),
        ({"policy": "MlpLstmPolicy"}, "policy"),
        ({"n_envs": 2.7}, "n_envs"),
        ({"policy_kwargs.net_arch": "abc"}, "net_arch"),
    ],
)
def test_overrides_with_bad_values_are_refused_where_defined(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply_overrides(get_preset("rims_ppo", "classic"), overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"policy_kwargs.rims_kwargs.k": 7}, "k must be"),
        ({"policy_kwargs.rims_kwargs.unit_size": None, "policy_kwargs.lstm_hidden_size": 100}, "divisible"),
    ],
)
def test_core_settings_are_checked_by_the_core_when_built(overrides: dict, message: str) -> None:
    preset = apply_overrides(get_preset("rims_ppo", "classic"), overrides)
    rims = {k: v for k, v in preset.policy_kwargs["rims_kwargs"].items() if v is not None}
    preset = preset.replace(policy_kwargs={**preset.policy_kwargs, "rims_kwargs": rims})
    env = make_vec_env(lambda: CueMemoryEnv(3), n_envs=8, seed=0)
    with pytest.raises(ValueError, match=message):
        build_model(preset, env)


def test_truncated_minibatches_are_refused_for_new_runs_only() -> None:
    """A stored config of an older run with a truncated last minibatch still loads; new runs refuse it."""
    preset = apply_overrides(get_preset("lstm_ppo", "classic"), {"ppo.batch_size": 100})
    assert AgentPreset.from_dict(preset.to_dict()) == preset
    with pytest.raises(ValueError, match="must divide"):
        preset.check_minibatches()


def test_recurrent_kwargs_are_refused_for_ppo() -> None:
    with pytest.raises(ValueError, match="'core' is not valid under policy_kwargs"):
        apply_overrides(get_preset("ppo", "classic"), {"policy_kwargs.core": "rims"})
    data = get_preset("ppo", "classic").to_dict()  # e.g. a hand-edited config.json
    data["policy_kwargs"]["core"] = "rims"
    with pytest.raises(ValueError, match="RecurrentPPO"):
        AgentPreset.from_dict(data)


@pytest.mark.parametrize("agent", [a for a in AGENTS if "classic" in families_of(a)])
def test_build_model_classic(agent: str, cue_env: VecEnv) -> None:
    model = build_model(tiny(agent), cue_env, seed=0)
    if agent == "ppo":
        assert type(model) is PPO
    else:
        assert type(model) is RecurrentPPO and type(model.policy) is MlpRimsPolicy
        assert isinstance(model.policy.lstm_actor, get_core(tiny(agent).policy_kwargs["core"]))
    assert model.lr_schedule(1.0) == pytest.approx(1e-3)  # lin_1e-3
    assert model.lr_schedule(0.5) == pytest.approx(5e-4)


@pytest.mark.parametrize("agent", [a for a in AGENTS if "classic" in families_of(a)])
def test_count_parameters_measures_the_model_build_model_builds(agent: str, cue_env: VecEnv) -> None:
    """Measured on the meta device (no storage), the counts equal those of the model really built."""
    preset = tiny(agent)
    policy = build_model(preset, cue_env, seed=0).policy
    core = sum(
        p.numel() for n, p in policy.named_parameters() if n.startswith(("lstm_actor.", "lstm_critic."))
    )
    measured = count_parameters(preset, cue_env.observation_space, cue_env.action_space)
    assert measured[:2] == (core, sum(p.numel() for p in policy.parameters()))
    assert (measured.core > 0) == (agent != "ppo")


def test_huge_models_are_measured_not_built(cue_env: VecEnv) -> None:
    """A TLB of about 20G parameters (75 GiB) passes the settings' guessed bound; measured on the meta
    device, it is refused before anything is allocated, as is a rollout buffer of tens of GiB."""
    preset = apply_overrides(
        tiny("tlb_ppo"),
        {
            "policy_kwargs.core_kwargs.d_model": 4096,
            "policy_kwargs.core_kwargs.n_layers": 16,
            "policy_kwargs.core_kwargs.ffn_mult": 16,
        },
    )
    measured = count_parameters(preset, cue_env.observation_space, cue_env.action_space)
    assert measured.total > 10**10
    with pytest.raises(ValueError, match=r"[\d,]+M parameters .*the budget is 1.00 GiB.*--memory-gib"):
        build_model(preset, cue_env, seed=0)
    wide = apply_overrides(
        tiny("tlb_ppo"), {"policy_kwargs.core_kwargs.n_latents": 4096, "ppo.n_steps": 65536}
    )
    with pytest.raises(ValueError, match=r"rollout buffer of [\d.]+ GiB"):
        build_model(wide, cue_env, seed=0)


def test_the_memory_budget_is_measured_and_can_be_raised(
    cue_env: VecEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model of 1-2 GiB with its training state is refused at the default 1 GiB and built under a
    raised one (the flag's environment variable, which worker processes inherit); the guessed bound of
    the settings no longer decides."""
    preset = apply_overrides(tiny("lstm_ppo"), {"policy_kwargs.lstm_hidden_size": 3072})
    size = count_parameters(preset, cue_env.observation_space, cue_env.action_space)
    assert 2**30 < size.total * 16 < 2 * 2**30  # about 76M parameters: over the old guessed 50M too
    with pytest.raises(ValueError, match="the budget is 1.00 GiB"):
        check_measured_size(preset, cue_env)
    assert check_measured_size(preset, cue_env, budget=2 * 2**30) == size
    monkeypatch.setenv(MEMORY_BUDGET_VAR, "2")
    assert memory_budget() == 2 * 2**30
    assert check_measured_size(preset, cue_env) == size
    for bad in ("0", "-1", "nan", "inf", "1e9", "lots"):
        monkeypatch.setenv(MEMORY_BUDGET_VAR, bad)
        with pytest.raises(ValueError, match=f"{MEMORY_BUDGET_VAR} must be a number of GiB"):
            memory_budget()


def test_build_model_with_stock_sb3_contrib_policy(cue_env: VecEnv) -> None:
    """The benchmark's stock row: same config, sb3-contrib's own policy class (no RIMs keys passed on)."""
    from sb3_contrib.ppo_recurrent.policies import MlpLstmPolicy

    config = tiny("lstm_ppo")
    model = build_model(config, cue_env, seed=0, policy="MlpLstmPolicy")
    assert type(model.policy) is MlpLstmPolicy
    assert model.policy.lstm_actor.hidden_size == config.policy_kwargs["lstm_hidden_size"]
    model.learn(config.ppo.n_steps * 2)
    assert type(build_model(tiny("rims_ppo"), cue_env, policy=MlpRimsPolicy).policy.lstm_actor) is RIMs


class _FakeMiniGrid(gym.Env):
    """A MiniGrid-shaped observation space (7x7x3 image, optionally with a mission vector)."""

    def __init__(self, with_mission: bool) -> None:
        image = spaces.Box(0, 255, (7, 7, 3), np.uint8)
        self.observation_space = (
            spaces.Dict({"image": image, "mission": spaces.Box(0, 1, (5,), np.float32)})
            if with_mission
            else image
        )
        self.action_space = spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


@pytest.mark.parametrize("with_mission", [False, True])
def test_build_model_minigrid_auto_policy(with_mission: bool) -> None:
    pytest.importorskip("rims_rl.extractors")
    env = make_vec_env(lambda: _FakeMiniGrid(with_mission), n_envs=2, seed=0)
    model = build_model(tiny("rims_ppo", "minigrid"), env, seed=0)
    assert type(model.policy) is (MultiInputRimsPolicy if with_mission else CnnRimsPolicy)
    assert type(model.policy.features_extractor).__name__ == (
        "MiniGridDictExtractor" if with_mission else "MiniGridCNN"
    )
    assert model.policy.normalize_images is False
    ff = build_model(tiny("ppo", "minigrid"), env, seed=0)
    assert type(ff.policy.features_extractor).__name__ == type(model.policy.features_extractor).__name__


def test_spatial_agent_reads_the_minigrid_view_as_slots() -> None:
    """rims_spatial_ppo: 16 positions of the 7x7 view (three 2x2 convolutions) are the core's input slots."""
    from rims_rl.spatial import SlotInput, SpatialCNN, SpatialCnnRimsPolicy

    env = make_vec_env(lambda: _FakeMiniGrid(False), n_envs=2, seed=0)
    model = build_model(tiny("rims_spatial_ppo", "minigrid"), env, seed=0)
    assert type(model.policy) is SpatialCnnRimsPolicy and model.policy.normalize_images is False
    extractor, core = model.policy.features_extractor, model.policy.lstm_actor
    assert isinstance(extractor, SpatialCNN) and isinstance(core, SlotInput)
    assert (extractor.n_slots, extractor.slot_size) == (core.n_slots, core.slot_size) == (16, 32)
    assert th.allclose(extractor.scale.flatten(), 1 / th.tensor([10.0, 5.0, 2.0]))
    model.learn(64)
    with pytest.raises(ValueError, match="SpatialCNN reads one image"):
        build_model(tiny("rims_spatial_ppo", "minigrid"), make_vec_env(lambda: _FakeMiniGrid(True), n_envs=2))
    bad = apply_overrides(
        get_preset("rims_spatial_ppo", "minigrid"), {"policy_kwargs.features_extractor_kwargs.bogus": 1}
    )
    with pytest.raises(ValueError, match="unknown features_extractor_kwargs .'bogus'. for SpatialCNN"):
        build_model(bad, env)


@pytest.mark.parametrize("agent", ["rims_ppo", "lstm_ppo"])
def test_save_load_predict_identical_and_continue_training(tmp_path, agent: str, cue_env: VecEnv) -> None:
    model = build_model(tiny(agent), cue_env, seed=0)
    model.learn(32)
    model.save(tmp_path / "model.zip")
    loaded = RecurrentPPO.load(tmp_path / "model.zip", env=cue_env)
    assert type(loaded.policy) is MlpRimsPolicy and loaded.policy.core == model.policy.core

    rng = np.random.default_rng(0)
    obs = rng.uniform(0, 1, (2, 3)).astype(np.float32)
    s1 = s2 = None
    starts = np.ones(2, bool)
    for _ in range(5):
        a1, s1 = model.predict(obs, state=s1, episode_start=starts, deterministic=True)
        a2, s2 = loaded.predict(obs, state=s2, episode_start=starts, deterministic=True)
        assert np.array_equal(a1, a2)
        np.testing.assert_array_equal(s1[0], s2[0])
        obs = rng.uniform(0, 1, (2, 3)).astype(np.float32)
        starts = np.zeros(2, bool)

    before = {n: p.detach().clone() for n, p in loaded.policy.named_parameters()}
    # Two more rollouts: with the linear schedule the last update of a learn() call has learning rate 0.
    loaded.learn(64, reset_num_timesteps=False)
    assert loaded.num_timesteps == 96
    assert any(
        not th.equal(p, before[n]) for n, p in loaded.policy.named_parameters() if n.startswith("lstm_actor")
    )


def test_chunk_length_trains_on_chunked_minibatches(cue_env: VecEnv) -> None:
    """``--set ppo.chunk_length=8`` selects ChunkedRecurrentPPO (sb3-contrib's whole sequences otherwise)."""
    from rims_rl.ppo import ChunkedRecurrentPPO

    preset = apply_overrides(tiny("rims_ppo"), {"ppo.chunk_length": 8})
    model = build_model(preset, cue_env, seed=0)
    assert type(model) is ChunkedRecurrentPPO and model.chunk_length == 8
    model.learn(32)
    assert type(build_model(tiny("rims_ppo"), cue_env, seed=0)) is RecurrentPPO
    with pytest.raises(ValueError, match="multiple of ppo.chunk_length"):
        apply_overrides(tiny("rims_ppo"), {"ppo.chunk_length": 5})
    with pytest.raises(ValueError, match="recurrent agents"):
        apply_overrides(tiny("ppo"), {"ppo.chunk_length": 8})


def test_the_algorithm_is_an_explicit_setting_that_chunk_length_selects() -> None:
    """``ppo.chunk_length`` picks the algorithm (the grid's ``null,32``) unless ``algo`` is set with it."""
    from rims_rl.agents import ALGORITHMS
    from rims_rl.agents.config import ALGOS
    from rims_rl.ppo import DEFAULT_CHUNK_LENGTH

    assert tuple(ALGORITHMS) == ALGOS
    base = tiny("rims_ppo")
    chunked = apply_overrides(base, {"ppo.chunk_length": 8})
    assert (base.algo, chunked.algo) == ("RecurrentPPO", "ChunkedRecurrentPPO")
    assert chunked.to_dict()["algo"] == "ChunkedRecurrentPPO" and chunked.recurrent
    assert apply_overrides(chunked, {"ppo.chunk_length": None}).algo == "RecurrentPPO"
    assert apply_overrides(base, {"algo": "ChunkedRecurrentPPO"}).ppo.chunk_length == DEFAULT_CHUNK_LENGTH
    assert apply_overrides(chunked, {"algo": "RecurrentPPO"}).ppo.chunk_length is None
    with pytest.raises(ValueError, match="algo is RecurrentPPO.*ppo.chunk_length=null"):
        apply_overrides(base, {"algo": "RecurrentPPO", "ppo.chunk_length": 8})
    with pytest.raises(ValueError, match="ChunkedRecurrentPPO needs ppo.chunk_length"):
        apply_overrides(base, {"algo": "ChunkedRecurrentPPO", "ppo.chunk_length": None})
    with pytest.raises(ValueError, match="algo is RecurrentPPO"):  # a preset's JSON says what it means
        AgentPreset.from_dict({**base.to_dict(), "ppo": {**base.ppo.to_dict(), "chunk_length": 8}})


def test_configs_and_checkpoint_entries_from_before_the_algo_setting_still_load() -> None:
    """config.json said ``algo: RecurrentPPO`` (or nothing) beside a chunk_length; checkpoint entries may
    lack ``algo``: both load as the chunked algorithm, inferred from the chunk length."""
    import copy

    from rims_rl.app.checkpoint import META_FORMAT, CheckpointMeta
    from rims_rl.app.config import RunConfig, resolve_config

    over = {"ppo.n_steps": 16, "ppo.batch_size": 16, "ppo.chunk_length": 8}
    config = resolve_config("lstm_ppo", "MiniGrid-Empty-5x5-v0", n_envs=2, overrides=over, timesteps=32)
    assert config.to_dict()["model"]["algo"] == "ChunkedRecurrentPPO"
    old = copy.deepcopy(config.to_dict())
    old["model"]["algo"] = "RecurrentPPO"
    assert RunConfig.from_dict(old) == config
    del old["model"]["algo"]
    assert RunConfig.from_dict(old) == config
    meta = CheckpointMeta.from_dict({"format": META_FORMAT, "num_timesteps": 32, "config": old})
    assert meta.algo == "ChunkedRecurrentPPO" and meta.config == config
    with pytest.raises(ValueError, match="not the config's model.algo"):
        CheckpointMeta.from_dict({"format": META_FORMAT, "algo": "PPO", "config": old})
    del old["model"]["ppo"]["chunk_length"]
    plain = RunConfig.from_dict({**old, "model": {**old["model"], "algo": "RecurrentPPO"}})
    assert plain.model.algo == "RecurrentPPO"
    with pytest.raises(ValueError, match="lacks 'algo'"):  # nothing to infer it from
        RunConfig.from_dict(old)


class _FakeAtari(gym.Env):
    """An Atari-shaped observation (the smallest frame NatureCNN takes, 4 stacked frames)."""

    observation_space = spaces.Box(0, 255, (36, 36, 4), np.uint8)
    action_space = spaces.Discrete(4)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


@pytest.mark.parametrize("agent", [a for a in AGENTS if "atari" in families_of(a)])
def test_channels_last_is_the_same_model_in_nhwc_memory(tmp_path, agent: str) -> None:
    """The Atari presets keep conv weights NHWC (a CPU speed lever): same features, training and loading
    keep the layout, and the switch goes off like any other setting."""
    from stable_baselines3.common.preprocessing import preprocess_obs

    env = make_vec_env(_FakeAtari, n_envs=2, seed=0)
    preset = tiny(agent, "atari")
    assert preset.channels_last
    fast = build_model(preset, env, seed=0)
    plain = build_model(apply_overrides(preset, {"channels_last": "false"}), env, seed=0)

    def convs(model) -> list[th.Tensor]:
        return [m.weight for m in model.policy.modules() if isinstance(m, th.nn.Conv2d)]

    def features(model, obs: np.ndarray) -> th.Tensor:
        x, _ = model.policy.obs_to_tensor(obs)
        x = preprocess_obs(x, model.policy.observation_space, normalize_images=model.policy.normalize_images)
        with th.no_grad():
            return model.policy.features_extractor(x)

    assert convs(fast) and all(w.is_contiguous(memory_format=th.channels_last) for w in convs(fast))
    assert not any(w.is_contiguous(memory_format=th.channels_last) for w in convs(plain))
    plain.policy.load_state_dict(fast.policy.state_dict())
    obs = fast.env.reset()
    th.testing.assert_close(features(fast, obs), features(plain, obs), rtol=1e-4, atol=1e-5)
    fast.learn(32)
    assert all(w.is_contiguous(memory_format=th.channels_last) for w in convs(fast))
    fast.save(tmp_path / "model.zip")
    loaded = build_model(preset, env, seed=1)
    loaded.set_parameters(str(tmp_path / "model.zip"))
    assert all(w.is_contiguous(memory_format=th.channels_last) for w in convs(loaded))
    th.testing.assert_close(features(loaded, obs), features(fast, obs))


@pytest.mark.parametrize("agent", ["lstm_ppo", "rims_ppo"])
def test_bf16_features_run_the_cnn_in_bfloat16_and_hand_on_float32(tmp_path, agent: str) -> None:
    """Issue 42.2's switch: the CNN under bfloat16 autocast (features near, not equal, to float32's) on
    every path (training, predict, values), the rest of the model in float32; the parameters are the
    same ones, so checkpoints load either way, and the policy pickles and copies as any other."""
    import copy
    import pickle

    env = make_vec_env(_FakeAtari, n_envs=2, seed=0)
    preset = tiny(agent, "atari")
    assert "bf16_features" not in preset.policy_kwargs  # off in the presets until its parity run
    fast = build_model(apply_overrides(preset, {"policy_kwargs.bf16_features": "true"}), env, seed=0)
    plain = build_model(preset, env, seed=0)
    plain.policy.load_state_dict(fast.policy.state_dict())
    assert fast.policy.bf16_features and not plain.policy.bf16_features
    obs = fast.env.reset()
    x, _ = fast.policy.obs_to_tensor(obs)
    layers, _, size = fast.policy.lstm_hidden_state_shape
    states = (th.zeros(layers, 2, size), th.zeros(layers, 2, size))
    starts = th.ones(2)
    with th.no_grad():
        low, full = fast.policy.extract_features(x), plain.policy.extract_features(x)
        assert low.dtype == th.float32 and not th.equal(low, full)
        th.testing.assert_close(low, full, rtol=0.05, atol=0.05)
        va, vb = (m.policy.predict_values(x, states, starts) for m in (fast, plain))
        assert not th.equal(va, vb)  # the values' path runs the bf16 CNN too
        da, db = (m.policy.get_distribution(x, states, starts)[0].distribution.probs for m in (fast, plain))
        assert not th.equal(da, db)  # and predict's
        th.testing.assert_close(da, db, rtol=0.05, atol=0.05)
    # copies are their own models (SB3's policies copy before training: after it they hold the last
    # action distribution, a non-leaf tensor deepcopy refuses, with or without this switch)
    twin = copy.deepcopy(fast.policy)
    again = pickle.loads(pickle.dumps(fast.policy))
    with th.no_grad():
        for module in (twin, again):
            assert module.bf16_features
            th.testing.assert_close(module.extract_features(x), low)
            for p in module.features_extractor.parameters():
                p.zero_()
            assert not th.allclose(module.extract_features(x), low)
    fast.learn(32)  # trains: gradients flow through the autocast CNN
    assert all(p.dtype == th.float32 for p in fast.policy.parameters())
    fast.save(tmp_path / "model.zip")
    plain.set_parameters(str(tmp_path / "model.zip"))
    with pytest.raises(ValueError, match="bf16_features must be true or false"):
        build_model(apply_overrides(preset, {"policy_kwargs.bf16_features": "maybe"}), env, seed=0)
