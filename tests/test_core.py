"""The RIMs core: interface, sparse update, gradients, sequence/step equivalence, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rims_rl.cores.rims import RIMs

SMALL = dict(
    n_units=6, k=4, input_key_size=8, input_heads=2, comm_key_size=8, comm_value_size=8, comm_heads=2
)


def make(cell: str = "lstm", **kw: object) -> RIMs:
    torch.manual_seed(0)
    return RIMs(5, 24, cell=cell, **{**SMALL, **kw}).eval()


def random_state(core: RIMs, B: int) -> tuple[torch.Tensor, torch.Tensor]:
    h = torch.randn(1, B, core.hidden_size)
    c = torch.randn(1, B, core.hidden_size) if core.cell == "lstm" else torch.zeros(1, B, core.hidden_size)
    return h, c


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_shapes_match_nn_lstm(cell: str) -> None:
    core = make(cell)
    lstm = nn.LSTM(5, 24)
    x = torch.randn(7, 3, 5)
    out, (h, c) = core(x)
    ref_out, (ref_h, ref_c) = lstm(x)
    assert out.shape == ref_out.shape and h.shape == ref_h.shape and c.shape == ref_c.shape
    assert (core.input_size, core.hidden_size, core.num_layers) == (5, 24, 1)
    assert torch.equal(out[-1], h[0])
    if cell == "gru":
        assert torch.count_nonzero(c) == 0


def test_several_input_slots() -> None:
    core = make()
    out, (h, _) = core(torch.randn(4, 3, 9, 5))  # 9 slots, e.g. a 3x3 feature map
    assert out.shape == (4, 3, 24) and h.shape == (1, 3, 24)
    assert core.last_active_mask is not None and core.last_active_mask.shape == (4, 3, 6)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_exactly_k_active_per_step_and_sample(k: int) -> None:
    core = make(k=k)
    core(torch.randn(10, 8, 5), random_state(core, 8))
    mask = core.last_active_mask
    assert mask is not None and mask.dtype == torch.bool
    assert (mask.sum(-1) == k).all()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_inactive_units_keep_state_bitwise(cell: str) -> None:
    core = make(cell).train()  # dropout on: the guarantee must hold in training too
    B, n, u = 16, core.n_units, core.unit_size
    h0, c0 = random_state(core, B)
    _, (h1, c1) = core(torch.randn(1, B, 5), (h0, c0))
    active = core.last_active_mask[0]  # [B, n]
    inactive = ~active.unsqueeze(-1).expand(B, n, u)
    for before, after in ((h0, h1), (c0, c1)):
        before, after = before.view(B, n, u), after.view(B, n, u)
        assert torch.equal(before[inactive], after[inactive])
    # and the active ones really moved
    assert not torch.equal(h0.view(B, n, u)[~inactive], h1.view(B, n, u)[~inactive])


def test_no_gradient_into_inactive_units_update() -> None:
    core = make()
    h0, c0 = random_state(core, 1)
    out, _ = core(torch.randn(1, 1, 5), (h0, c0))
    out.pow(2).sum().backward()
    active = core.last_active_mask[0, 0]
    # A unit's query, cell weights and output projection only act through its own update.
    for name in ("w_query", "w_x", "w_hh", "b_x", "b_h", "w_comm_out"):
        grad = getattr(core, name).grad
        assert grad is not None
        assert torch.count_nonzero(grad[~active]) == 0, name
        assert torch.count_nonzero(grad[active]) > 0, name


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_sequence_call_equals_single_steps(cell: str) -> None:
    core = make(cell)
    T, B = 9, 4
    x = torch.randn(T, B, 5)
    state = random_state(core, B)
    out, (h, c) = core(x, state)
    masks = core.last_active_mask
    step_state, outs, step_masks = state, [], []
    for t in range(T):
        o, step_state = core(x[t : t + 1], step_state)
        outs.append(o)
        step_masks.append(core.last_active_mask)
    torch.testing.assert_close(torch.cat(outs), out)
    torch.testing.assert_close(step_state[0], h)
    torch.testing.assert_close(step_state[1], c)
    assert torch.equal(torch.cat(step_masks), masks)


@pytest.mark.parametrize(
    "cell, slots, comm", [("lstm", 1, True), ("gru", 1, True), ("lstm", 3, True), ("lstm", 1, False)]
)
def test_sequence_gradients_equal_single_step_gradients(cell: str, slots: int, comm: bool) -> None:
    """Gradients of a sequence call (reset only where needed, scaled comm weights) equal chained steps."""
    torch.manual_seed(0)
    core = RIMs(5, 24, cell=cell, use_comm=comm, **SMALL).double().eval()
    T, B = 7, 3
    x = torch.randn(T, B, slots, 5, dtype=torch.float64)
    starts = torch.zeros(T, B, dtype=torch.float64)
    starts[0, 0] = starts[4, 1] = 1.0
    h0, c0 = (torch.randn(1, B, 24, dtype=torch.float64, requires_grad=True) for _ in range(2))
    weights = torch.randn(T, B, 24, dtype=torch.float64)

    def grads(out: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> list[torch.Tensor]:
        core.zero_grad()
        h0.grad = c0.grad = None
        ((out * weights).sum() + h.sum() + 0.5 * c.sum()).backward()
        params = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in core.parameters()]
        return params + [h0.grad.clone(), c0.grad.clone()]

    out, (h, c) = core(x, (h0, c0), episode_starts=starts)
    sequence = grads(out, h, c)
    step_h, step_c, outs = h0, c0, []
    for t in range(T):
        o, (step_h, step_c) = core(x[t : t + 1], (step_h, step_c), episode_starts=starts[t : t + 1])
        outs.append(o)
    single = grads(torch.cat(outs), step_h, step_c)
    names = [n for n, _ in core.named_parameters()] + ["h0", "c0"]
    for name, a, b in zip(names, sequence, single, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=name)
        assert a.abs().sum() > 0 or (not comm and "comm" in name), name  # every weight is exercised


def test_episode_starts_equal_stepwise_reset() -> None:
    core = make()
    T, B = 8, 5
    x = torch.randn(T, B, 5)
    starts = torch.zeros(T, B)
    starts[0, 1] = starts[3, 0] = starts[3, 2] = starts[6, 4] = starts[7, 0] = 1.0
    state = random_state(core, B)
    out, (h, c) = core(x, state, episode_starts=starts)
    step_h, step_c, outs = state[0], state[1], []
    for t in range(T):
        keep = (1.0 - starts[t]).view(1, B, 1)
        o, (step_h, step_c) = core(x[t : t + 1], (step_h * keep, step_c * keep))
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs), out)
    torch.testing.assert_close(step_h, h)
    torch.testing.assert_close(step_c, c)
    # and the resets matter: without them the output differs
    assert not torch.allclose(core(x, state)[0], out)


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout() -> None:
    core = make(input_dropout=0.5, comm_dropout=0.5)
    x = torch.randn(6, 4, 5)
    state = random_state(core, 4)
    torch.testing.assert_close(core(x, state)[0], core(x, state)[0], rtol=0, atol=0)
    core.train()
    torch.manual_seed(1)
    a = core(x, state)[0]
    torch.manual_seed(2)
    b = core(x, state)[0]
    assert not torch.allclose(a, b)


def test_comm_top_k_and_no_comm_change_the_output() -> None:
    x = torch.randn(5, 3, 5)
    full = make()(x)[0]
    assert not torch.allclose(make(comm_top_k=2)(x)[0], full)
    assert not torch.allclose(make(use_comm=False)(x)[0], full)


def test_without_input_competition_every_unit_reads_the_whole_input() -> None:
    """The ablation of issue 41: no null slot, so every unit is active and, with one input slot, reads
    the input's values whole; the step equals a per-unit LSTM on them (communication off)."""
    core = make(k=6, input_competition=False, use_comm=False)
    x = torch.randn(3, 4, 5)
    h0, c0 = random_state(core, 4)
    out, _ = core(x, (h0, c0))
    assert core.last_active_mask is not None and bool(core.last_active_mask.all())
    n, u = core.n_units, core.unit_size
    h, c = h0.reshape(4, n, u).transpose(0, 1), c0.reshape(4, n, u).transpose(0, 1)
    for t in range(3):
        read = core.input_value(x[t]).expand(n, -1, -1)  # every head's probability is 1
        gates = read @ core.w_x + h @ core.w_hh + (core.b_x + core.b_h).unsqueeze(1)
        i, f, o, g = gates.split(u, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        torch.testing.assert_close(out[t], h.transpose(0, 1).reshape(4, n * u))
    # the queries no longer decide anything with one slot; with the null slot they do
    with torch.no_grad():
        core.w_query.mul_(3.0)
    torch.testing.assert_close(core(x, (h0, c0))[0], out)
    competing = make(use_comm=False)
    before = competing(x, (h0, c0))[0]
    with torch.no_grad():
        competing.w_query.mul_(3.0)
    assert not torch.allclose(competing(x, (h0, c0))[0], before)


def test_without_input_competition_slots_are_still_attended() -> None:
    core = make(k=6, input_competition=False)
    x = torch.randn(4, 3, 9, 5)
    out = core(x)[0]
    assert core.last_active_mask is not None and bool(core.last_active_mask.all())
    with torch.no_grad():
        core.w_query.mul_(3.0)
    assert not torch.allclose(core(x)[0], out)  # which slot a unit reads still depends on its query


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    core = make()
    x = torch.randn(6, 4, 5)
    state = random_state(core, 4)
    out_cpu, _ = core(x, state)
    out_gpu, _ = core.cuda()(x.cuda(), tuple(s.cuda() for s in state))
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(k=7), "k must be an integer in [1, n_units=6]"),
        (dict(k=0), "k must be an integer in [1, n_units=6]"),
        (dict(hidden_size=25), "hidden_size=25 must be divisible by n_units=6"),
        (dict(cell="rnn"), "cell must be one of ('lstm', 'gru')"),
        (dict(input_value_size=9, input_heads=2), "input_value_size=9 must be divisible by input_heads=2"),
        (dict(input_dropout=1.0), "input_dropout must be in [0, 1)"),
        (dict(comm_top_k=9), "comm_top_k must be None or an integer in [1, n_units=6]"),
        (dict(n_units=0), "n_units must be a positive integer"),
        (dict(input_competition=False), "k must equal n_units=6 (got k=4); set k=6"),
        (dict(input_competition="no", k=6), "input_competition must be true or false"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs: dict, needle: str) -> None:
    args = dict(input_size=5, hidden_size=24, n_units=6, k=4)
    args.update(kwargs)
    with pytest.raises(ValueError) as err:
        RIMs(**args)
    assert needle in str(err.value)


@pytest.mark.parametrize(
    ("x_shape", "state_shape", "starts_shape", "needle"),
    [
        ((4, 2, 6), None, None, "x must have shape"),
        ((4, 2), None, None, "x must have shape"),
        ((4, 2, 5), (1, 3, 24), None, "h0 must have shape [num_layers=1, B=2, state_size=24]"),
        ((4, 2, 5), None, (4, 3), "episode_starts must have shape [T=4, B=2]"),
    ],
)
def test_wrong_input_shapes_raise(
    x_shape: tuple, state_shape: tuple | None, starts_shape, needle: str
) -> None:
    core = make()
    state = None if state_shape is None else (torch.zeros(state_shape), torch.zeros(state_shape))
    starts = None if starts_shape is None else torch.zeros(starts_shape)
    with pytest.raises(ValueError) as err:
        core(torch.zeros(x_shape), state, episode_starts=starts)
    assert needle in str(err.value)
