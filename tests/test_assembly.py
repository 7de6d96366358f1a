"""Stable assembly core: guaranteed contraction (random and adversarially trained weights), its variants,
errors. The contract every core keeps (step == sequence, gradients, shapes) is tests/test_core_contract.py."""

from __future__ import annotations

import pytest
import torch

from rims_rl.cores.assembly import StableAssembly, contraction_bound

# A setting where the skew symmetry of the coupling matters: a non-skew L of norm 1.2 could add up to
# a * 1.2 = 0.6 to the rate, far above the guaranteed rho_max = sqrt(0.25 + 0.36) + 0.15 = 0.93.
STRONG = {"n_modules": 4, "alpha": 0.5, "gain": 0.3, "coupling": 1.2}


def make(seed: int = 0, **kwargs) -> StableAssembly:
    torch.manual_seed(seed)
    return StableAssembly(3, 16, **{**STRONG, **kwargs}).double()


def assert_contracts(core: StableAssembly, seed: int = 1, steps: int = 15) -> None:
    """Two far-apart states under the same inputs: every step shrinks their distance by rho or more."""
    rho = core.contraction_rate()
    assert rho < 1.0
    gen = torch.Generator().manual_seed(seed)
    B = 64
    x = 3.0 * torch.randn(steps, B, 3, generator=gen, dtype=torch.float64)
    h1 = 4.0 * torch.randn(1, B, 16, generator=gen, dtype=torch.float64)
    h2 = h1 + torch.randn(1, B, 16, generator=gen, dtype=torch.float64) * torch.rand(1, B, 1, generator=gen)
    s1, s2 = (h1, torch.zeros_like(h1)), (h2, torch.zeros_like(h2))
    with torch.no_grad():
        for t in range(steps):
            d0 = (s1[0] - s2[0]).norm(dim=-1)
            _, s1 = core(x[t : t + 1], s1)
            _, s2 = core(x[t : t + 1], s2)
            d1 = (s1[0] - s2[0]).norm(dim=-1)
            assert bool((d1 <= rho * d0 * (1 + 1e-9)).all()), (t, (d1 / d0).max().item(), rho)


def assert_jacobian_bounded(core: StableAssembly, seed: int = 2) -> None:
    """||d x' / d x||_2 <= rho at random (large) states: the bound the rate is derived from."""
    rho = core.contraction_rate()
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(1, 16, generator=gen, dtype=torch.float64)
    for _ in range(20):
        x = 2.0 * torch.randn(1, 16, generator=gen, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(lambda v: core.step(v, u), x)[0, :, 0, :]
        assert torch.linalg.matrix_norm(jac, ord=2).item() <= rho + 1e-12


@pytest.mark.parametrize("kwargs", [{}, {"n_modules": 2, "alpha": 0.2, "gain": 0.9, "coupling": 0.5}])
def test_random_weights_contract_at_the_guaranteed_rate(kwargs: dict) -> None:
    for seed in range(3):
        core = make(seed, **kwargs)
        with torch.no_grad():  # random weights well outside the init scale: the caps must bind
            core.v.normal_(0.0, 3.0)
            core.a.normal_(0.0, 3.0)
        assert core.contraction_rate() <= core.max_contraction_rate + 1e-12
        assert_contracts(core, seed)
        assert_jacobian_bounded(core, seed)


def test_contraction_survives_adversarial_training() -> None:
    """Adam with a large learning rate on a loss that rewards *expansion* cannot break the guarantee."""
    core = make()
    opt = torch.optim.Adam(core.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(3)
    for _ in range(40):
        x = torch.randn(6, 8, 3, generator=gen, dtype=torch.float64)
        h1 = torch.randn(1, 8, 16, generator=gen, dtype=torch.float64)
        h2 = h1 + 0.1 * torch.randn(1, 8, 16, generator=gen, dtype=torch.float64)
        _, (a, _) = core(x, (h1, torch.zeros_like(h1)))
        _, (b, _) = core(x, (h2, torch.zeros_like(h2)))
        loss = -((a - b).norm(dim=-1) / (h1 - h2).norm(dim=-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    lmat = core.coupling_matrix()
    torch.testing.assert_close(lmat.T, -lmat, rtol=0, atol=0)
    assert core.contraction_rate() <= core.max_contraction_rate + 1e-12
    assert 0.0 < core.contraction_margin() == pytest.approx(1.0 - core.contraction_rate())
    assert_contracts(core)
    assert_jacobian_bounded(core)


def test_coupling_is_skew_and_leaves_modules_alone() -> None:
    core = make()
    lmat, m = core.coupling_matrix(), core.module_size
    torch.testing.assert_close(lmat.T, -lmat, rtol=0, atol=0)
    for i in range(core.n_modules):
        assert lmat[i * m : (i + 1) * m, i * m : (i + 1) * m].abs().max() == 0
    assert torch.linalg.matrix_norm(lmat, ord=2) <= core.coupling + 1e-12
    assert torch.linalg.matrix_norm(core.module_weights(), ord=2).max() <= core.gain + 1e-12


def test_contraction_bound_formula() -> None:
    assert contraction_bound(1.0, 0.5, 0.3) == pytest.approx(0.8)
    assert contraction_bound(0.5, 0.3, 1.2) == pytest.approx((0.25 + 0.36) ** 0.5 + 0.15)
    assert "alpha=0.5" in repr(make())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_size": 10, "n_modules": 4}, "divisible by n_modules"),
        ({"n_modules": 0}, "n_modules must be a positive integer"),
        ({"alpha": 0.0}, "alpha"),
        ({"gain": 1.0}, "gain must be in"),
        ({"coupling": -0.1}, "coupling must be"),
        ({"alpha": 0.5, "gain": 0.9, "coupling": 1.0}, "contraction bound"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StableAssembly(**{"input_size": 3, "hidden_size": 16, "n_modules": 4, **kwargs})


def test_slower_decay_variant_has_the_documented_rate() -> None:
    core = StableAssembly(3, 12, alpha=0.05)  # the other settings at their defaults
    assert core.max_contraction_rate == pytest.approx(0.9953, abs=1e-4)
    assert core.contraction_rate() <= core.max_contraction_rate + 1e-6  # float32 weights, float64 norms


def test_fixed_modules_train_only_the_coupling_and_the_input() -> None:
    core = make(fixed_modules=True)
    before = {n: p.detach().clone() for n, p in core.named_parameters()}
    opt = torch.optim.Adam(core.parameters(), lr=1e-2)
    for _ in range(3):
        out, _ = core(torch.randn(6, 4, core.input_size, dtype=torch.float64))
        opt.zero_grad()
        out.pow(2).mean().backward()
        opt.step()
    changed = {n for n, p in core.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"a", "input.weight", "input.bias"}
    assert_contracts(core)


def reference_forward(
    core: StableAssembly, x: torch.Tensor, h: torch.Tensor, starts: torch.Tensor
) -> torch.Tensor:
    """The module doc's equations step by step, per module, with no folding: what ``forward`` must compute."""
    a, n, m = core.alpha, core.n_modules, core.module_size
    w, lmat = core.module_weights(), core.coupling_matrix()
    outs = []
    for t in range(x.shape[0]):
        h = h * (1.0 - starts[t])[:, None]
        u = core.input(x[t])
        recur = torch.cat([torch.tanh(h[:, i * m : (i + 1) * m]) @ w[i].T for i in range(n)], dim=1)
        h = (1.0 - a) * h + a * (recur + h @ lmat.T + u)
        outs.append(torch.tanh(h))
    return torch.stack(outs)


def test_forward_is_the_documented_equation_and_rollouts_see_every_weight_change() -> None:
    core = make(3)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(9, 5, 3, generator=gen, dtype=torch.float64)
    h0 = torch.randn(1, 5, 16, generator=gen, dtype=torch.float64)
    starts = torch.zeros(9, 5, dtype=torch.float64)
    starts[4, 1] = starts[7, 0] = starts[7, 3] = 1.0
    state = (h0, torch.zeros_like(h0))
    with torch.no_grad():
        want = reference_forward(core, x, h0[0], starts)
    out, _ = core(x, state, episode_starts=starts)  # autograd path
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(core(x, state, episode_starts=starts)[0], want, rtol=0, atol=1e-12)
        # weights changed in place (an optimizer step), then replaced (a checkpoint load): no stale maps
        core.a.add_(0.3)
        core.v.mul_(2.0)
        torch.testing.assert_close(
            core(x, state, episode_starts=starts)[0],
            reference_forward(core, x, h0[0], starts),
            rtol=0,
            atol=1e-12,
        )
        core.load_state_dict(make(5).state_dict())
        torch.testing.assert_close(
            core(x, state, episode_starts=starts)[0],
            reference_forward(core, x, h0[0], starts),
            rtol=0,
            atol=1e-12,
        )


def test_kept_maps_follow_every_input_and_step_aside_for_other_modes() -> None:
    """The no-grad cache must never hand back maps for other weights, other constants or other modes:
    a changed alpha, inference mode (no version counters), functorch transforms (no storage),
    functional_call's swapped-in duals (same storage and version as the parameters), ``.data`` edits."""
    from torch.autograd import forward_ad
    from torch.func import functional_call, jvp

    gen = torch.Generator().manual_seed(6)
    x = torch.randn(6, 4, 3, generator=gen, dtype=torch.float64)
    h0 = torch.zeros(4, 16, dtype=torch.float64)
    starts = torch.zeros(6, 4, dtype=torch.float64)

    def check(core: StableAssembly) -> None:
        torch.testing.assert_close(core(x)[0], reference_forward(core, x, h0, starts), rtol=0, atol=1e-12)

    core = make(7)
    with torch.no_grad():
        check(core)
        core.alpha = 0.25  # a constant folded into the maps
        check(core)
        core.v.data.mul_(torch.rand(core.v.shape, generator=gen, dtype=core.v.dtype))  # no version bump,
        core.invalidate_step_maps()  # as for autograd's saved tensors: the one case to say it by hand
        check(core)
    with torch.inference_mode():
        check(make(8))  # inference tensors have no version counter
    params = {k: v.detach() for k, v in core.named_parameters()}
    tangents = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}

    def run(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(core, p, (x,))[0]

    _, want = jvp(run, (params,), (tangents,))
    with torch.no_grad():
        _, got = jvp(run, (params,), (tangents,))  # functorch wrappers have no storage
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        core(x)  # keep the plain maps, then swap in duals that share the parameters' storage and version
        with forward_ad.dual_level():
            duals = {k: forward_ad.make_dual(v, tangents[k]) for k, v in params.items()}
            tangent = forward_ad.unpack_dual(functional_call(core, duals, (x,))[0]).tangent
        assert tangent is not None
        torch.testing.assert_close(tangent, want, rtol=0, atol=1e-12)
