"""The fused RIMs time loop and its hand-written backward against the autograd reference.

``RIMs.forward`` runs ``_RIMsSequence`` (no autograd graph inside, a reverse-time backward written by
hand) unless ``fast_path`` is False, which runs the reference step loop differentiated by autograd. The
two must agree on outputs, activation masks and every gradient, for every option; ``gradcheck`` checks
the hand-written backward against finite differences of the fused forward itself. Top-k selection is
piecewise constant: the fixed seeds and float64 keep every selection away from ties, so no mask flips
under the finite-difference step (a flip would show up as a failure, not pass silently).
"""

from __future__ import annotations

import itertools
import pathlib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn
from torch.func import functional_call

from rims_rl.cores import rims_ext
from rims_rl.cores.rims import RIMs

SMALL = dict(
    n_units=6, k=4, input_key_size=8, input_heads=2, comm_key_size=8, comm_value_size=8, comm_heads=2
)
#: Tiny sizes for gradcheck (one finite difference per input element).
TINY = dict(
    n_units=4, k=2, input_key_size=2, input_heads=2, input_value_size=4,
    comm_key_size=2, comm_value_size=2, comm_heads=2,
)  # fmt: skip
COMMS = {"comm": {}, "comm_top_k": {"comm_top_k": 2}, "no_comm": {"use_comm": False}}


def starts_for(kind: str, T: int, B: int) -> torch.Tensor | None:
    """None, starts at step 0 only (training minibatches), or also in the middle (rollouts)."""
    if kind == "none":
        return None
    starts = torch.zeros(T, B, dtype=torch.float64)
    starts[0, 0] = 1.0
    if kind == "middle":
        starts[T // 2, B - 1] = 1.0
    return starts


def run(
    core: RIMs, fast: bool, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, starts, weights
) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
    """Outputs, mask and gradients (every parameter, x, h0, c0) of one path, dropout drawn from seed 7."""
    core.fast_path = fast
    core.zero_grad(set_to_none=True)
    for t in (x, h0, c0):
        t.grad = None
    torch.manual_seed(7)
    out, (h, c) = core(x, (h0, c0), episode_starts=starts)
    mask = core.last_active_mask.clone()
    ((out * weights).sum() + 1.5 * h.sum() + 0.5 * c.sum()).backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in core.parameters()]
    return [out.detach(), h.detach(), c.detach()], mask, grads + [x.grad, h0.grad, c0.grad]


CASES = [
    (cell, slots, comm, starts, 0.0)
    for cell, slots, comm, starts in itertools.product(
        ["lstm", "gru"], [1, 3], list(COMMS), ["none", "first", "middle"]
    )
] + [
    (cell, slots, comm, "middle", 0.3)
    for cell, slots, comm in itertools.product(["lstm", "gru"], [1, 3], COMMS)
]


@pytest.mark.parametrize("cell, slots, comm, starts, dropout", CASES)
def test_fused_path_equals_autograd_reference(
    cell: str, slots: int, comm: str, starts: str, dropout: float
) -> None:
    torch.manual_seed(0)
    core = RIMs(5, 24, cell=cell, input_dropout=dropout, comm_dropout=dropout, **{**SMALL, **COMMS[comm]})
    core = core.double().train()
    T, B = 7, 3
    x = torch.randn(T, B, slots, 5, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, B, 24, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(1, B, 24, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(T, B, 24, dtype=torch.float64)
    s = starts_for(starts, T, B)
    fused_out, fused_mask, fused_grads = run(core, True, x, h0, c0, s, weights)
    ref_out, ref_mask, ref_grads = run(core, False, x, h0, c0, s, weights)
    assert torch.equal(fused_mask, ref_mask)
    for a, b in zip(fused_out, ref_out, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    names = [n for n, _ in core.named_parameters()] + ["x", "h0", "c0"]
    for name, a, b in zip(names, fused_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=name)
    if dropout:  # the masks really were drawn: the eval-mode output differs
        core.eval()
        assert not torch.allclose(core(x, (h0, c0), episode_starts=s)[0], fused_out[0])


@pytest.mark.parametrize(
    "cell, slots, comm, starts",
    list(itertools.product(["lstm", "gru"], [1, 3], list(COMMS), ["first", "middle"]))
    + [("lstm", 1, "comm", "none")],
)
def test_fused_backward_gradcheck(cell: str, slots: int, comm: str, starts: str) -> None:
    """Finite differences of the fused forward against its hand-written backward, every input at once."""
    torch.manual_seed(1)
    core = RIMs(3, 8, cell=cell, input_dropout=0.0, comm_dropout=0.0, **{**TINY, **COMMS[comm]})
    core = core.double().train()
    T, B = 4, 2
    names = [n for n, _ in core.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in core.parameters())
    x = torch.randn(T, B, slots, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, B, 8, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(1, B, 8, dtype=torch.float64, requires_grad=cell == "lstm")
    s = starts_for(starts, T, B)

    def fn(
        x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, *ps: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        out, (h, c) = functional_call(
            core, dict(zip(names, ps, strict=True)), (x, (h0, c0)), {"episode_starts": s}
        )
        return out, h, c

    masks = []
    for sign in (1.0, -1.0):  # the selection is the same on both sides of the finite-difference step
        with torch.no_grad():
            fn(x + sign * 1e-6, h0 + sign * 1e-6, c0, *params)
        masks.append(core.last_active_mask.clone())
    assert torch.equal(masks[0], masks[1])
    assert torch.autograd.gradcheck(fn, (x, h0, c0, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fused_backward_gradcheck_with_dropout(cell: str) -> None:
    """Dropout masks are saved for backward; reseeding per call makes the forward a fixed function."""
    torch.manual_seed(2)
    core = RIMs(3, 8, cell=cell, input_dropout=0.3, comm_dropout=0.3, **TINY).double().train()
    names = [n for n, _ in core.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in core.parameters())
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, 2, 8, dtype=torch.float64, requires_grad=True)

    def fn(x: torch.Tensor, h0: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(5)
        return functional_call(core, dict(zip(names, ps, strict=True)), (x, (h0, torch.zeros_like(h0))))[0]

    assert torch.autograd.gradcheck(fn, (x, h0, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("cell, node", [("lstm", "_RIMsDerivedBackward"), ("gru", "_RIMsSequenceBackward")])
def test_fused_path_is_the_default_and_builds_one_node(cell: str, node: str) -> None:
    if rims_ext.extension() is None:  # no compiler: the default is the fused loop for LSTM units too
        node = "_RIMsSequenceBackward"
    core = RIMs(5, 24, cell=cell, **SMALL)
    assert core.fast_path and core.derived_step is None  # the re-derived loop for small batches
    out, _ = core(torch.randn(6, 2, 5))
    seen, stack = set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is not None and fn not in seen:
            seen.add(fn)
            stack.extend(f for f, _ in fn.next_functions)
    names = {type(fn).__name__ for fn in seen}
    assert node in names
    assert not names & {"WhereBackward0", "SigmoidBackward0", "TopkBackward0"}  # no per-step nodes


def test_large_batches_take_the_fused_loop_by_default() -> None:
    """``derived_step = None``: the re-derived loop (C++) up to ``DERIVED_MAX_BATCH`` samples, else fused."""
    from rims_rl.cores.rims import DERIVED_MAX_BATCH

    core = RIMs(5, 24, **SMALL)
    small = "_RIMsDerivedBackward" if rims_ext.extension() is not None else "_RIMsSequenceBackward"
    cases = ((DERIVED_MAX_BATCH, small), (DERIVED_MAX_BATCH + 1, "_RIMsSequenceBackward"))
    for B, node in cases:
        out, _ = core(torch.randn(3, B, 5))
        assert node in repr_graph(out)


def repr_graph(out: torch.Tensor) -> set[str]:
    seen, stack = set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is not None and fn not in seen:
            seen.add(fn)
            stack.extend(f for f, _ in fn.next_functions)
    return {type(fn).__name__ for fn in seen}


#: The fast paths for one input slot and LSTM units: the re-derived loop in C++ (``rims_ext``) and in
#: Python (no compiler), and the general fused loop (``derived_step = False``).
FAST_PATHS = ["derived_cpp", "derived_python", "fused"]


@contextmanager
def fast_path(core: RIMs, path: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run ``core`` on one of ``FAST_PATHS`` inside the block."""
    if path == "derived_cpp" and rims_ext.extension() is None:
        pytest.skip("no C++ compiler here: the C++ loop is not built (the Python loop is tested)")
    with monkeypatch.context() as m:
        if path == "derived_python":
            m.setitem(rims_ext._STATE, "module", None)
        core.derived_step = path != "fused"
        yield
    core.derived_step = None


def random_starts(T: int, B: int, seed: int) -> torch.Tensor:
    """Episode starts at random steps and samples (about one step in five), as rollouts have them."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, B, generator=g) < 0.2).to(torch.float64)


@pytest.mark.parametrize("path", FAST_PATHS)
@pytest.mark.parametrize("comm", list(COMMS))
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_derived_loop_equals_autograd_reference(
    path: str, comm: str, dropout: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outputs, final state, active-unit masks and every gradient (parameters, x, h0, c0) agree with the
    reference loop to float64 rounding, with episode starts at random positions and dropout masks drawn
    from the same seed."""
    torch.manual_seed(3)
    core = RIMs(5, 24, input_dropout=dropout, comm_dropout=dropout, **{**SMALL, **COMMS[comm]})
    core = core.double().train()
    T, B = 9, 4
    x = torch.randn(T, B, 5, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, B, 24, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(1, B, 24, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(T, B, 24, dtype=torch.float64)
    starts = random_starts(T, B, seed=4)
    assert starts[1:].any() and not starts.all()
    with fast_path(core, path, monkeypatch):
        new_out, new_mask, new_grads = run(core, True, x, h0, c0, starts, weights)
    ref_out, ref_mask, ref_grads = run(core, False, x, h0, c0, starts, weights)
    assert torch.equal(new_mask, ref_mask)
    for a, b in zip(new_out, ref_out, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    names = [n for n, _ in core.named_parameters()] + ["x", "h0", "c0"]
    for name, a, b in zip(names, new_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("path", FAST_PATHS)
def test_derived_loop_float32_and_no_grad(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """float32 (what training uses) agrees with the reference to float32 rounding, with and without grad."""
    torch.manual_seed(5)
    core = RIMs(7, 24, **SMALL).eval()
    x = torch.randn(12, 3, 7, requires_grad=True)
    starts = random_starts(12, 3, seed=6).float()
    with fast_path(core, path, monkeypatch):
        out, (h, c) = core(x, episode_starts=starts)
        mask = core.last_active_mask
        (g,) = torch.autograd.grad(out.pow(2).sum() + c.sum(), x)
        with torch.no_grad():
            out_ng = core(x, episode_starts=starts)[0]
    core.fast_path = False
    ref, (ref_h, ref_c) = core(x, episode_starts=starts)
    (ref_g,) = torch.autograd.grad(ref.pow(2).sum() + ref_c.sum(), x)
    assert torch.equal(mask, core.last_active_mask)
    for a, b in ((out, ref), (out_ng, ref), (h, ref_h), (c, ref_c), (g, ref_g)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_failed_build_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """No compiler: the Python loop runs, one warning line for the process, never an error."""

    def no_compiler() -> None:
        raise RuntimeError("Ninja is required to load C++ extensions\nmore lines of the build log")

    monkeypatch.setattr(rims_ext, "_build", no_compiler)
    monkeypatch.setattr(rims_ext, "_STATE", {})
    monkeypatch.delenv("RIMS_RL_NO_EXT", raising=False)
    torch.manual_seed(0)
    core = RIMs(5, 24, **SMALL).double().eval()  # no dropout: every call is the same function
    x = torch.randn(6, 2, 5, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [core(x)[0] for _ in range(3)]
        outs[0].sum().backward()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "\n" not in messages[0] and "Ninja is required" in messages[0]
    assert rims_ext.extension() is None
    core.fast_path = False
    torch.testing.assert_close(outs[0], core(x)[0], rtol=1e-12, atol=1e-12)


def test_no_ext_environment_variable_skips_the_build_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_build() -> None:
        raise AssertionError("built although RIMS_RL_NO_EXT=1")

    monkeypatch.setattr(rims_ext, "_build", must_not_build)
    monkeypatch.setattr(rims_ext, "_STATE", {})
    monkeypatch.setenv("RIMS_RL_NO_EXT", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RIMs(5, 24, **SMALL)(torch.randn(3, 2, 5))
    assert rims_ext.extension() is None


def test_no_grad_call_equals_grad_call_and_builds_no_graph() -> None:
    torch.manual_seed(0)
    core = RIMs(5, 24, **SMALL).eval()
    x = torch.randn(5, 3, 5)
    starts = torch.zeros(5, 3)
    starts[2, 1] = 1.0
    out, (h, c) = core(x, episode_starts=starts)
    with torch.no_grad():
        out_ng, (h_ng, c_ng) = core(x, episode_starts=starts)
    assert out_ng.grad_fn is None
    for a, b in ((out, out_ng), (h, h_ng), (c, c_ng)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_no_grad_weight_cache_follows_in_place_updates(cell: str) -> None:
    """Rollouts reuse the derived weights between calls; an optimizer step must invalidate them."""
    torch.manual_seed(0)
    core = RIMs(5, 24, cell=cell, **SMALL).eval()
    x = torch.randn(1, 3, 5)
    with torch.no_grad():
        before = core(x)[0]
        for w in (core.w_x, core.w_hh, core.b_x, core.b_h, core.w_comm):
            w.add_(0.1)  # in place, as optimizers do
            core.fast_path = True
            fused = core(x)[0]
            core.fast_path = False
            torch.testing.assert_close(fused, core(x)[0], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(before, fused)


def test_backward_pool_reused_across_shapes() -> None:
    """The backward's scratch buffers are kept on the module; calls of other sizes must not mix them up."""
    torch.manual_seed(0)
    core = RIMs(5, 24, **SMALL).double()
    for T, B in ((6, 3), (4, 2), (7, 3), (4, 2)):
        x = torch.randn(T, B, 1, 5, dtype=torch.float64, requires_grad=True)
        h0 = torch.randn(1, B, 24, dtype=torch.float64, requires_grad=True)
        c0 = torch.randn(1, B, 24, dtype=torch.float64, requires_grad=True)
        weights = torch.randn(T, B, 24, dtype=torch.float64)
        _, _, fused = run(core, True, x, h0, c0, None, weights)
        _, _, ref = run(core, False, x, h0, c0, None, weights)
        for a, b in zip(fused, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_pooled_forward_buffers_are_not_shared_by_live_graphs() -> None:
    """Saved activations come from a pool; a graph still alive must keep its own, whatever runs between."""
    torch.manual_seed(0)
    core = RIMs(5, 24, **SMALL).double().eval()
    xs = [torch.randn(5, 3, 5, dtype=torch.float64, requires_grad=True) for _ in range(4)]

    def reference_grad(x: torch.Tensor) -> torch.Tensor:
        core.fast_path = False
        (g,) = torch.autograd.grad(core(x)[0].pow(2).sum(), x)
        core.fast_path = True
        return g

    expected = [reference_grad(x) for x in xs]
    for _ in range(2):  # the second round runs on buffers given back by the first
        losses = [core(x)[0].pow(2).sum() for x in xs[:2]]  # two graphs alive at once
        with torch.no_grad():
            core(xs[2])  # a no-grad call in between takes and gives back its own set
        loss_3 = core(xs[3])[0].pow(2).sum()
        for x, loss, want in zip(
            [xs[1], xs[0], xs[3]],
            [losses[1], losses[0], loss_3],
            [expected[1], expected[0], expected[3]],
            strict=True,
        ):
            (g,) = torch.autograd.grad(loss, x, retain_graph=True)
            torch.testing.assert_close(g, want, rtol=1e-9, atol=1e-10)
            (g_again,) = torch.autograd.grad(loss, x)  # a second backward of the same graph
            torch.testing.assert_close(g_again, want, rtol=1e-9, atol=1e-10)
        del losses, loss_3


def test_release_buffers_then_run_again() -> None:
    core = RIMs(5, 24, **SMALL)
    x = torch.randn(4, 2, 5)
    out, _ = core(x)
    out.sum().backward()
    assert "_derived_backward_pool" in core.__dict__  # LSTM units, one slot: the re-derived loop
    core.release_buffers()
    pools = {"_forward_pool", "_backward_pool", "_derived_pool", "_derived_backward_pool"}
    assert not (pools | {"_fused_weight_cache"}) & set(core.__dict__)
    core.eval()
    with torch.no_grad():
        torch.testing.assert_close(core(x)[0], core(x)[0])


def test_replaced_parameter_and_pickling_with_cached_state() -> None:
    """A new parameter object invalidates the no-grad weight cache; pickling drops the pools."""
    import io

    torch.manual_seed(0)
    core = RIMs(5, 24, **SMALL).eval()
    x = torch.randn(1, 3, 5)
    with torch.no_grad():
        core(x)
        core.w_comm = nn.Parameter(torch.randn_like(core.w_comm))
        fused = core(x)[0]
        core.fast_path = False
        torch.testing.assert_close(fused, core(x)[0], rtol=1e-6, atol=1e-6)
        core.fast_path = True
    buf = io.BytesIO()
    torch.save(core, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert "_fused_weight_cache" not in loaded.__dict__
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], fused)


def test_a_stale_build_lock_is_cleared_not_waited_for(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process killed while building the C++ loop leaves torch's lock file; torch would wait for it
    forever, hanging every later RIMs run on the machine. An old lock is removed; a fresh one is kept."""
    import os
    import time

    from torch.utils import cpp_extension

    from rims_rl.cores import rims_ext

    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda name, verbose: str(tmp_path / name))
    folder = rims_ext.build_directory(rims_ext.EXTENSION_NAME)
    assert folder.parent == tmp_path and folder.name.startswith(rims_ext.EXTENSION_NAME + "-")
    lock = folder / "lock"
    lock.write_text("")
    rims_ext._clear_stale_lock(folder)
    assert lock.exists()  # a build may be running now
    old = time.time() - rims_ext.STALE_LOCK_SECONDS - 1
    os.utime(lock, (old, old))
    rims_ext._clear_stale_lock(folder)
    assert not lock.exists()
    # Another virtual environment's torch (other include paths in the build flags) builds elsewhere:
    # sharing the folder, each would rebuild the other's extension and wait on its lock.
    monkeypatch.setattr(torch, "__file__", "/elsewhere/site-packages/torch/__init__.py")
    other = rims_ext.build_directory(rims_ext.EXTENSION_NAME)
    assert other != folder and other.parent == tmp_path
