"""Temporal Latent Bottleneck core: chunk-parallel sequence == step by step, slow stream only at chunk ends,
the minimal state, gradients, width defaults, errors. (Generic contract checks live in the contract suite.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

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
