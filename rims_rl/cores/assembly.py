"""Stable assembly of continuous-time RNN modules (Kozachkov, Ennis, Slotine, arXiv 2106.08928).

``n_modules`` modules of ``m = hidden_size / n_modules`` neurons each. Module ``i`` is the CT-RNN
``tau dx_i/dt = -x_i + W_i tanh(x_i) + u_i``, made contracting by construction (``||W_i||_2 < 1``), and the
modules are wired by negative feedback: the coupling from module ``j`` to ``i`` is minus the transpose of
the one from ``i`` to ``j`` (``L_ij = -L_ji^T``, identity metric), i.e. ``L = A - A^T`` with zero diagonal
blocks. Euler-discretised with ``a = dt / tau``, the whole assembly (state ``x`` in ``R^{n m}``) is::

    u_t     = U x_t + b                                                  (input, all modules at once)
    x_{t+1} = (1 - a) x_t + a (W tanh(x_t) + L x_t + u_t)                 (W = blockdiag(W_1..W_n))
    out_t   = tanh(x_{t+1})                                              (firing rates, [T, B, hidden_size])

with the trained parameters ``V_i``, ``A`` mapped to
``W_i = g V_i / max(1, ||V_i||_2)`` and ``L = l (A - A^T) / max(1, ||A - A^T||_2)`` (exact spectral norms),
so ``||W_i||_2 <= g`` and ``||L||_2 <= l`` whatever the trained values.

**Guaranteed contraction rate of the discrete map.** For two states under the same input,
``x1' - x2' = (int_0^1 J(x2 + s (x1 - x2)) ds) (x1 - x2)`` with Jacobian
``J(x) = (1 - a) I + a L + a W D(x)``, ``D = diag(tanh'(x))``, ``0 <= D <= I``. Because ``L^T = -L``,
``((1-a) I + a L)^T ((1-a) I + a L) = (1-a)^2 I + a^2 L^T L`` (the cross terms ``a(1-a)(L + L^T)``
cancel), so ``||(1-a) I + a L||_2 = sqrt((1-a)^2 + a^2 ||L||_2^2)``; and ``||W D||_2 <= max_i ||W_i||_2``.
Hence, for every ``x``,

    ||J(x)||_2 <= rho = sqrt((1-a)^2 + a^2 ||L||_2^2) + a max_i ||W_i||_2,

and ``||x1' - x2'|| <= rho ||x1 - x2||``. :meth:`contraction_rate` returns ``rho`` for the current
weights; the constructor checks that the caps give ``rho_max = sqrt((1-a)^2 + a^2 l^2) + a g < 1``, so the
assembly contracts for any trained values. For small ``a``, ``rho ~ 1 - a (1 - g) + O(a^2 l^2)``: the
skew-symmetric coupling costs only second order in ``a`` (it costs nothing in continuous time), whereas a
non-skew coupling could add ``a ||L||`` to the rate.

State: ``h = x`` ([1, B, hidden_size]); ``c`` is carried as zeros (as a GRU core would). Zeroing the state
where ``episode_starts`` is 1 restarts from ``x = 0``.

Relation to the paper: it makes each module contracting either by a sparse initialisation (its
Theorem 1) or by a direct parameterisation of ``W`` (Theorem 5) and trains linear negative-feedback
couplings between modules. Here the module condition is the simpler sufficient one ``||W_i||_2 * Lip(tanh)
< 1`` (identity metric) enforced through an exact spectral-norm cap, and the coupling's norm is capped so
that the *Euler-discretised* map has a proven rate (the paper's guarantees are for continuous time).
Sizes are not the paper's; ``n_modules=6`` matches RIMs' default unit count here.

**What a contracting network cannot do.** Under a constant input the map ``x -> x'`` is a contraction, so
it has exactly one fixed point and every state converges to it at rate ``rho`` per step: the network has
fading memory. A symbol shown once and followed by blanks is forgotten geometrically (its trace is at most
``rho^d`` after ``d`` blank steps), so holding a symbol over an arbitrary delay, and extrapolating to
delays longer than those trained on (the copying task's test), is not its job; a slower decay only
stretches the horizon. Two variants the authors' public code suggests (kozleo/rnns-of-rnns):

- **slower decay**: ``alpha=0.05`` gives ``rho = sqrt(0.95^2 + 0.05^2 * 0.5^2) + 0.05 * 0.9 = 0.9953``
  (vs 0.986 at the default 0.2): a memory horizon of ~200 steps instead of ~70 (``1 / (1 - rho)``);
- **fixed modules** (``fixed_modules=True``): each module's recurrent weights ``W_i`` stay at their
  random (norm-capped) initialisation and only the coupling, the input weights and biases train, as in
  the authors' later code; the contraction guarantee is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from rims_rl.checks import check_positive
from rims_rl.cores.base import RecurrentCore, State

DEFAULT_MODULES = 6


def contraction_bound(alpha: float, gain: float, coupling: float) -> float:
    """``sqrt((1-a)^2 + a^2 l^2) + a g``: guaranteed rate for module norm ``g``, coupling norm ``l``."""
    return math.sqrt((1.0 - alpha) ** 2 + (alpha * coupling) ** 2) + alpha * gain


class StableAssembly(RecurrentCore):
    """A contracting assembly of CT-RNN modules with the interface of a one-layer, time-major ``nn.LSTM``.

    Args:
        input_size: features per step.
        hidden_size: total neurons, ``n_modules * module_size``.
        n_modules: number of modules.
        alpha: Euler step ``dt / tau`` in (0, 1].
        gain: cap ``g`` on each module's ``||W_i||_2`` (``tanh`` is 1-Lipschitz), in (0, 1).
        coupling: cap ``l`` on the coupling's ``||L||_2`` (>= 0).
        fixed_modules: keep each module's recurrent weights at their initialisation (not trained).
    """

    off_block: Tensor  # registered buffer

    @classmethod
    def default_hidden_size(cls, kwargs: Mapping[str, Any]) -> int:
        """``n_modules * 32`` (6 x 32 when ``n_modules`` is not given)."""
        n_modules = kwargs.get("n_modules", DEFAULT_MODULES)
        return 32 * (n_modules if isinstance(n_modules, int) and n_modules > 0 else DEFAULT_MODULES)

    @classmethod
    def resolve_kwargs(cls, hidden_size: int, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """A width 6 modules do not divide, with ``n_modules`` not given: the largest count <= 6 that does."""
        kw = dict(kwargs)
        if "n_modules" not in kw and hidden_size % DEFAULT_MODULES != 0:
            kw["n_modules"] = max(d for d in range(1, DEFAULT_MODULES + 1) if hidden_size % d == 0)
        return kw

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 256,
        n_modules: int = DEFAULT_MODULES,
        alpha: float = 0.2,
        gain: float = 0.9,
        coupling: float = 0.5,
        fixed_modules: bool = False,
    ) -> None:
        super().__init__(input_size, hidden_size)  # checks both, sets nn.LSTM's attributes
        check_positive("n_modules", n_modules)
        if hidden_size % n_modules != 0:
            raise ValueError(
                f"hidden_size={hidden_size} must be divisible by n_modules={n_modules} "
                f"(e.g. {n_modules * max(1, round(hidden_size / n_modules))})"
            )
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha (dt/tau) must be in (0, 1], got {alpha!r}")
        if not 0.0 < gain < 1.0:
            raise ValueError(f"gain must be in (0, 1), got {gain!r}")
        if not coupling >= 0.0:
            raise ValueError(f"coupling must be >= 0, got {coupling!r}")
        if not isinstance(fixed_modules, bool):
            raise ValueError(f"fixed_modules must be true or false, got {fixed_modules!r}")
        rho_max = contraction_bound(alpha, gain, coupling)
        if rho_max >= 1.0:
            raise ValueError(
                f"alpha={alpha}, gain={gain}, coupling={coupling} give a contraction bound "
                f"sqrt((1-a)^2 + a^2 l^2) + a g = {rho_max:.4f} >= 1; lower coupling, gain or alpha"
            )
        self.n_modules = n_modules
        self.module_size = m = hidden_size // n_modules
        self.alpha = float(alpha)
        self.gain = float(gain)
        self.coupling = float(coupling)
        self.max_contraction_rate = rho_max
        self.input = nn.Linear(input_size, hidden_size)
        self.v = nn.Parameter(torch.empty(n_modules, m, m))  # -> W_i
        self.a = nn.Parameter(torch.empty(hidden_size, hidden_size))  # -> L (diagonal blocks masked out)
        block = torch.arange(hidden_size) // m
        self.register_buffer("off_block", (block[:, None] != block[None, :]).float(), persistent=False)
        self.fixed_modules = fixed_modules
        self._maps_cache: tuple[Any, tuple[Tensor, Tensor], Tensor, Tensor] | None = None  # see step_maps
        self.v.requires_grad_(not fixed_modules)  # the optimizer skips it: no gradient ever reaches it
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), as torch does for recurrent weights."""
        self.input.reset_parameters()
        nn.init.uniform_(self.v, -1.0 / math.sqrt(self.module_size), 1.0 / math.sqrt(self.module_size))
        nn.init.uniform_(self.a, -1.0 / math.sqrt(self.hidden_size), 1.0 / math.sqrt(self.hidden_size))

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, n_modules={self.n_modules}, "
            f"alpha={self.alpha}, gain={self.gain}, coupling={self.coupling}, "
            f"fixed_modules={self.fixed_modules}"
        )

    def module_weights(self) -> Tensor:
        """``W_i = g V_i / max(1, ||V_i||_2)``, [n_modules, m, m]."""
        norms = torch.linalg.matrix_norm(self.v, ord=2)
        return self.v * (self.gain / norms.clamp_min(1.0))[:, None, None]

    def coupling_matrix(self) -> Tensor:
        """``L = l S / max(1, ||S||_2)`` with ``S = (A - A^T)`` off the diagonal blocks: ``L^T = -L``."""
        a = self.a * self.off_block
        s = a - a.T
        if self.coupling == 0.0:
            return torch.zeros_like(s)
        return s * (self.coupling / torch.linalg.matrix_norm(s, ord=2).clamp_min(1.0))

    @torch.no_grad()
    def contraction_rate(self) -> float:
        """Guaranteed rate ``rho < 1`` of the discrete map for the current weights (see the module doc)."""
        w_norm = torch.linalg.matrix_norm(self.module_weights().double(), ord=2).max().item()
        l_norm = torch.linalg.matrix_norm(self.coupling_matrix().double(), ord=2).item()
        return contraction_bound(self.alpha, w_norm, l_norm)

    def contraction_margin(self) -> float:
        """``1 - rho``: how fast differences between states are forgotten per step (TensorBoard)."""
        return 1.0 - self.contraction_rate()

    def stats(self) -> dict[str, float]:
        """TensorBoard scalars."""
        return {"contraction_margin": self.contraction_margin()}

    def step_maps(self) -> tuple[Tensor, Tensor]:
        """The step's maps with ``a`` folded in: ``x' = x P + [tanh(x_i) Q_i]_i + a u`` (row vectors), where
        ``P = (1 - a) I + a L^T`` [hidden_size, hidden_size] and ``Q_i = a W_i^T`` [n_modules, m, m].

        Folding ``a`` and ``1 - a`` into the weights leaves three kernels per step (one ``addmm``, one
        ``bmm``, one add) instead of six. The modules keep their own ``bmm``: a dense block-diagonal
        matmul would be cheaper at PPO's small batches but ``n_modules`` times the work at B=64 and
        width 600 (1.4x slower there). Without autograd (rollouts, evaluation) the maps are kept until
        a weight changes: the exact spectral norms (SVDs) cost more than a step, and the weights change
        only between PPO updates.
        """
        key = self._step_maps_key()
        if key is None:
            return self._compute_step_maps()
        (v, a), cached = self._map_params(), self._maps_cache
        if cached is None or cached[0] != key or cached[1][0] is not v or cached[1][1] is not a:
            cached = self._maps_cache = (key, (v, a), *self._compute_step_maps())
        return cached[2], cached[3]

    def invalidate_step_maps(self) -> None:
        """Drop the kept maps: needed only after editing ``v`` or ``a`` through ``.data``, which, as for
        autograd's saved tensors, bypasses the version counter the cache is keyed on."""
        self._maps_cache = None

    def _map_params(self) -> tuple[Tensor, Tensor]:
        return self.v, self.a

    def _step_maps_key(self) -> tuple[Any, ...] | None:
        """What the maps depend on, or None where keeping them is unsafe or pointless: with autograd on, in
        inference mode, or for tensors without a version or storage (functorch). Tensors swapped in by
        ``functional_call`` (forward-mode duals among them) fail the identity check in ``step_maps``."""
        if torch.is_grad_enabled() or torch.is_inference_mode_enabled():
            return None
        try:
            params = tuple(
                (p._version, p.data_ptr(), p.shape, p.stride(), p.dtype, p.device) for p in self._map_params()
            )
        except RuntimeError:  # inference tensors have no version counter; functorch wrappers no storage
            return None
        return (*params, self.alpha, self.gain, self.coupling)

    def _compute_step_maps(self) -> tuple[Tensor, Tensor]:
        a = self.alpha
        p = torch.eye(self.hidden_size, dtype=self.a.dtype, device=self.a.device) * (1.0 - a)
        p = p + a * self.coupling_matrix().T
        q = a * self.module_weights().transpose(1, 2)  # [n, m, m]: a W_i^T, module by module
        return p, q

    def step(self, x: Tensor, u: Tensor, maps: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """One Euler step ``x [B, n*m] -> x'`` given the input drive ``u = U x_t + b`` [B, n*m]."""
        p, q = self.step_maps() if maps is None else maps
        return self._step(x, self.alpha * u, p, q)

    def _step(self, x: Tensor, au: Tensor, p: Tensor, q: Tensor) -> Tensor:
        B, n, m = x.shape[0], self.n_modules, self.module_size
        recur = torch.bmm(torch.tanh(x).view(B, n, m).transpose(0, 1), q)  # [n, B, m]
        return torch.addmm(au, x, p) + recur.transpose(0, 1).reshape(B, n * m)

    def forward(
        self, x: Tensor, state: State | None = None, episode_starts: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """Run a sequence: x [T, B, input_size] -> (out [T, B, hidden_size], (h, c) [1, B, hidden_size] each).

        Where ``episode_starts`` [T, B] is 1 the state is zeroed before that step.
        """
        self._check_input(x, state, episode_starts)
        T, B, _ = x.shape
        h = torch.zeros(B, self.hidden_size, dtype=x.dtype, device=x.device) if state is None else state[0][0]
        p, q = self.step_maps()  # once per call, not per step
        drive = (self.alpha * self.input(x)).unbind(0)  # a u_t for every step at once
        resets: list[bool] = [False] * T
        keep: tuple[Tensor, ...] = ()
        if episode_starts is not None:  # one host sync; the loop then multiplies only where an episode starts
            resets = episode_starts.bool().any(dim=1).tolist()
            keep = (1.0 - episode_starts.to(x.dtype)).unsqueeze(-1).unbind(0)
        states = []
        for t in range(T):
            if resets[t]:
                h = h * keep[t]
            h = self._step(h, drive[t], p, q)
            states.append(h)
        out = torch.tanh(torch.stack(states))
        h_t = h.unsqueeze(0)
        return out, (h_t, torch.zeros_like(h_t))
