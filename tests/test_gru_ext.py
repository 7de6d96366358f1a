"""The GRU core's C++ time loop (``rims_rl.cores.gru_ext``) computes what ``nn.GRU`` and sb3-contrib's
per-step loop compute: outputs, final state and the gradients of every parameter, the input and h0, with
episode starts at random positions (float64 to rounding, float32 close); without grad it builds no graph;
where it cannot run (no compiler, ``RIMS_RL_NO_EXT=1``, other dtypes, dropout between layers in training)
the core is ``nn.GRU`` and the policy cuts sequences at their starts as before.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from test_segments import compare, counting_calls, starts_pattern
from torch import nn

from rims_rl.copying import make_core
from rims_rl.cores import gru_ext
from rims_rl.cores.gru import GRUCore
from rims_rl.policies import RimsActorCriticPolicy

needs_ext = pytest.mark.skipif(gru_ext.extension() is None, reason="the C++ GRU loop could not be built here")


def loop_reference(core: GRUCore, x: torch.Tensor, h0: torch.Tensor, starts: torch.Tensor | None) -> tuple:
    """``nn.GRU`` itself: one call without starts, else a step at a time with the state multiplied by
    ``1 - start`` before each step (sb3-contrib's loop)."""
    if starts is None:
        return nn.GRU.forward(core, x, h0)
    outs, h = [], h0
    for t in range(x.shape[0]):
        out, h = nn.GRU.forward(core, x[t : t + 1], (1.0 - starts[t]).view(1, -1, 1) * h)
        outs.append(out)
    return torch.cat(outs), h


def random_starts(T: int, B: int, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    starts = (torch.rand(T, B, generator=gen) < 0.2).to(dtype)
    starts[T // 2, 0] = 1.0  # at least one inside
    starts[0, B - 1] = 1.0  # and one at step 0
    return starts


def run_both(
    core: GRUCore, T: int, B: int, dtype: torch.dtype, with_starts: bool, seed: int = 0
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(values, gradients) of the C++ loop and of ``nn.GRU``'s loop for one random problem."""
    gen = torch.Generator().manual_seed(seed)
    core = core.to(dtype)
    H, L = core.hidden_size, core.num_layers
    x0 = torch.randn(T, B, core.input_size, generator=gen, dtype=dtype)
    h00 = torch.randn(L, B, H, generator=gen, dtype=dtype)
    w_out = torch.randn(T, B, H, generator=gen, dtype=dtype)
    w_h = torch.randn(L, B, H, generator=gen, dtype=dtype)
    starts = random_starts(T, B, gen, dtype) if with_starts else None
    results = []
    for fused in (True, False):
        core.zero_grad()
        x, h0 = x0.clone().requires_grad_(), h00.clone().requires_grad_()
        if fused:
            assert core._fused(x, h0)
            out, (h, c) = core(x, (h0, torch.zeros_like(h0)), episode_starts=starts)
            assert not c.any()
            assert type(out.grad_fn).__name__ == "_GRULoopBackward"
        else:
            out, h = loop_reference(core, x, h0, starts)
        ((out * w_out).sum() + (h * w_h).sum()).backward()
        grads = [x.grad, h0.grad] + [p.grad for p in core.parameters()]
        assert all(g is not None for g in grads)
        results.append(([out, h], grads))
    (values, grads), (ref_values, ref_grads) = results
    return values + grads, ref_values + ref_grads


@needs_ext
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_starts", [True, False])
@pytest.mark.parametrize("T, B", [(9, 5), (1, 3)])
def test_fused_loop_equals_nn_gru_float64(layers: int, bias: bool, with_starts: bool, T: int, B: int) -> None:
    torch.manual_seed(0)
    core = GRUCore(4, 6, num_layers=layers, bias=bias).train()
    ours, ref = run_both(core, T, B, torch.float64, with_starts)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@needs_ext
def test_fused_loop_float32_at_the_chunk_shape() -> None:
    """PPO's chunk shape (B=8, T=32, width 192, input 64), starts inside."""
    torch.manual_seed(0)
    core = GRUCore(64, 192)
    for seed in range(2):
        ours, ref = run_both(core, 32, 8, torch.float32, True, seed=seed)
        for a, b in zip(ours, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@needs_ext
def test_no_grad_call_equals_grad_call_and_builds_no_graph() -> None:
    torch.manual_seed(0)
    core = GRUCore(5, 7, num_layers=2)
    gen = torch.Generator().manual_seed(3)
    x, h0 = torch.randn(6, 4, 5, generator=gen), torch.randn(2, 4, 7, generator=gen)
    starts = random_starts(6, 4, gen, torch.float32)
    out, (h, _) = core(x, (h0, h0), episode_starts=starts)
    with torch.no_grad():
        out_ng, (h_ng, _) = core(x, (h0, h0), episode_starts=starts)
    assert out.requires_grad and out_ng.grad_fn is None and h_ng.grad_fn is None
    assert torch.equal(out, out_ng) and torch.equal(h, h_ng)
    with torch.no_grad():  # and the rollout's T=1 calls, state carried, equal one sequence call
        state = (h0, h0)
        steps = []
        for t in range(6):
            o, state = core(x[t : t + 1], state, episode_starts=starts[t : t + 1])
            steps.append(o)
    torch.testing.assert_close(torch.cat(steps), out_ng, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(state[0], h_ng, rtol=1e-6, atol=1e-6)


@needs_ext
def test_the_policy_runs_a_chunk_with_starts_inside_in_one_fused_call() -> None:
    """``_process_sequence`` gives the core its starts (one call) and matches sb3-contrib's loop; with the
    C++ loop off the core is ``nn.GRU`` and the policy cuts the sequences into segments as before."""
    torch.manual_seed(0)
    core = make_core("gru", 5, 7)
    assert isinstance(core, GRUCore) and core.takes_episode_starts
    starts = starts_pattern("mixed", 6, 4, torch.Generator())
    compare(core, 6, 4, starts, torch.float64, 1e-10)  # asserts one call of the core
    x = torch.randn(24, 5, dtype=torch.float64)
    state = (torch.zeros(1, 4, 7, dtype=torch.float64),) * 2
    flat = starts.transpose(0, 1).reshape(-1)
    with counting_calls(core) as calls:
        RimsActorCriticPolicy._process_sequence(x, state, flat, core)
    assert calls[0] == 1
    core.fused_loop = False
    assert not core.takes_episode_starts
    compare(core, 6, 4, starts, torch.float64, 1e-10)  # _run_segments: one packed nn.GRU call


@needs_ext
def test_where_the_loop_does_not_run_the_core_is_nn_gru() -> None:
    torch.manual_seed(0)
    core = GRUCore(5, 7, num_layers=2, dropout=0.5).train()
    assert not core.takes_episode_starts  # nn.GRU's own dropout draws between layers
    core.eval()
    assert core.takes_episode_starts
    x = torch.randn(4, 3, 5)
    assert not core._fused(x.double(), None)  # dtypes that differ: nn.GRU raises its own error
    assert not core._fused(torch.randn(4, 3, 6), None)  # wrong width: nn.GRU's error message
    with pytest.raises(RuntimeError, match="input.size"):
        core(torch.randn(4, 3, 6))
    with pytest.raises(ValueError, match="episode_starts must have shape"):
        core(x, episode_starts=torch.zeros(3, 4))
    assert not GRUCore(5, 7, bidirectional=True).takes_episode_starts
    assert not core.to(torch.bfloat16).takes_episode_starts


def test_checkpoints_keep_nn_gru_parameter_names() -> None:
    """Same parameters as ``nn.GRU`` (checkpoints load unchanged); ``fused_loop`` is not saved."""
    torch.manual_seed(0)
    gru = nn.GRU(5, 7, num_layers=2)
    core = GRUCore(5, 7, num_layers=2)
    assert list(core.state_dict()) == list(gru.state_dict())
    core.load_state_dict(gru.state_dict())
    x = torch.randn(6, 3, 5)
    torch.testing.assert_close(core(x)[0], gru(x)[0], rtol=1e-5, atol=1e-6)


def test_failed_build_falls_back_to_nn_gru_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compiler() -> None:
        raise RuntimeError("Ninja is required to load C++ extensions\nmore lines of the build log")

    monkeypatch.setattr(gru_ext, "_build", no_compiler)
    monkeypatch.setattr(gru_ext, "_STATE", {})
    monkeypatch.delenv("RIMS_RL_NO_EXT", raising=False)
    torch.manual_seed(0)
    core = make_core("gru", 5, 7).double()
    gen = torch.Generator().manual_seed(1)
    starts = starts_pattern("mixed", 6, 4, gen)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not core.takes_episode_starts
        x = torch.randn(6, 4, 5, dtype=torch.float64)
        out, _ = core(x)
        out.sum().backward()
        compare(core, 6, 4, starts, torch.float64, 1e-10)  # the policy's segments, as before
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "\n" not in messages[0] and "Ninja is required" in messages[0]
    assert "GRU" in messages[0]
    assert gru_ext.extension() is None
    torch.testing.assert_close(out, nn.GRU.forward(core, x)[0], rtol=0, atol=0)


def test_no_ext_environment_variable_skips_the_build_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_build() -> None:
        raise AssertionError("built although RIMS_RL_NO_EXT=1")

    monkeypatch.setattr(gru_ext, "_build", must_not_build)
    monkeypatch.setattr(gru_ext, "_STATE", {})
    monkeypatch.setenv("RIMS_RL_NO_EXT", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        core = GRUCore(5, 7)
        assert not core.takes_episode_starts
        core(torch.randn(3, 2, 5))
        core(torch.randn(3, 2, 5), episode_starts=torch.zeros(3, 2))
    assert gru_ext.extension() is None


def test_the_extension_has_its_own_build_name() -> None:
    """Its own torch cache entry: building it does not replace the RIMs loop's."""
    from rims_rl.cores import rims_ext

    assert gru_ext.EXTENSION_NAME != rims_ext.EXTENSION_NAME
