"""Training options that remove handicaps of the stock RecurrentPPO setup (issue 16)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from rollout_check import check_buffer
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.buffers import RecurrentRolloutBuffer
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from sb3_contrib.ppo_recurrent.policies import MlpLstmPolicy
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import VecEnv
from test_policies import ACT, OBS, SMALL_RIMS, lr, random_states

from rims_rl.cores.rims import RIMs
from rims_rl.dropout import KeyedDropout
from rims_rl.envs.memory import CueMemoryEnv
from rims_rl.policies import MlpRimsPolicy, RimsActorCriticPolicy
from rims_rl.ppo import ChunkedRecurrentDictRolloutBuffer, ChunkedRecurrentPPO, ChunkedRecurrentRolloutBuffer
from rims_rl.spatial import SlotInput, SpatialCNN, SpatialCnnRimsPolicy


class LinearExtractor(BaseFeaturesExtractor):
    """A features extractor with parameters, to see whether a loss reaches it."""

    def __init__(self, observation_space: spaces.Box, features_dim: int = 6) -> None:
        super().__init__(observation_space, features_dim)
        self.linear = th.nn.Linear(int(np.prod(observation_space.shape)), features_dim)

    def forward(self, obs: th.Tensor) -> th.Tensor:
        return th.tanh(self.linear(obs.flatten(1)))


# ---------------------------------------------------------------- critic gradient through the shared core


def shared_policy(core: str, through: bool) -> RimsActorCriticPolicy:
    core_kwargs = {"rims_kwargs": dict(SMALL_RIMS)} if core == "rims" else {"lstm_hidden_size": 16}
    return MlpRimsPolicy(
        OBS,
        ACT,
        lr,
        core=core,
        shared_lstm=True,
        enable_critic_lstm=False,
        critic_grad_through_core=through,
        features_extractor_class=LinearExtractor,
        **core_kwargs,
    )


def value_loss_grads(policy: RimsActorCriticPolicy, method: str) -> dict[str, th.Tensor]:
    """Gradients of a value-only loss, through ``evaluate_actions``, ``forward`` or ``predict_values``."""
    gen = th.Generator().manual_seed(0)
    n_seq, T = 3, 4
    obs = th.rand(n_seq * T, 5, generator=gen) * 2 - 1
    starts = th.zeros(n_seq * T)
    starts[::T] = 1.0
    states = random_states(policy, n_seq, gen)
    if method == "evaluate_actions":
        values = policy.evaluate_actions(obs, th.zeros(n_seq * T), states, starts)[0]
    elif method == "forward":
        values = policy(obs, states, starts)[1]
    else:
        values = policy.predict_values(obs, states.vf, starts)
    (values**2).mean().backward()
    return {n: th.zeros_like(p) if p.grad is None else p.grad for n, p in policy.named_parameters()}


@pytest.mark.parametrize("method", ["evaluate_actions", "forward", "predict_values"])
@pytest.mark.parametrize("core", ["rims", "lstm"])
def test_value_loss_reaches_the_shared_core_only_when_asked(core: str, method: str) -> None:
    for through in (False, True):
        grads = value_loss_grads(shared_policy(core, through), method)
        shared = {n: g for n, g in grads.items() if n.startswith(("lstm_actor.", "features_extractor."))}
        assert {n.split(".")[0] for n in shared} == {"lstm_actor", "features_extractor"}
        norms = {n: float(g.abs().sum()) for n, g in shared.items()}
        if through:
            core_norm = sum(v for n, v in norms.items() if n.startswith("lstm_actor."))
            extractor_norm = sum(v for n, v in norms.items() if n.startswith("features_"))
            assert core_norm > 0 and extractor_norm > 0, norms
        else:
            assert all(v == 0.0 for v in norms.values()), norms
        assert float(grads["value_net.weight"].abs().sum()) > 0


def test_critic_grad_option_round_trips_and_needs_shared_core(tmp_path) -> None:
    policy = shared_policy("rims", True)
    assert policy._get_constructor_parameters()["critic_grad_through_core"] is True
    policy.save(tmp_path / "p.pt")
    assert MlpRimsPolicy.load(tmp_path / "p.pt").critic_grad_through_core is True
    with pytest.raises(ValueError, match="needs shared_lstm=True"):
        MlpRimsPolicy(OBS, ACT, lr, rims_kwargs=dict(SMALL_RIMS), critic_grad_through_core=True)


# ---------------------------------------------------------------- chunked recurrent minibatches


def filled_buffer(
    n_steps: int, n_envs: int, chunk_length: int, dict_obs: bool = False
) -> ChunkedRecurrentRolloutBuffer | ChunkedRecurrentDictRolloutBuffer:
    """A full buffer whose observation is ``[env, step]`` and whose stored states encode (env, step)."""
    box = spaces.Box(0.0, 1e4, (2,), np.float32)
    obs_space = spaces.Dict({"pos": box}) if dict_obs else box
    buffer_cls = ChunkedRecurrentDictRolloutBuffer if dict_obs else ChunkedRecurrentRolloutBuffer
    hidden = 3
    buffer = buffer_cls(
        n_steps, obs_space, ACT, (n_steps, 1, n_envs, hidden), "cpu", n_envs=n_envs, chunk_length=chunk_length
    )
    env_ids = np.arange(n_envs, dtype=np.float32)
    for step in range(n_steps):
        pos = np.stack([env_ids, np.full(n_envs, step, np.float32)], axis=1)
        state = th.as_tensor(1000.0 * env_ids + step).view(1, n_envs, 1).repeat(1, 1, hidden)
        buffer.add(
            {"pos": pos} if dict_obs else pos,
            np.zeros((n_envs, 1)),
            np.ones(n_envs, np.float32),
            np.zeros(n_envs, np.float32),
            th.zeros(n_envs),
            th.zeros(n_envs),
            lstm_states=RNNStates((state, state + 0.5), (state + 0.25, state + 0.75)),
        )
    buffer.compute_returns_and_advantage(last_values=th.zeros(n_envs), dones=np.zeros(n_envs))
    return buffer


def positions(batch) -> np.ndarray:
    obs = batch.observations["pos"] if isinstance(batch.observations, dict) else batch.observations
    return obs.numpy().astype(int)


@pytest.mark.parametrize("dict_obs", [False, True])
@pytest.mark.parametrize("n_steps", [32, 28])
def test_chunks_cover_every_sample_once_and_start_from_the_stored_state(n_steps: int, dict_obs: bool) -> None:
    n_envs, L = 4, 8
    buffer = filled_buffer(n_steps, n_envs, L, dict_obs)
    np.random.seed(0)
    for _epoch in range(2):
        seen: list[tuple[int, int]] = []
        for batch in buffer.get(16):
            n_seq = batch.lstm_states.pi[0].shape[1]
            assert n_seq <= 2 and batch.mask.shape == (n_seq * L,)
            pos = positions(batch).reshape(n_seq, L, 2)
            real = batch.mask.numpy().reshape(n_seq, L) > 0
            for j in range(n_seq):
                env, step0 = pos[j, 0]
                n_real = int(real[j].sum())
                assert real[j, :n_real].all() and not real[j, n_real:].any(), "padding only at the end"
                assert (pos[j, :n_real, 0] == env).all(), "a chunk holds one env"
                assert (pos[j, :n_real, 1] == step0 + np.arange(n_real)).all(), "consecutive steps"
                assert (pos[j, n_real:] == 0).all(), "padding is zeros"
                assert step0 % L == 0 and n_real == min(L, n_steps - step0)
                expected = 1000.0 * env + step0
                stored = (*batch.lstm_states.pi, *batch.lstm_states.vf)
                for state, offset in zip(stored, (0, 0.5, 0.25, 0.75), strict=True):
                    assert th.all(state[:, j] == expected + offset), "initial state = stored state at step 0"
                seen += [(int(e), int(s)) for e, s in pos[j, :n_real]]
        assert sorted(seen) == [(e, s) for e in range(n_envs) for s in range(n_steps)]


def test_chunked_minibatches_mix_envs_where_stock_ones_do_not() -> None:
    n_steps, n_envs, L, batch_size = 32, 8, 8, 32
    buffer = filled_buffer(n_steps, n_envs, L)
    np.random.seed(0)
    chunked = [len(np.unique(positions(b)[b.mask.numpy() > 0, 0])) for b in buffer.get(batch_size)]
    stock = filled_buffer(n_steps, n_envs, L)
    stock_batches = RecurrentRolloutBuffer.get(stock, batch_size)  # the same data, sb3-contrib's sampler
    plain = [len(np.unique(positions(b)[b.mask.numpy() > 0, 0])) for b in stock_batches]
    assert max(plain) <= 2
    assert np.mean(chunked) > 2.5, chunked


def collected_model(algo_cls: type, policy: Any, policy_kwargs: dict, **algo_kwargs: Any) -> Any:
    """A model with two rollouts collected (the second starts from carried states mid-episode)."""
    env = make_vec_env(lambda: CueMemoryEnv(5), n_envs=4, seed=0)
    model = algo_cls(policy, env, n_steps=40, policy_kwargs=policy_kwargs, seed=0, **algo_kwargs)
    model._setup_learn(160, callback=None)
    callback = CallbackList([])
    callback.init_callback(model)
    for _ in range(2):
        model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
    return model


@pytest.mark.parametrize("chunk_length", [8, 16])
@pytest.mark.parametrize(
    "policy",
    ["rims-own", "rims-shared", "lstm-own", "lstm-none", "stock-lstm", "stock-shared"],
)
def test_chunked_training_forward_reproduces_the_rollout(policy: str, chunk_length: int) -> None:
    """On unchanged weights PPO's ratio is exactly 1 with chunks too: episodes starting inside a chunk
    (episodes are 6 steps, chunks 8 or 16) and padding (40 = 2 x 16 + 8) included."""
    core, critic = policy.split("-")
    critic_kwargs = {
        "own": {"enable_critic_lstm": True},
        "lstm": {"enable_critic_lstm": True},
        "shared": {"enable_critic_lstm": False, "shared_lstm": True},
        "none": {"enable_critic_lstm": False},
    }[critic]
    if core == "stock":
        policy_cls, policy_kwargs = MlpLstmPolicy, {"lstm_hidden_size": 16, **critic_kwargs}
    else:
        core_kwargs = {"rims_kwargs": dict(SMALL_RIMS)} if core == "rims" else {"lstm_hidden_size": 16}
        policy_cls, policy_kwargs = MlpRimsPolicy, {"core": core, **core_kwargs, **critic_kwargs}
    model = collected_model(
        ChunkedRecurrentPPO, policy_cls, policy_kwargs, chunk_length=chunk_length, batch_size=2 * chunk_length
    )
    checked, batches = check_buffer(model, model.batch_size)
    inner_starts = sum(int(b.episode_starts.view(-1, chunk_length)[:, 1:].sum()) for b in batches)
    assert checked == 160 and inner_starts > 0


def test_chunked_ppo_learns_saves_and_loads(tmp_path, cue_env: VecEnv) -> None:
    model = ChunkedRecurrentPPO(
        MlpRimsPolicy,
        cue_env,
        chunk_length=8,
        n_steps=32,
        batch_size=16,
        n_epochs=2,
        seed=0,
        policy_kwargs={
            "rims_kwargs": dict(SMALL_RIMS),
            "shared_lstm": True,
            "enable_critic_lstm": False,
            "critic_grad_through_core": True,
            "keyed_dropout": True,
        },
    )
    before = {n: p.detach().clone() for n, p in model.policy.named_parameters()}
    model.learn(64)
    assert any(not th.equal(p, before[n]) for n, p in model.policy.named_parameters())
    model.save(tmp_path / "model.zip")
    loaded = ChunkedRecurrentPPO.load(tmp_path / "model.zip", env=cue_env)
    assert loaded.chunk_length == 8 and isinstance(loaded.rollout_buffer, ChunkedRecurrentRolloutBuffer)
    assert loaded.policy.critic_grad_through_core is True and loaded.policy.keyed_dropout is True
    assert isinstance(loaded.policy.lstm_actor.comm_dropout, KeyedDropout)
    obs = cue_env.reset()
    a1, _ = model.predict(obs, episode_start=np.ones(2, bool), deterministic=True)
    a2, _ = loaded.predict(obs, episode_start=np.ones(2, bool), deterministic=True)
    assert np.array_equal(a1, a2)
    loaded.learn(64)  # trains on after loading


def test_chunked_ppo_rejects_bad_chunk_settings(cue_env: VecEnv) -> None:
    with pytest.raises(ValueError, match="multiple of chunk_length"):
        ChunkedRecurrentPPO(MlpRimsPolicy, cue_env, chunk_length=8, n_steps=32, batch_size=12)
    with pytest.raises(ValueError, match="positive integer"):
        ChunkedRecurrentPPO(MlpRimsPolicy, cue_env, chunk_length=0, n_steps=32, batch_size=16)


# ---------------------------------------------------------------- keyed dropout


DROPOUT_RIMS = {**SMALL_RIMS, "input_dropout": 0.3, "comm_dropout": 0.3}


@pytest.mark.parametrize("critic", ["own", "shared"])
def test_keyed_dropout_training_forward_reproduces_the_rollout(critic: str) -> None:
    """With dropout on (0.3) and the policy in train mode, as in PPO's update, the recomputed log-probs
    and values equal the rollout's: the masks are redrawn from the stored keys. Other keys do not."""
    critic_kwargs = (
        {"enable_critic_lstm": True}
        if critic == "own"
        else {"enable_critic_lstm": False, "shared_lstm": True, "critic_grad_through_core": True}
    )
    policy_kwargs = {"rims_kwargs": dict(DROPOUT_RIMS), "keyed_dropout": True, **critic_kwargs}
    model = collected_model(ChunkedRecurrentPPO, MlpRimsPolicy, policy_kwargs, chunk_length=8, batch_size=16)
    policy = model.policy.train()
    checked, keyed, largest_change = 0, 0, 0.0
    for batch in model.rollout_buffer.get(model.batch_size):
        actions, starts = batch.actions.long().flatten(), batch.episode_starts
        real = batch.mask > 1e-8
        h, c, keys = batch.lstm_states.pi
        assert keys.shape == (8, h.shape[1]) and keys.dtype == th.int64
        with th.no_grad():
            values, log_prob, _ = policy.evaluate_actions(
                batch.observations, actions, batch.lstm_states, starts
            )
            other = RNNStates((h, c, th.where(keys >= 0, keys + 1, keys)), batch.lstm_states.vf)
            other_values, other_log_prob, _ = policy.evaluate_actions(
                batch.observations, actions, other, starts
            )
        th.testing.assert_close(log_prob[real], batch.old_log_prob[real], rtol=0, atol=1e-5)
        th.testing.assert_close(values.flatten()[real], batch.old_values[real], rtol=0, atol=1e-5)
        assert float((other_log_prob - log_prob)[real].abs().max()) > 0
        largest_change = max(largest_change, float((other_values - values).flatten()[real].abs().max()))
        checked += int(real.sum())
        keyed += int((keys >= 0).sum())
    assert checked == 160 and keyed >= 160 - 4  # only each env's very first step has no key
    assert largest_change > 1e-2, "dropout with other keys must change the values"


def test_keyed_dropout_masks_follow_the_key_not_the_batch_position() -> None:
    drop = KeyedDropout(0.25, batch_dim=1, salt=7)
    x = th.ones(4, 3, 50)  # [n, B, features], batch in dim 1 as RIMs' input attention
    keys = th.tensor([[11, 5, 11], [5, -1, 11]])
    with drop.use_keys(keys):
        first, second = drop(x), drop(x)
    th.testing.assert_close(first[:, 0], first[:, 2])  # same key, other position: same mask
    th.testing.assert_close(first[:, 1], second[:, 0])
    assert not th.equal(first[:, 0], first[:, 1])
    th.testing.assert_close(second[:, 1], x[:, 1])  # no key: no dropout
    kept = (first > 0).float().mean()
    assert 0.65 < kept < 0.85 and th.allclose(first[first > 0], th.tensor(1 / 0.75))
    with pytest.raises(RuntimeError, match="called more than"), drop.use_keys(keys[:1]):
        drop(x), drop(x)


def test_keyed_dropout_needs_the_chunked_buffer_and_a_rims_core(cue_env: VecEnv) -> None:
    policy_kwargs = {"rims_kwargs": dict(DROPOUT_RIMS), "keyed_dropout": True}
    model = RecurrentPPO(MlpRimsPolicy, cue_env, n_steps=16, batch_size=16, policy_kwargs=policy_kwargs)
    with pytest.raises(RuntimeError, match="ChunkedRecurrentPPO"):
        model.learn(32)
    with pytest.raises(ValueError, match="keyed_dropout needs a core with attention dropout"):
        MlpRimsPolicy(OBS, ACT, lr, core="lstm", keyed_dropout=True)


# ---------------------------------------------------------------- spatial input for RIMs


class ImageCueEnv(gym.ObservationWrapper):
    """``CueMemoryEnv`` seen as a 1x12x12 image: each of the 3 observation entries lights a band."""

    def __init__(self, delay: int = 3) -> None:
        super().__init__(CueMemoryEnv(delay))
        self.observation_space = spaces.Box(0, 255, (1, 12, 12), np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        image = np.zeros((1, 12, 12), np.uint8)
        for i, on in enumerate(observation):
            image[0, 4 * i : 4 * i + 4, 4 * i : 4 * i + 4] = 255 * int(on)
        return image


SPATIAL_KWARGS = {
    "rims_kwargs": dict(SMALL_RIMS),
    "features_extractor_kwargs": {"slot_size": 8, "convs": ((8, 3, 2), (8, 3, 1))},
}


def test_spatial_extractor_keeps_positions_apart() -> None:
    space = spaces.Box(0, 255, (1, 12, 12), np.uint8)
    extractor = SpatialCNN(space, slot_size=8, convs=((8, 3, 2), (8, 3, 1)))
    assert extractor.n_slots == 9 and extractor.features_dim == 72  # 12 -> 5 -> 3: a 3x3 map
    gen = th.Generator().manual_seed(0)
    image = th.rand(2, 1, 12, 12, generator=gen)
    touched = image.clone()
    touched[:, :, 0, 0] += 1.0  # only the top-left position's receptive field sees this pixel
    with th.no_grad():
        before, after = (extractor(x).view(2, 9, 8) for x in (image, touched))
    changed = (before - after).abs().amax(dim=(0, 2)) > 0
    assert changed.tolist() == [True] + [False] * 8


def test_slot_rims_reads_the_positions_as_slots() -> None:
    policy = SpatialCnnRimsPolicy(spaces.Box(0, 255, (1, 12, 12), np.uint8), ACT, lr, **SPATIAL_KWARGS)
    core = policy.lstm_actor.eval()  # no dropout: compare the computations
    assert isinstance(core, SlotInput) and (core.n_slots, core.slot_size) == (9, 8)
    assert core.input_key.in_features == 8  # keys and values per slot, not per flat vector
    plain = RIMs(8, core.hidden_size, **{k: v for k, v in SMALL_RIMS.items() if k != "unit_size"})
    plain.load_state_dict(core.state_dict())
    plain.eval()
    gen = th.Generator().manual_seed(1)
    x = th.randn(5, 3, 72, generator=gen)
    starts = (th.rand(5, 3, generator=gen) < 0.3).float()
    with th.no_grad():
        out, (h, _) = core(x, episode_starts=starts)
        ref, (h_ref, _) = plain(x.view(5, 3, 9, 8), episode_starts=starts)
    th.testing.assert_close(out, ref)
    th.testing.assert_close(h, h_ref)
    with pytest.raises(ValueError, match="9 slots of 8"):
        core(th.randn(5, 3, 9, 7))


def test_spatial_policy_trains_with_chunks_and_reproduces_the_rollout(tmp_path) -> None:
    env = make_vec_env(ImageCueEnv, n_envs=2, seed=0)
    policy_kwargs = {
        **SPATIAL_KWARGS,
        "shared_lstm": True,
        "enable_critic_lstm": False,
        "keyed_dropout": True,
    }
    model = ChunkedRecurrentPPO(
        SpatialCnnRimsPolicy,
        env,
        chunk_length=8,
        n_steps=16,
        batch_size=16,
        n_epochs=1,
        seed=0,
        policy_kwargs=policy_kwargs,
    )
    model.learn(32)
    model.rollout_buffer.reset()
    callback = CallbackList([])
    callback.init_callback(model)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
    policy = model.policy.train()
    for batch in model.rollout_buffer.get(16):
        with th.no_grad():
            _, log_prob, _ = policy.evaluate_actions(
                batch.observations, batch.actions.long().flatten(), batch.lstm_states, batch.episode_starts
            )
        th.testing.assert_close(log_prob, batch.old_log_prob, rtol=0, atol=1e-5)
    model.save(tmp_path / "spatial.zip")
    loaded = ChunkedRecurrentPPO.load(tmp_path / "spatial.zip", env=env)
    assert isinstance(loaded.policy.lstm_actor, SlotInput) and loaded.policy.lstm_actor.n_slots == 9
    obs = env.reset()
    a1, _ = model.predict(obs, episode_start=np.ones(2, bool), deterministic=True)
    a2, _ = loaded.predict(obs, episode_start=np.ones(2, bool), deterministic=True)
    assert np.array_equal(a1, a2)
