"""Episode starts inside training sequences, for torch LSTM/GRU cores: one or two calls of the core
(``rims_rl.policies._run_segments``) compute what sb3-contrib's per-step loop computes.

Compared: outputs, final states and the gradients of a loss on both with respect to the inputs, the
carried states and every core parameter, in float64 (and float32 at PPO's chunk shape), and the number
of core calls per ``_process_sequence``: one (no start after step 0, or a GRU), two (an LSTM: the
outputs, then the final states), against one per step for the loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch as th
from rollout_check import check_buffer
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.env_util import make_vec_env
from torch import nn

from rims_rl.copying import make_core
from rims_rl.envs.memory import CueMemoryEnv
from rims_rl.policies import MlpRimsPolicy, RimsActorCriticPolicy
from rims_rl.ppo import ChunkedRecurrentPPO

IN, WIDTH = 5, 7


@contextmanager
def counting_calls(core: nn.Module) -> Iterator[list[int]]:
    """Count the calls of ``core`` (its forward) while the context is open: ``count[0]``."""
    count = [0]

    def hook(*_: object) -> None:
        count[0] += 1

    handle = core.register_forward_pre_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


def starts_pattern(kind: str, T: int, n_seq: int, gen: th.Generator) -> th.Tensor:
    """[T, n_seq] episode starts of a named pattern (always with a start after step 0 where T > 1)."""
    if kind == "random":
        starts = (th.rand(T, n_seq, generator=gen) < 0.3).double()
        starts[T // 2, 0] = 1.0  # at least one start inside
        return starts
    starts = th.zeros(T, n_seq, dtype=th.float64)
    if kind == "mixed":  # several starts in one sequence, a start at step 0, sequences without starts
        starts[[1, 3, 4], 0] = 1.0  # several, two of them adjacent (a one-step segment)
        starts[0, 1] = starts[T - 1, 1] = 1.0  # at step 0 and at the last step
        starts[2, 3] = 1.0  # sequence 2 has none
    elif kind == "every-step":
        starts[:] = 1.0
    elif kind == "first-only":  # T=1 or no start inside: a single segment per sequence
        starts[0, ::2] = 1.0
    return starts


def compare(
    core: nn.Module, T: int, n_seq: int, starts: th.Tensor, dtype: th.dtype, tol: float, seed: int = 0
) -> None:
    """Outputs, final states and gradients of our call vs sb3-contrib's loop; 1-2 calls vs T calls."""
    gen = th.Generator().manual_seed(seed)
    core = core.to(dtype)
    width = core.hidden_size
    layers = core.num_layers
    feats = th.randn(n_seq * T, IN, generator=gen, dtype=dtype)
    h0 = th.randn(layers, n_seq, width, generator=gen, dtype=dtype)
    c0 = th.randn(layers, n_seq, width, generator=gen, dtype=dtype)
    w_out = th.randn(n_seq * T, width, generator=gen, dtype=dtype)
    w_h, w_c = (th.randn(layers, n_seq, width, generator=gen, dtype=dtype) for _ in range(2))
    flat_starts = starts.transpose(0, 1).reshape(-1).to(dtype)  # sb3-contrib's flat order: b * T + t
    results = []
    for run in (RimsActorCriticPolicy._process_sequence, RecurrentActorCriticPolicy._process_sequence):
        core.zero_grad()
        x, h, c = (t.clone().requires_grad_() for t in (feats, h0, c0))
        with counting_calls(core) as calls:
            out, (h_n, c_n) = run(x, (h, c), flat_starts, core)  # type: ignore[arg-type]
        loss = (out * w_out).sum() + (h_n * w_h).sum() + (c_n * w_c).sum()
        loss.backward()
        grads = [x.grad, h.grad, c.grad] + [p.grad for p in core.parameters()]
        results.append((calls[0], [out, h_n, c_n], grads))
    (ours, values, grads), (loop, ref_values, ref_grads) = results
    inside = bool(starts[1:].any())
    assert ours == (2 if inside and isinstance(core, nn.LSTM) else 1)
    assert loop == (T if starts.any() else 1)
    for a, b in zip(values + grads, ref_values + ref_grads, strict=True):
        if a is None or b is None:  # the GRU's c: carried as zeros, no gradient on either side
            assert a is None and b is None
            continue
        th.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize(
    "T, n_seq, kind",
    [
        (6, 4, "mixed"),
        (5, 3, "every-step"),
        (9, 6, "random"),
        (1, 4, "first-only"),
        (6, 4, "first-only"),
    ],
)
def test_one_call_equals_the_step_loop_float64(name: str, layers: int, T: int, n_seq: int, kind: str) -> None:
    th.manual_seed(0)
    core = make_core(name, IN, WIDTH, num_layers=layers).train()  # train: no difference without dropout
    compare(core, T, n_seq, starts_pattern(kind, T, n_seq, th.Generator().manual_seed(1)), th.float64, 1e-6)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_one_call_equals_the_step_loop_at_the_chunk_shape_float32(name: str) -> None:
    """PPO's chunked minibatches: 8 chunks of 32 steps, starts where episodes of ~20 steps end."""
    th.manual_seed(0)
    core = make_core(name, IN, 32)
    gen = th.Generator().manual_seed(2)
    starts = (th.rand(32, 8, generator=gen) < 0.05).double()
    starts[5, 0] = 1.0
    for seed in range(3):
        compare(core, 32, 8, starts, th.float32, 1e-5, seed=seed)


def test_a_plain_nn_lstm_takes_the_packed_path_too() -> None:
    """sb3-contrib's own module (nn.LSTM, not a registered core) given to our ``_process_sequence``."""
    th.manual_seed(0)
    lstm = nn.LSTM(IN, WIDTH)
    compare(lstm, 6, 4, starts_pattern("mixed", 6, 4, th.Generator()), th.float64, 1e-6)


def test_chunked_training_minibatches_reproduce_the_rollout_in_one_call_each() -> None:
    """ChunkedRecurrentPPO on 5-step episodes cut into 8-step chunks (starts inside chunks, chunks that
    begin mid-episode from a carried state): evaluate_actions recomputes the rollout's log-probs and
    values, with two LSTM calls per minibatch (outputs, final states)."""
    env = make_vec_env(lambda: CueMemoryEnv(4), n_envs=4, seed=0)
    policy_kwargs = {"core": "lstm", "lstm_hidden_size": 16, "enable_critic_lstm": False, "shared_lstm": True}
    model = ChunkedRecurrentPPO(
        MlpRimsPolicy,
        env,
        chunk_length=8,
        n_steps=40,
        batch_size=40,
        n_epochs=1,
        seed=0,
        policy_kwargs=policy_kwargs,
    )
    model._setup_learn(160, callback=None)
    callback = CallbackList([])
    callback.init_callback(model)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
    with counting_calls(model.policy.lstm_actor) as calls:
        checked, batches = check_buffer(model, 40)
    assert checked == 160 and calls[0] == 2 * len(batches) == 8
    starts = th.cat([b.episode_starts.reshape(-1, 8) for b in batches])  # [chunks, 8]
    assert starts[:, 1:].any(dim=1).all(), "every chunk has an episode start after its first step"
    assert not starts[:, 0].all(), "some chunks begin mid-episode, from a carried state"
