"""RIMs/LSTM/GRU policies for RecurrentPPO: equivalence, fast path, optimizer, save/load, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from rollout_check import assert_training_reproduces_rollouts
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from sb3_contrib.ppo_recurrent.policies import MlpLstmPolicy
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecEnv

from rims_rl.callbacks import CoreStatsCallback
from rims_rl.cores.rims import RIMs, usage_entropy
from rims_rl.envs.memory import CueMemoryEnv
from rims_rl.policies import (
    CnnRimsPolicy,
    MlpRimsPolicy,
    MultiInputRimsPolicy,
    RimsActorCriticPolicy,
)

OBS = spaces.Box(-1.0, 1.0, (5,), np.float32)
ACT = spaces.Discrete(3)
SMALL_RIMS = {
    "n_units": 4,
    "k": 2,
    "unit_size": 8,
    "input_key_size": 16,
    "comm_key_size": 8,
    "comm_value_size": 8,
}


def lr(_: float) -> float:
    return 1e-3


def small_policy(core: str = "rims", **kwargs) -> RimsActorCriticPolicy:
    if core == "rims":
        kwargs.setdefault("rims_kwargs", dict(SMALL_RIMS))
    else:
        kwargs.setdefault("lstm_hidden_size", 32)
    return MlpRimsPolicy(OBS, ACT, lr, core=core, **kwargs)


def zero_states(policy: RimsActorCriticPolicy, n: int) -> RNNStates:
    shape = (policy.lstm_hidden_state_shape[0], n, policy.lstm_hidden_state_shape[2])
    z = (th.zeros(shape), th.zeros(shape))
    return RNNStates(z, (z[0].clone(), z[1].clone()))


def random_states(policy: RimsActorCriticPolicy, n: int, gen: th.Generator) -> RNNStates:
    shape = (policy.lstm_hidden_state_shape[0], n, policy.lstm_hidden_state_shape[2])

    def pair() -> tuple[th.Tensor, th.Tensor]:
        return th.randn(shape, generator=gen), th.randn(shape, generator=gen)

    return RNNStates(pair(), pair())


def optimizer_param_ids(policy: th.nn.Module) -> set[int]:
    return {id(p) for group in policy.optimizer.param_groups for p in group["params"]}


# ---------------------------------------------------------------- LSTM baseline == stock MlpLstmPolicy


@pytest.mark.parametrize("critic", ["separate", "shared", "none"])
def test_lstm_core_matches_stock_mlp_lstm_policy(critic: str) -> None:
    kwargs = {
        "separate": {"enable_critic_lstm": True},
        "shared": {"enable_critic_lstm": False, "shared_lstm": True},
        "none": {"enable_critic_lstm": False},
    }[critic]
    th.manual_seed(0)
    stock = MlpLstmPolicy(OBS, ACT, lr, lstm_hidden_size=32, **kwargs)
    th.manual_seed(0)
    ours = MlpRimsPolicy(OBS, ACT, lr, core="lstm", lstm_hidden_size=32, **kwargs)
    # Same construction order: same seed gives the same weights, under the same parameter names.
    stock_sd, our_sd = stock.state_dict(), ours.state_dict()
    assert list(stock_sd) == list(our_sd)
    for name in stock_sd:
        assert th.equal(stock_sd[name], our_sd[name]), name

    gen = th.Generator().manual_seed(1)
    n_seq, T = 6, 7
    obs = th.randn(n_seq * T, 5, generator=gen)
    starts = th.zeros(n_seq, T)
    starts[:, 0] = th.tensor([1.0, 0, 1, 0, 1, 0])  # training-like: starts only at a sequence's first step
    states = random_states(stock, n_seq, gen)
    actions = th.randint(0, 3, (n_seq * T,), generator=gen)
    with th.no_grad():
        v1, lp1, e1 = stock.evaluate_actions(obs, actions, states, starts.flatten())
        v2, lp2, e2 = ours.evaluate_actions(obs, actions, states, starts.flatten())
        th.testing.assert_close(v1, v2, rtol=1e-5, atol=1e-6)
        th.testing.assert_close(lp1, lp2, rtol=1e-5, atol=1e-6)
        th.testing.assert_close(e1, e2, rtol=1e-5, atol=1e-6)
        # Rollout-style single steps, starts anywhere, deterministic actions.
        step_starts = th.tensor([1.0, 0, 0, 1, 0, 1])
        a1, val1, _, s1 = stock(obs[:n_seq], states, step_starts, deterministic=True)
        a2, val2, _, s2 = ours(obs[:n_seq], states, step_starts, deterministic=True)
        assert th.equal(a1, a2)
        th.testing.assert_close(val1, val2)
        for x, y in zip(s1.pi + s1.vf, s2.pi + s2.vf, strict=True):
            th.testing.assert_close(x, y)
        np_states = (states.pi[0].numpy(), states.pi[1].numpy())
        p1, _ = stock.predict(
            obs[:n_seq].numpy(), np_states, step_starts.numpy().astype(bool), deterministic=True
        )
        p2, _ = ours.predict(
            obs[:n_seq].numpy(), np_states, step_starts.numpy().astype(bool), deterministic=True
        )
        assert np.array_equal(p1, p2)


# ---------------------------------------------------------------- fast path == per-step loop


def per_step(policy: RimsActorCriticPolicy) -> RimsActorCriticPolicy:
    """Make ``policy`` use sb3-contrib's per-step loop (instance attribute shadows the static method)."""
    policy._process_sequence = RecurrentActorCriticPolicy._process_sequence  # type: ignore[method-assign]
    return policy


@pytest.mark.parametrize("core", ["rims", "lstm", "gru"])
def test_fast_path_matches_per_step_loop_on_rollout_minibatches(core: str) -> None:
    policy_kwargs = {
        "core": core,
        **({"rims_kwargs": dict(SMALL_RIMS)} if core == "rims" else {"lstm_hidden_size": 32}),
    }
    env = make_vec_env(lambda: CueMemoryEnv(3), n_envs=4, seed=0)
    model = RecurrentPPO(
        MlpRimsPolicy, env, n_steps=32, batch_size=40, n_epochs=1, policy_kwargs=policy_kwargs, seed=0
    )
    model.learn(128)  # fills the recurrent buffer with real episodes and states
    policy = model.policy.eval()
    reference = per_step(MlpRimsPolicy(env.observation_space, env.action_space, lr, **policy_kwargs)).eval()
    reference.load_state_dict(policy.state_dict())
    n_batches = 0
    for batch in model.rollout_buffer.get(40):
        starts = batch.episode_starts
        n_seq = batch.lstm_states.pi[0].shape[1]
        seq_starts = starts.reshape(n_seq, -1)
        assert not seq_starts[:, 1:].any(), "sb3-contrib pads so that episodes start only at step 0"
        assert seq_starts[:, 0].any()
        with th.no_grad():
            fast = policy.evaluate_actions(
                batch.observations, batch.actions.long().flatten(), batch.lstm_states, starts
            )
            slow = reference.evaluate_actions(
                batch.observations, batch.actions.long().flatten(), batch.lstm_states, starts
            )
        for a, b in zip(fast, slow, strict=True):
            th.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        n_batches += 1
    assert n_batches == 4


@pytest.mark.parametrize("critic", ["own", "shared", "none"])
@pytest.mark.parametrize("core", ["rims", "lstm"])
def test_training_forward_reproduces_the_rollout(core: str, critic: str) -> None:
    """PPO's ratio is 1 on unchanged weights only if training recomputes exactly what the rollout saw.

    Rollout: one step at a time with carried states. Training: padded sequences from the buffer, through
    the fast path. Log-probs and values must agree on every step of every minibatch.
    """
    critic_kwargs = {
        "own": {"enable_critic_lstm": True},
        "shared": {"enable_critic_lstm": False, "shared_lstm": True},
        "none": {"enable_critic_lstm": False},
    }[critic]
    core_kwargs = {"rims_kwargs": dict(SMALL_RIMS)} if core == "rims" else {"lstm_hidden_size": 32}
    env = make_vec_env(lambda: CueMemoryEnv(5), n_envs=4, seed=0)
    policy_kwargs = {"core": core, **core_kwargs, **critic_kwargs}
    model = RecurrentPPO(MlpRimsPolicy, env, n_steps=40, batch_size=64, policy_kwargs=policy_kwargs)
    assert assert_training_reproduces_rollouts(model) == 160


# ---------------------------------------------------------------- the optimizer owns the core


@pytest.mark.parametrize("core", ["rims", "lstm", "gru"])
@pytest.mark.parametrize(
    "critic",
    [
        {"enable_critic_lstm": True},
        {"enable_critic_lstm": False},
        {"shared_lstm": True, "enable_critic_lstm": False},
    ],
)
def test_optimizer_holds_every_core_parameter(core: str, critic: dict) -> None:
    policy = small_policy(core, **critic)
    owned = optimizer_param_ids(policy)
    assert owned == {id(p) for p in policy.parameters()}
    for module in (policy.lstm_actor, policy.lstm_critic):
        if module is not None:
            assert {id(p) for p in module.parameters()} <= owned


def test_optimizer_check_catches_a_core_swapped_in_after_construction() -> None:
    """The failure mode the policy avoids: swapping lstm_actor after __init__ leaves the optimizer behind."""
    stock = MlpLstmPolicy(OBS, ACT, lr, lstm_hidden_size=32)
    stock.lstm_actor = RIMs(stock.features_dim, 32, n_units=4, k=2)
    owned = optimizer_param_ids(stock)
    assert not {id(p) for p in stock.lstm_actor.parameters()} <= owned


def test_training_updates_every_rims_parameter(cue_env: VecEnv) -> None:
    model = RecurrentPPO(
        MlpRimsPolicy,
        cue_env,
        n_steps=32,
        batch_size=64,
        n_epochs=2,
        seed=0,
        policy_kwargs={"rims_kwargs": dict(SMALL_RIMS)},
    )
    before = {n: p.detach().clone() for n, p in model.policy.named_parameters() if n.startswith("lstm_")}
    model.learn(64)
    changed = {n for n, p in model.policy.named_parameters() if n in before and not th.equal(p, before[n])}
    assert changed == set(before), f"unchanged: {set(before) - changed}"


# ---------------------------------------------------------------- other observation types


def test_cnn_and_multi_input_policies_run() -> None:
    image = spaces.Box(0, 255, (1, 36, 36), np.uint8)
    cnn = CnnRimsPolicy(
        image, ACT, lr, rims_kwargs=dict(SMALL_RIMS), features_extractor_kwargs={"features_dim": 16}
    )
    obs = th.as_tensor(np.stack([image.sample() for _ in range(2)])).float()
    actions, values, _, _ = cnn(obs, zero_states(cnn, 2), th.ones(2))
    assert actions.shape == (2,) and values.shape == (2, 1)

    dict_space = spaces.Dict({"a": spaces.Box(-1, 1, (3,), np.float32), "b": spaces.Discrete(4)})
    multi = MultiInputRimsPolicy(dict_space, ACT, lr, rims_kwargs=dict(SMALL_RIMS))
    sample = {"a": th.zeros(2, 3), "b": th.tensor([1, 2])}
    actions, values, _, _ = multi(sample, zero_states(multi, 2), th.ones(2))
    assert actions.shape == (2,) and values.shape == (2, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rims_kwargs": {"n_units": 4, "k": 5, "unit_size": 8}}, "k must be"),
        ({"rims_kwargs": {"n_unit": 4}}, "did you mean 'n_units'"),
        ({"rims_kwargs": {"n_units": 6}, "lstm_hidden_size": 100}, "divisible by"),
        ({"rims_kwargs": {"n_units": 4, "unit_size": 8}, "lstm_hidden_size": 64}, "disagrees"),
        ({"rims_kwargs": {"unit_size": 0}}, "unit_size"),
        ({"rims_kwargs": {"cell": "rnn"}}, "cell must be"),
        ({"rims_kwargs": {"input_dropout": 1.5}}, "input_dropout"),
        ({"core": "lstm", "rims_kwargs": {"k": 2}}, "only used with core='rims'"),
        ({"core": "transformer"}, "unknown core"),
        ({"shared_lstm": True, "enable_critic_lstm": True}, "shared_lstm"),
    ],
)
def test_bad_settings_raise_value_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MlpRimsPolicy(OBS, ACT, lr, **kwargs)


def test_bad_rims_kwargs_through_recurrent_ppo() -> None:
    env = make_vec_env(lambda: CueMemoryEnv(3), n_envs=1)
    with pytest.raises(ValueError, match="k must be"):
        RecurrentPPO(MlpRimsPolicy, env, policy_kwargs={"rims_kwargs": {"n_units": 3, "k": 4}})


# ---------------------------------------------------------------- unit statistics


def test_usage_entropy() -> None:
    assert usage_entropy(np.full(6, 4 / 6)) == pytest.approx(1.0)
    assert usage_entropy(np.array([1.0, 0, 0, 0])) == pytest.approx(0.0)


def test_rims_stats_callback_logs_unit_usage(tmp_path, cue_env: VecEnv) -> None:
    model = RecurrentPPO(
        MlpRimsPolicy,
        cue_env,
        n_steps=16,
        batch_size=32,
        n_epochs=1,
        seed=0,
        policy_kwargs={"rims_kwargs": dict(SMALL_RIMS)},
    )
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(32, callback=CoreStatsCallback())
    header, *rows = (tmp_path / "progress.csv").read_text().splitlines()
    columns = header.split(",")
    values = dict(zip(columns, rows[-1].split(","), strict=True))
    units = [float(values[f"rims/unit_{i}_active"]) for i in range(SMALL_RIMS["n_units"])]
    assert sum(units) == pytest.approx(SMALL_RIMS["k"])
    assert 0.0 <= float(values["rims/usage_entropy"]) <= 1.0
    assert "rims_critic/usage_entropy" in columns
