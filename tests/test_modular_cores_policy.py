"""TLB and stable-assembly cores inside RimsActorCriticPolicy / RecurrentPPO: config, rollout
reproduction, sequence fast path, learn/save/load/predict, TensorBoard statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from rollout_check import assert_sequence_call_matches_step_loop, assert_training_reproduces_rollouts
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure

from envs.memory import CueMemoryEnv
from rims_rl.assembly import StableAssembly
from rims_rl.callbacks import RimsStatsCallback
from rims_rl.policies import CORES, MlpRimsPolicy, resolve_core_config
from rims_rl.tlb import TemporalLatentBottleneck

OBS = spaces.Box(-1.0, 1.0, (5,), np.float32)
ACT = spaces.Discrete(3)
SMALL = {
    "tlb": {"lstm_hidden_size": 32, "core_kwargs": {"n_latents": 2, "chunk_size": 3, "n_heads": 2}},
    "assembly": {"lstm_hidden_size": 32, "core_kwargs": {"n_modules": 4}},
}
CLASSES = {"tlb": TemporalLatentBottleneck, "assembly": StableAssembly}


def lr(_: float) -> float:
    return 1e-3


@pytest.mark.parametrize("core", ["tlb", "assembly"])
def test_policy_builds_the_core_with_core_kwargs(core: str) -> None:
    assert core in CORES
    policy = MlpRimsPolicy(OBS, ACT, lr, core=core, **SMALL[core])
    for module in (policy.lstm_actor, policy.lstm_critic):
        assert isinstance(module, CLASSES[core]) and module.hidden_size == 32
    assert policy.lstm_hidden_state_shape == (1, 1, 32)
    params = policy._get_constructor_parameters()
    assert params["core"] == core and params["core_kwargs"] == SMALL[core]["core_kwargs"]
    assert {id(p) for g in policy.optimizer.param_groups for p in g["params"]} == {
        id(p) for p in policy.parameters()
    }


def test_default_hidden_sizes() -> None:
    assert resolve_core_config("tlb", None, None)[0] == 256
    assert resolve_core_config("assembly", None, None, core_kwargs={"n_modules": 4})[0] == 4 * 32
    assert resolve_core_config("assembly", None, None)[0] == 6 * 32


@pytest.mark.parametrize(
    "args, message",
    [
        (("tlb", 32, {"n_units": 4}), "rims_kwargs is only used with core='rims'"),
        (("rims", None, None, 1, {"chunk_size": 4}), "use rims_kwargs for RIMs"),
        (("lstm", None, None, 1, {"chunk_size": 4}), "core_kwargs configure core in"),
        (("tlb", 32, None, 2), "n_lstm_layers must be 1"),
        (("tlb", 32, None, 1, {"chunk_sise": 4}), "did you mean 'chunk_size'"),
        (("tlb", 32, None, 1, {"d_model": 64}), "the packed state needs"),
        (("assembly", 30, None, 1, {"n_modules": 4}), "divisible by n_modules"),
        (("assembly", 32, None, 1, {"n_modules": 4, "alpha": 1.0, "coupling": 0.5}), "contraction bound"),
        (("assembly", 32, None, 1, []), "core_kwargs must be a dict"),
    ],
)
def test_bad_settings_raise_value_error(args: tuple, message: str) -> None:
    """Names are checked by resolve_core_config, values by the core's constructor, both at policy build."""
    core, hidden, rims_kwargs, *rest = args
    kwargs = {"n_lstm_layers": rest[0] if rest else 1, "core_kwargs": rest[1] if len(rest) > 1 else None}
    with pytest.raises(ValueError, match=message):
        MlpRimsPolicy(
            spaces.Box(-1, 1, (3,)),
            spaces.Discrete(2),
            lambda _: 1e-3,
            core=core,
            lstm_hidden_size=hidden,
            rims_kwargs=rims_kwargs,
            **kwargs,
        )


def test_lstm_kwargs_rejected_for_modular_cores() -> None:
    with pytest.raises(ValueError, match="lstm_kwargs apply to core='lstm'/'gru'"):
        MlpRimsPolicy(OBS, ACT, lr, core="tlb", lstm_kwargs={"dropout": 0.1}, **SMALL["tlb"])


@pytest.mark.parametrize("core", ["tlb", "assembly"])
def test_training_forward_reproduces_the_rollout(core: str) -> None:
    """Rollout one step at a time vs. padded training sequences in one call: same log-probs and values
    (for TLB this crosses chunk ends and episode resets at every chunk position)."""
    env = make_vec_env(lambda: CueMemoryEnv(5), n_envs=4, seed=0)
    model = RecurrentPPO(
        MlpRimsPolicy, env, n_steps=40, batch_size=64, policy_kwargs={"core": core, **SMALL[core]}
    )
    assert assert_training_reproduces_rollouts(model) == 160


@pytest.mark.parametrize("core", ["tlb", "assembly"])
def test_process_sequence_with_starts_inside_sequences(core: str) -> None:
    """The one-call path equals sb3-contrib's per-step loop, with resets anywhere."""
    policy = MlpRimsPolicy(OBS, ACT, lr, core=core, **SMALL[core]).eval()
    gen = th.Generator().manual_seed(3)
    n_seq, T = 3, 7
    with th.no_grad():  # a reachable state (TLB: rows at different chunk positions)
        warm = th.randn(2, n_seq, 5, generator=gen)
        warm_starts = th.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
        _, states = policy.lstm_actor(policy.extract_features(warm.flatten(0, 1)).view(2, n_seq, -1))
        _, states = policy.lstm_actor(
            policy.extract_features(warm.flatten(0, 1)).view(2, n_seq, -1), states, warm_starts
        )
    feats = th.randn(n_seq * T, 5, generator=gen)
    starts = (th.rand(n_seq * T, generator=gen) < 0.3).float()
    assert_sequence_call_matches_step_loop(policy, feats, states, starts)


@pytest.mark.parametrize("core", ["tlb", "assembly"])
def test_recurrent_ppo_cartpole_learns_saves_loads_predicts(tmp_path, core: str) -> None:
    model = RecurrentPPO(
        MlpRimsPolicy,
        "CartPole-v1",
        n_steps=64,
        batch_size=64,
        n_epochs=2,
        seed=0,
        policy_kwargs={"core": core, **SMALL[core]},
    )
    before = {n: p.detach().clone() for n, p in model.policy.named_parameters() if n.startswith("lstm_")}
    model.learn(256)
    changed = {n for n, p in model.policy.named_parameters() if n in before and not th.equal(p, before[n])}
    # chunk_size 3 over 256 steps: chunks end, so the slow-stream update gets gradient too.
    assert changed == set(before), f"unchanged: {set(before) - changed}"
    assert all(th.isfinite(p).all() for p in model.policy.parameters())
    if core == "assembly":
        assert model.policy.lstm_actor.contraction_rate() < 1.0
    model.save(tmp_path / "model.zip")
    loaded = RecurrentPPO.load(tmp_path / "model.zip")
    assert isinstance(loaded.policy.lstm_actor, CLASSES[core])
    assert loaded.policy.core_kwargs == SMALL[core]["core_kwargs"]
    obs = np.stack([model.env.observation_space.sample() for _ in range(2)])
    a1, s1 = model.predict(obs, episode_start=np.ones(2, bool), deterministic=True)
    a2, s2 = loaded.predict(obs, episode_start=np.ones(2, bool), deterministic=True)
    for _ in range(4):  # crosses a TLB chunk end
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_allclose(s1[0], s2[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(s1[1], s2[1], rtol=1e-6, atol=1e-6)
        a1, s1 = model.predict(obs, s1, np.zeros(2, bool), deterministic=True)
        a2, s2 = loaded.predict(obs, s2, np.zeros(2, bool), deterministic=True)
    assert s1[0].shape == (1, 2, 32)


@pytest.mark.parametrize("core, key", [("tlb", "slow_attention_entropy"), ("assembly", "contraction_margin")])
def test_stats_callback_logs_modular_core_statistics(tmp_path, core: str, key: str) -> None:
    env = make_vec_env(lambda: CueMemoryEnv(3), n_envs=2, seed=0)
    model = RecurrentPPO(
        MlpRimsPolicy,
        env,
        n_steps=16,
        batch_size=32,
        n_epochs=1,
        seed=0,
        policy_kwargs={"core": core, **SMALL[core]},
    )
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(32, callback=RimsStatsCallback())
    header, *rows = (tmp_path / "progress.csv").read_text().splitlines()
    values = dict(zip(header.split(","), rows[-1].split(","), strict=True))
    for prefix in (core, f"{core}_critic"):
        assert 0.0 < float(values[f"{prefix}/{key}"]) <= 1.0 + 1e-6
