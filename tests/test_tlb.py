"""Temporal Latent Bottleneck core: step == sequence, slow stream only at chunk ends, gradients, errors."""

from __future__ import annotations

import pytest
import torch

from rims_rl.tlb import TemporalLatentBottleneck


def small_tlb(**kwargs) -> TemporalLatentBottleneck:
    torch.manual_seed(0)
    kwargs = {"n_latents": 2, "chunk_size": 3, "n_heads": 2, **kwargs}
    return TemporalLatentBottleneck(5, 40, **kwargs).double()


def warm_state(core: TemporalLatentBottleneck, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A state reached by running a few steps with staggered episode starts: rows sit at different chunk
    positions and hold non-trivial latents and memory."""
    x = torch.randn(4, batch, core.input_size, dtype=torch.float64)
    starts = torch.zeros(4, batch)
    for b in range(batch):
        starts[b % 4, b] = 1.0
    with torch.no_grad():
        _, state = core(x, None, starts)
    return state


@pytest.mark.parametrize("n_layers", [1, 2])
def test_step_by_step_equals_one_sequence_call(n_layers: int) -> None:
    core = small_tlb(n_layers=n_layers)
    T, B = 11, 4  # several chunks of 3
    state = warm_state(core, B)
    assert len(set(core.unpack_state(state)[2].tolist())) > 1  # rows at different chunk positions
    x = torch.randn(T, B, 5, dtype=torch.float64)
    starts = torch.zeros(T, B)
    starts[0, 0] = starts[4, 1] = starts[5, 2] = starts[9, 1] = 1.0
    out, (h, c) = core(x, state, starts)
    s, outs = state, []
    for t in range(T):
        o, s = core(x[t : t + 1], s, starts[t : t + 1])
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs), out, rtol=0, atol=1e-12)
    torch.testing.assert_close(s[0], h, rtol=0, atol=1e-12)
    torch.testing.assert_close(s[1], c, rtol=0, atol=1e-12)
    assert out.shape == (T, B, 40) and h.shape == c.shape == (1, B, 40)


def test_slow_state_changes_only_at_chunk_ends() -> None:
    core = small_tlb(chunk_size=3)
    B = 3
    s = warm_state(core, B)
    x = torch.randn(10, B, 5, dtype=torch.float64)
    with torch.no_grad():
        for t in range(10):
            slow, _, pos = core.unpack_state(s)
            _, s = core(x[t : t + 1], s)
            new_slow, _, new_pos = core.unpack_state(s)
            ended = pos == core.chunk_size - 1
            torch.testing.assert_close(new_pos, torch.where(ended, 0, pos + 1))
            for b in range(B):
                changed = not torch.equal(new_slow[b], slow[b])
                assert changed == bool(ended[b]), (t, b, int(pos[b]))


def test_output_inside_a_chunk_sees_earlier_chunks_only_through_the_latents() -> None:
    """At a chunk start, what the outputs of the new chunk depend on is the latents (the bottleneck)."""
    core = small_tlb(chunk_size=3)
    x = torch.randn(5, 1, 5, dtype=torch.float64)
    with torch.no_grad():
        _, s = core(torch.randn(3, 1, 5, dtype=torch.float64))  # one full chunk
        slow, memory, pos = core.unpack_state(s)
        assert int(pos) == 0 and memory.abs().max() == 0  # chunk end clears the memory
        out_a, _ = core(x, s)
        # Same latents and position, garbage in the chunk memory: at position 0 every memory slot is
        # either masked (later positions) or overwritten by the new chunk before it is read.
        s2 = core._pack_state(slow, torch.randn(1, 2, 3, core.d_model, dtype=torch.float64), pos)
        out_b, _ = core(x, s2)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=1e-12)


def test_episode_start_equals_a_fresh_call() -> None:
    core = small_tlb()
    x = torch.randn(7, 2, 5, dtype=torch.float64)
    starts = torch.zeros(7, 2)
    starts[3] = 1.0
    out, _ = core(x, warm_state(core, 2), starts)
    fresh, _ = core(x[3:])
    torch.testing.assert_close(out[3:], fresh, rtol=0, atol=1e-12)


def test_gradcheck_float64() -> None:
    torch.manual_seed(0)
    core = TemporalLatentBottleneck(3, 20, n_latents=2, chunk_size=2, n_heads=2, d_model=4).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    starts = torch.zeros(5, 2)
    starts[3, 1] = 1.0
    with torch.no_grad():
        h0, c0 = core(torch.randn(1, 2, 3, dtype=torch.float64))[1]  # position 1: a chunk ends at t=0
    h0.requires_grad_(True)

    def f(x: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out, (h, c) = core(x, (h0, c0), starts)
        return out, h, c

    assert torch.autograd.gradcheck(f, (x, h0), eps=1e-6, atol=1e-5)


def test_default_sizes_fit_the_packed_state() -> None:
    core = TemporalLatentBottleneck(8, 256)
    slots = core.n_latents + (core.n_layers + 1) * (core.chunk_size - 1)
    assert core.d_model % core.n_heads == 0
    assert slots * core.d_model + 1 <= 2 * 256 < slots * (core.d_model + core.n_heads) + 1
    out, (h, c) = core(torch.randn(2, 3, 8))
    assert out.shape == (2, 3, 256) and core.unpack_state((h, c))[2].tolist() == [2, 2, 2]
    assert "chunk_size=8" in repr(core)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"chunk_size": 0}, "chunk_size must be a positive integer"),
        ({"n_latents": 1.5}, "n_latents must be a positive integer"),
        ({"d_model": 6, "n_heads": 4}, "divisible by n_heads"),
        ({"d_model": 64}, "packed state needs"),
        ({"hidden_size": 4, "chunk_size": 8}, "too small to pack"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, message: str) -> None:
    kwargs = {"input_size": 5, "hidden_size": 40, **kwargs}
    with pytest.raises(ValueError, match=message):
        TemporalLatentBottleneck(**kwargs)


def test_bad_shapes_raise() -> None:
    core = small_tlb()
    x = torch.randn(3, 2, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="x must have shape"):
        core(torch.randn(3, 2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="x must have shape"):
        core(torch.randn(3, 2, 1, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="h0 must have shape"):
        core(x, (torch.zeros(1, 3, 40), torch.zeros(1, 3, 40)))
    with pytest.raises(ValueError, match="episode_starts must have shape"):
        core(x, None, torch.zeros(3, 3))
