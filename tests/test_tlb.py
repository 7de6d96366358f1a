"""Temporal Latent Bottleneck core: chunk-parallel sequence == step by step, slow stream only at chunk ends,
the minimal state, gradients, width defaults, errors. (Generic contract checks live in the contract suite.)"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from rims_rl.cores import tlb_ext
from rims_rl.cores.tlb import TemporalLatentBottleneck, default_d_model

IN = 5


def small_tlb(**kwargs: object) -> TemporalLatentBottleneck:
    torch.manual_seed(0)
    kwargs = {"n_latents": 2, "chunk_size": 3, "n_heads": 2, "d_model": 8, **kwargs}
    return TemporalLatentBottleneck(IN, 12, **kwargs).double()  # type: ignore[arg-type]


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64)


def warm_state(core: TemporalLatentBottleneck, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A state reached with staggered episode starts: rows sit at different chunk positions (some > 0) and
    hold non-trivial latents and chunk memory."""
    x = randn(4, batch, IN)
    starts = torch.zeros(4, batch)
    for b in range(batch):
        starts[b % 4, b] = 1.0
    with torch.no_grad():
        _, state = core(x, None, starts)
    return state


def step_by_step(core: TemporalLatentBottleneck, x: torch.Tensor, state, starts: torch.Tensor):
    outs = []
    for t in range(x.shape[0]):
        o, state = core(x[t : t + 1], state, starts[t : t + 1])
        outs.append(o)
    return torch.cat(outs), state


@pytest.mark.parametrize("n_layers, chunk_size", [(1, 3), (2, 3), (1, 1), (1, 4)])
def test_sequence_call_equals_step_by_step_with_starts_anywhere(n_layers: int, chunk_size: int) -> None:
    """Per-row chunk alignment: carried positions > 0, starts mid-chunk, at t=0, right after a chunk end."""
    core = small_tlb(n_layers=n_layers, chunk_size=chunk_size)
    T, B = 13, 5
    state = warm_state(core, B)
    if chunk_size > 1:
        assert int(core.unpack_state(state)[2].max()) > 0  # some rows start mid-chunk
    x = randn(T, B, IN)
    starts = torch.zeros(T, B)
    starts[0, 0] = starts[4, 1] = starts[5, 2] = starts[9, 1] = starts[10, 1] = starts[3, 3] = 1.0
    out, (h, c) = core(x, state, starts)
    ref, (hs, cs) = step_by_step(core, x, state, starts)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(hs, h, rtol=0, atol=1e-12)
    torch.testing.assert_close(cs, c, rtol=0, atol=1e-12)


def test_training_is_chunk_parallel() -> None:
    """One fast-stream call per round of chunks (about T/K plus cuts), not one per step."""
    core = small_tlb(chunk_size=4)
    core.train_ext = False  # the Python loop over rounds (the C++ one makes the same calls)
    calls = []
    fast = core._fast
    core._fast = lambda a, *rest: calls.append(a.shape) or fast(a, *rest)  # type: ignore[method-assign]
    T, B = 32, 3
    core(randn(T, B, IN))
    assert calls == [(B, 4, 8)] * (T // 4)
    calls.clear()
    _, state = core(randn(2, B, IN))  # every row at position 2
    starts = torch.zeros(T, B)
    starts[5, 0] = starts[17, 2] = 1.0
    core(randn(T, B, IN), state, starts)
    # Carried position 2: instances cut at t=1, 5, 9, ... plus one extra per start off the grid (row 0 at 5
    # is on it, row 2 at 17 is not).
    assert len(calls) == 1 + T // 4 + 1


def test_slow_state_changes_only_at_chunk_ends() -> None:
    core = small_tlb(chunk_size=3)
    B = 3
    s = warm_state(core, B)
    x = randn(10, B, IN)
    with torch.no_grad():
        for t in range(10):
            slow, _, pos = core.unpack_state(s)
            _, s = core(x[t : t + 1], s)
            new_slow, _, new_pos = core.unpack_state(s)
            ended = pos == core.chunk_size - 1
            torch.testing.assert_close(new_pos, torch.where(ended, 0, pos + 1))
            for b in range(B):
                assert (not torch.equal(new_slow[b], slow[b])) == bool(ended[b]), (t, b, int(pos[b]))


def test_outputs_inside_a_chunk_see_earlier_chunks_only_through_the_latents() -> None:
    """In one sequence call over two chunks, the second chunk's outputs are those of a fresh call that is
    given only the latents after the first chunk (empty memory, position 0)."""
    core = small_tlb(chunk_size=3)
    x = randn(6, 2, IN)
    with torch.no_grad():
        out, _ = core(x)
        _, after_first = core(x[:3])
        slow, memory, pos = core.unpack_state(after_first)
        assert pos.tolist() == [0, 0] and memory.abs().max() == 0  # a chunk end leaves only the latents
        only_latents = core.pack_state(slow, torch.zeros_like(memory), pos)
        second, _ = core(x[3:], only_latents)
        other_first = x.clone()
        other_first[:3] = randn(3, 2, IN)
        changed, _ = core(other_first)
    torch.testing.assert_close(out[3:], second, rtol=0, atol=1e-12)
    assert not torch.allclose(changed[3:], out[3:])  # ... and the latents do carry the first chunk


def test_state_holds_latents_chunk_inputs_and_position_only() -> None:
    core = small_tlb(n_latents=2, chunk_size=4, d_model=8)
    N, K, d = 2, 4, 8
    assert core.state_size == -(-(N * d + (K - 1) * d + 1) // 2) == 21
    x = randn(6, 2, IN)
    with torch.no_grad():
        _, state = core(x)
        slow, memory, pos = core.unpack_state(state)
        # After 6 steps, chunk 2 holds steps 4, 5: their z^0 (embedding + chunk position), then zeros.
        z0 = core.embed(x[4:6]) + core.position[:2, None]
        torch.testing.assert_close(memory[:, :2], z0.transpose(0, 1), rtol=0, atol=1e-12)
        assert memory[:, 2:].abs().max() == 0 and pos.tolist() == [2, 2]
        h, c = core.pack_state(slow, memory, pos)
    torch.testing.assert_close(torch.cat((h, c), -1), torch.cat(state, -1), rtol=0, atol=0)
    assert core.state_size != core.output_size  # decoupled from the output width


def test_zero_state_is_the_learned_initial_latents() -> None:
    core = small_tlb()
    slow, memory, pos = core.unpack_state(core.initial_state(2))
    torch.testing.assert_close(slow, core.initial_latents.expand(2, -1, -1), rtol=0, atol=0)
    assert memory.abs().max() == 0 and pos.tolist() == [0, 0]


def test_gradcheck_float64_chunk_parallel_path() -> None:
    core = small_tlb(chunk_size=3, d_model=4, n_latents=2)
    B = 3
    h0, c0 = warm_state(core, B)  # positions differ per row, some mid-chunk
    x = randn(7, B, IN).requires_grad_(True)
    starts = torch.zeros(7, B)
    starts[2, 0] = starts[5, 1] = 1.0
    h0 = h0.clone().requires_grad_(True)
    c0 = c0.clone()
    c0[..., -1] = c0[..., -1].round()  # the position (last number) is read by rounding: keep it exact
    c0.requires_grad_(True)

    def f(x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out, (h, c) = core(x, (h0, c0), starts)
        return out, h, c

    assert torch.autograd.gradcheck(f, (x, h0, c0), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("hidden", [192, 600])
def test_default_width_and_parameters_against_lstm(hidden: int) -> None:
    core = TemporalLatentBottleneck(64, hidden)
    lstm_params = 4 * hidden * (64 + hidden + 2)
    assert lstm_params == sum(p.numel() for p in nn.LSTM(64, hidden).parameters())
    n = sum(p.numel() for p in core.parameters())
    assert core.d_model >= 64 and core.d_model % core.n_heads == 0
    assert 0.5 * lstm_params <= n <= 2.0 * lstm_params, (core.d_model, n / lstm_params)
    assert f"d_model={core.d_model}" in repr(core)


def test_default_d_model_rule() -> None:
    assert [default_d_model(h) for h in (16, 120, 192, 256, 600)] == [64, 64, 64, 80, 192]
    for heads in (1, 3, 5, 8):
        for h in (32, 192, 600):
            d = default_d_model(h, heads)
            assert d >= 64 and d % heads == 0 and d % 16 == 0
    assert TemporalLatentBottleneck(3, 600, n_heads=3).d_model == default_d_model(600, 3)


def test_stats_report_the_slow_attention_entropy() -> None:
    core = small_tlb(chunk_size=3)
    assert core.stats() == {}
    core(randn(2, 4, IN))  # no chunk has ended yet
    assert core.stats() == {}
    core(randn(4, 4, IN))
    assert core.last_slow_attention is not None
    assert core.last_slow_attention.shape == (4, core.n_heads, core.n_latents, 3)
    assert 0.0 <= core.stats()["slow_attention_entropy"] <= 1.0 + 1e-9


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"chunk_size": 0}, "chunk_size must be a positive integer"),
        ({"n_latents": 1.5}, "n_latents must be a positive integer"),
        ({"ffn_mult": True}, "ffn_mult must be a positive integer"),
        ({"d_model": 0}, "d_model must be a positive integer"),
        ({"d_model": 6, "n_heads": 4}, "divisible by n_heads"),
        ({"hidden_size": -1}, "hidden_size must be a positive integer"),
    ],
)
def test_bad_arguments_raise_one_line(kwargs: dict, message: str) -> None:
    kwargs = {"input_size": 5, "hidden_size": 40, **kwargs}
    with pytest.raises(ValueError, match=message) as err:
        TemporalLatentBottleneck(**kwargs)
    assert "\n" not in str(err.value)


def old_tlb_state_dict() -> dict[str, torch.Tensor]:
    """Keys and shapes of a checkpoint of the packed-state TLB (rims-rl < 0.2): input 5, hidden 40, d 4."""
    d = 4
    sd = {
        "embed.weight": torch.zeros(d, 5),
        "embed.bias": torch.zeros(d),
        "position": torch.zeros(8, d),
        "layers.0.norm_self.weight": torch.ones(d),
        "layers.0.self_attn.q.weight": torch.zeros(d, d),
        "layers.0.self_attn.kv.weight": torch.zeros(2 * d, d),
        "norm_out.weight": torch.ones(d),
        "out.weight": torch.zeros(40, d),
        "initial_latents": torch.zeros(4, d),
        "slow_gate.weight": torch.zeros(2 * d, 2 * d),
    }
    return sd


def test_old_checkpoint_gives_a_clear_error() -> None:
    core = TemporalLatentBottleneck(5, 40)
    for sd in (old_tlb_state_dict(), {"core." + k: v for k, v in old_tlb_state_dict().items()}):
        module = core if not next(iter(sd)).startswith("core.") else nn.ModuleDict({"core": core})
        with pytest.raises(ValueError, match=r"rims-rl < 0.2 .* retrain it") as err:
            module.load_state_dict(sd)
        assert "\n" not in str(err.value)
    # The old module's state dict carried version 1 metadata even where its keys happened to fit.
    sd = core.state_dict()
    sd._metadata[""]["version"] = 1  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="rims-rl < 0.2"):
        core.load_state_dict(sd)
    # Its own checkpoints load, with or without metadata.
    core.load_state_dict(core.state_dict())
    core.load_state_dict(dict(core.state_dict()))


# ---------------------------------------------------------------------------------------------------------
# Fast paths (issue 43) against the reference implementation (``fast_path = False``, the code before).


def perturbed_tlb(**kwargs: object) -> TemporalLatentBottleneck:
    """A small float64 TLB whose parameters are all away from their init (LN weights not 1, biases not 0,
    gate bias not +-1), so that no term of the fast paths can vanish by accident."""
    core = small_tlb(**kwargs)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in core.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return core


def random_starts(T: int, B: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    starts = (torch.rand(T, B, generator=gen) < 0.2).double()
    starts[torch.randint(0, T, (1,), generator=gen), torch.randint(0, B, (1,), generator=gen)] = 1.0
    return starts


def run_with_grads(core: TemporalLatentBottleneck, fast: bool, x, state, starts):
    """Outputs, final state and the gradients of every parameter, x, h0 and c0 of one sequence call."""
    core.fast_path = fast
    core.zero_grad()
    x = x.clone().requires_grad_(True)
    h0, c0 = (s.clone().requires_grad_(True) for s in state)
    out, (h, c) = core(x, (h0, c0), starts)
    gen = torch.Generator().manual_seed(11)
    weights = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in (out, h, c)]
    sum((t * w).sum() for t, w in zip((out, h, c), weights, strict=True)).backward()
    grads = {name: p.grad.clone() for name, p in core.named_parameters()}
    return out.detach(), h.detach(), c.detach(), x.grad, h0.grad, c0.grad, grads


@pytest.mark.parametrize("n_layers, chunk_size", [(1, 3), (2, 3), (1, 1), (1, 4), (2, 5)])
@pytest.mark.parametrize("with_starts", [True, False])
def test_fast_sequence_call_equals_reference_with_gradients(
    n_layers: int, chunk_size: int, with_starts: bool
) -> None:
    """Outputs, final states and gradients of every parameter, of x and of the initial state: float64,
    rows at different carried positions, episode starts at random positions."""
    core = perturbed_tlb(n_layers=n_layers, chunk_size=chunk_size)
    T, B = 17, 6
    state = warm_state(core, B)
    state[1][..., -1] = state[1][..., -1].round()  # the position is read by rounding (see gradcheck)
    x = randn(T, B, IN)
    starts = random_starts(T, B, seed=chunk_size) if with_starts else None
    ref = run_with_grads(core, False, x, state, starts)
    new = run_with_grads(core, True, x, state, starts)
    names = ["out", "h", "c", "grad x", "grad h0", "grad c0"]
    for name, a, b in zip(names, ref[:6], new[:6], strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12, msg=name)
    assert set(ref[6]) == {name for name, _ in core.named_parameters()}
    for name, g in ref[6].items():
        assert g.abs().max() > 0 or chunk_size == 1, name  # every parameter is used (K=1: softmax of one)
        torch.testing.assert_close(new[6][name], g, rtol=0, atol=1e-12, msg=name)


def test_fast_sequence_call_from_no_state_equals_reference() -> None:
    core = perturbed_tlb(chunk_size=4)
    x = randn(9, 3, IN)
    with torch.no_grad():
        core.fast_path = False
        ref, (h_ref, c_ref) = core(x)
        core.fast_path = True
        out, (h, c) = core(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat((h, c), -1), torch.cat((h_ref, c_ref), -1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_rounds_are_the_python_rounds_bit_for_bit(dtype: torch.dtype) -> None:
    """The C++ loop over rounds (``train_ext``) makes the Python loop's ATen calls with autograd: outputs,
    final state and every gradient are the same bits."""
    if tlb_ext.extension() is None:
        pytest.skip("the C++ loop does not build here")
    core = perturbed_tlb(chunk_size=3)
    T, B = 16, 5
    state = warm_state(core, B)
    state[1][..., -1] = state[1][..., -1].round()
    core.to(dtype)
    x, starts = randn(T, B, IN).to(dtype), random_starts(T, B, seed=9).to(dtype)
    state = tuple(s.to(dtype) for s in state)
    results = []
    for ext in (False, True):
        core.train_ext = ext
        results.append(run_with_grads(core, True, x, state, starts))
    py, cpp = results
    for a, b in zip(py[:6], cpp[:6], strict=True):
        assert torch.equal(a, b)
    for name, g in py[6].items():
        assert torch.equal(cpp[6][name], g), name
    assert core.last_slow_attention is not None


def rollout(core: TemporalLatentBottleneck, x, state, starts):
    """No-grad single steps (sb3's rollout calls): outputs, final state, the slow attention after each."""
    outs, attention = [], []
    core._slow_qk = core._slow_probs = None  # no slow attention left by an earlier call
    with torch.no_grad():
        for t in range(x.shape[0]):
            o, state = core(x[t : t + 1], state, starts[t : t + 1])
            outs.append(o)
            attention.append(core.last_slow_attention)
    return torch.cat(outs), state, attention


@pytest.mark.parametrize("chunk_size", [3, 1, 4])
@pytest.mark.parametrize("ext", [False, True])
def test_rollout_step_equals_reference(chunk_size: int, ext: bool) -> None:
    """The no-grad step (new slot only; Python or C++) against the reference step (whole chunk)."""
    if ext and tlb_ext.extension() is None:
        pytest.skip("the C++ step does not build here")
    core = perturbed_tlb(chunk_size=chunk_size)
    T, B = 14, 5
    state = warm_state(core, B)
    x, starts = randn(T, B, IN), random_starts(T, B, seed=3)
    core.fast_path = False
    ref_out, ref_state, ref_att = rollout(core, x, state, starts)
    core.fast_path, core.step_ext = True, ext
    out, new_state, att = rollout(core, x, state, starts)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat(new_state, -1), torch.cat(ref_state, -1), rtol=0, atol=1e-12)
    assert len(att) == len(ref_att)
    for a, r in zip(att, ref_att, strict=True):
        assert (a is None) == (r is None)
        if a is not None:
            torch.testing.assert_close(a, r, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_step_is_the_python_step_bit_for_bit(dtype: torch.dtype) -> None:
    """Without its cache the C++ step makes the Python step's ATen calls: the same bits. With the cache
    (keys and values of earlier slots computed by earlier steps) it agrees to float rounding."""
    if tlb_ext.extension() is None:
        pytest.skip("the C++ step does not build here")
    torch.manual_seed(0)
    core = TemporalLatentBottleneck(IN, 40, chunk_size=4).double()
    T, B = 12, 7
    state = tuple(s.to(dtype) for s in warm_state(core, B))
    core.to(dtype)
    x, starts = randn(T, B, IN).to(dtype), random_starts(T, B, seed=5).to(dtype)
    core.step_ext = False
    py = rollout(core, x, state, starts)
    core.step_ext, core.step_cache = True, False
    cpp = rollout(core, x, state, starts)
    assert torch.equal(cpp[0], py[0])
    assert torch.equal(torch.cat(cpp[1], -1), torch.cat(py[1], -1))
    assert torch.equal(cpp[2][-1], py[2][-1])
    core.step_cache = True
    cached = rollout(core, x, state, starts)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(cached[0], py[0], rtol=0, atol=tol)
    torch.testing.assert_close(torch.cat(cached[1], -1), torch.cat(py[1], -1), rtol=0, atol=tol)


def test_step_cache_is_used_only_for_the_state_it_returned() -> None:
    """The cache is handed to the next step only when that step continues from the very (h, c) the last
    one returned, and used only if neither they nor any weight changed since (versions and data
    pointers). Every case equals the reference."""
    if tlb_ext.extension() is None:
        pytest.skip("the C++ step does not build here")
    core = perturbed_tlb(chunk_size=3)
    B = 4
    x = randn(6, B, IN)

    def check(state, t: int):
        core.fast_path = False
        with torch.no_grad():
            ref, ref_state = core(x[t : t + 1], state)
        core.fast_path = True
        with torch.no_grad():
            out, new_state = core(x[t : t + 1], state)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(torch.cat(new_state, -1), torch.cat(ref_state, -1), rtol=0, atol=1e-12)
        runner = core._runner()
        return new_state, (runner.handed, runner.hits)

    state, counts = check(warm_state(core, B), 0)  # nothing cached yet
    assert counts == (0, 0)
    state, counts = check(state, 1)  # continues from the returned state: handed over and used
    assert counts == (1, 1)
    with torch.no_grad():
        core.fast_layers[0].self_attn.kv.weight.mul_(1.1)  # an optimizer step: the cached keys are stale
    state, counts = check(state, 2)
    assert counts == (2, 1)  # handed over, refused by the key (weights' versions)
    state, counts = check(tuple(s.clone() for s in state), 3)  # equal values, other tensors
    assert counts == (2, 1)
    state, counts = check(state, 4)
    assert counts == (3, 2)
    with torch.no_grad():
        state[0][..., 0] += 0.5  # the state changed in place: its version changes
    _, counts = check(state, 5)
    assert counts == (4, 2)


def test_rollout_step_after_a_weight_change_uses_the_new_weights() -> None:
    """The C++ step holds the parameter objects, not copies: an in-place update (an optimizer step) and a
    load_state_dict are seen by the next step."""
    core = perturbed_tlb(chunk_size=3)
    x, state = randn(1, 4, IN), warm_state(core, 4)
    with torch.no_grad():
        before, _ = core(x, state)
        other = perturbed_tlb(chunk_size=3)
        other.embed.weight.data.mul_(1.5)
        core.load_state_dict(other.state_dict())
        after, _ = core(x, state)
        core.fast_path = False
        ref, _ = core(x, state)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, ref, rtol=0, atol=1e-12)


def test_failed_build_falls_back_to_the_python_step_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compiler() -> None:
        raise RuntimeError("Ninja is required to load C++ extensions\nmore lines of the build log")

    core = perturbed_tlb(chunk_size=3)
    x, state = randn(4, 3, IN), warm_state(core, 3)
    monkeypatch.setattr(tlb_ext, "_build", no_compiler)
    monkeypatch.setattr(tlb_ext, "_STATE", {})
    monkeypatch.delenv("RIMS_RL_NO_EXT", raising=False)
    starts = torch.zeros(4, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, _, _ = rollout(core, x, state, starts)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "\n" not in messages[0] and "Ninja is required" in messages[0]
    core.fast_path = False
    torch.testing.assert_close(out, rollout(core, x, state, starts)[0], rtol=0, atol=1e-12)


def test_no_ext_environment_variable_skips_the_build_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_build() -> None:
        raise AssertionError("built although RIMS_RL_NO_EXT=1")

    monkeypatch.setattr(tlb_ext, "_build", must_not_build)
    monkeypatch.setattr(tlb_ext, "_STATE", {})
    monkeypatch.setenv("RIMS_RL_NO_EXT", "1")
    core = small_tlb()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            core(randn(1, 2, IN))
    assert tlb_ext.extension() is None


def test_no_grad_step_builds_no_graph_and_grad_step_equals_it() -> None:
    """T=1 with autograd on (not a rollout) takes the sequence path; same numbers."""
    core = perturbed_tlb(chunk_size=3)
    x, state = randn(1, 4, IN), warm_state(core, 4)
    with torch.no_grad():
        out, (h, c) = core(x, state)
    assert not out.requires_grad and not h.requires_grad
    out_g, (h_g, c_g) = core(x, state)
    assert out_g.requires_grad
    torch.testing.assert_close(out_g.detach(), out, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat((h_g, c_g), -1).detach(), torch.cat((h, c), -1), rtol=0, atol=1e-12)
