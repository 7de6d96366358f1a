"""Recurrent Independent Mechanisms (Goyal et al., ICLR 2021) as a drop-in for ``nn.LSTM``.

This module holds the math and the reference step loop; the fused time loop with its hand-written
backward is ``rims_rl.cores.rims_fused``, and the loop re-derived for fewer kernels per step (one input
slot, LSTM units, batches up to ``DERIVED_MAX_BATCH``, CPU with a C++ compiler) is
``rims_rl.cores.rims_derived``.

All units run at once: per-unit weights are stacked along a unit dimension and applied with one
batched matmul (``einsum`` over ``[B, n_units, ...] x [n_units, ...]``), so there is no Python loop
over units and no dense block-masked matrix. The only loop is over time, as in any RNN.

Two implementations of the same math: the fused path (default) runs the time loop as one autograd node,
``_RIMsSequence``, whose forward saves the activations into preallocated buffers and whose backward runs
the steps in reverse by hand (weight gradients as one matmul over all steps afterwards); the reference
path (``core.fast_path = False``) is the plain step loop differentiated by autograd. They agree to
rounding (tests/test_core_bptt.py: outputs, masks and every gradient, all options, plus gradcheck). The
fused path is ~1.7x faster inside PPO training on CPU, where sequences per minibatch are few and every
op's overhead counts (docs/benchmarks.md).

Shapes (time-major, like ``nn.LSTM`` with ``batch_first=False``):
    x:      [T, B, input_size]  or  [T, B, n_inputs, input_size]  (several input slots, e.g. CNN positions)
    state:  (h, c), each [1, B, hidden_size]; hidden_size = n_units * unit_size (state_size = hidden_size)
    output: [T, B, hidden_size]

Width defaults (``RIMs.resolve_kwargs``, used by the policies): ``unit_size`` sets the width to
``n_units * unit_size``; a width that 6 units do not divide, with ``n_units`` not given, gets the largest
unit count <= 6 that divides it and ``k`` = 2/3 of the units (the paper's 4 of 6), so any
``lstm_hidden_size`` works.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rims_rl.checks import check_positive
from rims_rl.cores import rims_ext
from rims_rl.cores.base import RecurrentCore, State
from rims_rl.cores.rims_derived import _derived_loop, _RIMsDerived
from rims_rl.cores.rims_fused import _fused_loop, _RIMsSequence
from rims_rl.dropout import KeyedDropout

_CELLS = ("lstm", "gru")
DEFAULT_UNITS = 6
DEFAULT_UNIT_SIZE = 32  # width n_units * 32 when the policy is given none
#: Largest batch that runs the re-derived loop by default. It saves per-step kernel launches, which is
#: what a small batch costs; its post-loop weight gradients and per-sample C++ loops grow with the batch.
#: Measured on the CI kind of CPU (docs/benchmarks.md, "Compiled / re-derived RIMs step"): faster than
#: the fused loop at B=8 and 16, level at B=32-64 with T=32, slower at B=64 with T=128.
DERIVED_MAX_BATCH = 16
#: Attributes the fused path keeps on the module between calls (see ``RIMs.release_buffers``).
_POOLED = (
    "_forward_pool",
    "_backward_pool",
    "_derived_pool",
    "_derived_backward_pool",
    "_fused_weight_cache",
)


def usage_entropy(active_fraction: np.ndarray) -> float:
    """Normalised entropy (in [0, 1]) of unit usage, from per-unit active fractions."""
    freq = np.asarray(active_fraction, dtype=np.float64)
    n = freq.size
    total = freq.sum()
    if n < 2 or total <= 0:
        return 1.0
    p = freq / total
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / math.log(n))


def _check_divides(name: str, value: int, by_name: str, by: int) -> None:
    if value % by != 0:
        raise ValueError(
            f"{name}={value} must be divisible by {by_name}={by}; "
            f"choose {name} from multiples of {by} (e.g. {by * max(1, round(value / by))})"
        )


class RIMs(RecurrentCore):
    """A RIMs recurrent core with the interface of a one-layer, time-major ``nn.LSTM``.

    Each step: (1) every unit queries the input slots plus a null slot (zeros) with its own weights;
    (2) the ``k`` units that put the least attention on the null slot become active; (3) active units
    update with their own LSTM/GRU cell on what they read; (4) active units read all units through
    multi-head attention (residual); (5) inactive units keep ``h`` and ``c`` bit for bit, and the
    step's update sends them no gradient.

    Args:
        input_size: features per input slot.
        hidden_size: total state size, ``n_units * unit_size`` (same meaning as ``nn.LSTM``).
        n_units: number of mechanisms (paper: 6).
        k: active units per step (paper: 4; 5 was slightly better on Atari).
        cell: ``"lstm"`` or ``"gru"``; with GRU units ``c`` is carried as zeros.
        input_key_size: key/query size per head of the input attention (paper: 64).
        input_value_size: size of what a unit reads from the input, split across heads; its cell's
            input size (paper: ``unit_size * 4``; ``None`` picks that).
        input_heads: heads of the input attention (paper: 4).
        input_dropout: dropout on input-attention probabilities (paper: 0.1).
        comm_key_size: key/query size per head of the communication attention (paper: 32).
        comm_value_size: value size per head of the communication attention (paper: 32).
        comm_heads: heads of the communication attention (paper: 4).
        comm_dropout: dropout on communication-attention probabilities (paper: 0.1).
        comm_top_k: if set, each active unit reads only its ``comm_top_k`` best-scoring units.
        use_comm: turn communication off for ablations.
        input_competition: False removes the null slot for ablations: every unit reads the input (its
            attention runs over the real slots only; with one slot each head reads all of it) and every
            unit updates, so ``k`` must equal ``n_units``. The null slot is what a unit loses the
            competition with; without it there is nothing to select on. Runs the autograd reference loop
            (the fused loops assume the null slot). With one input slot the query and key weights are
            unused (no gradient; still counted in the parameters).
    """

    accepts_slots = True  # x may also be [T, B, n_slots, input_size]
    supports_keyed_dropout = True
    width_kwargs = ("unit_size",)  # resolve_kwargs: the width is n_units * unit_size

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 600,
        n_units: int = 6,
        k: int = 4,
        cell: str = "lstm",
        input_key_size: int = 64,
        input_value_size: int | None = None,
        input_heads: int = 4,
        input_dropout: float = 0.1,
        comm_key_size: int = 32,
        comm_value_size: int = 32,
        comm_heads: int = 4,
        comm_dropout: float = 0.1,
        comm_top_k: int | None = None,
        use_comm: bool = True,
        input_competition: bool = True,
    ) -> None:
        super().__init__(input_size, hidden_size)  # checks both, sets nn.LSTM's attributes
        for name, value in (
            ("n_units", n_units),
            ("input_key_size", input_key_size),
            ("input_heads", input_heads),
            ("comm_key_size", comm_key_size),
            ("comm_value_size", comm_value_size),
            ("comm_heads", comm_heads),
        ):
            check_positive(name, value)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= n_units:
            raise ValueError(f"k must be an integer in [1, n_units={n_units}], got {k!r}")
        if not isinstance(input_competition, bool):
            raise ValueError(f"input_competition must be true or false, got {input_competition!r}")
        if not input_competition and k != n_units:
            raise ValueError(
                f"input_competition=False makes every unit active, so k must equal n_units={n_units} "
                f"(got k={k}); set k={n_units}"
            )
        if cell not in _CELLS:
            raise ValueError(f"cell must be one of {_CELLS}, got {cell!r}")
        _check_divides("hidden_size", hidden_size, "n_units", n_units)
        unit_size = hidden_size // n_units
        if input_value_size is None:
            input_value_size = unit_size * 4
        check_positive("input_value_size", input_value_size)
        _check_divides("input_value_size", input_value_size, "input_heads", input_heads)
        for name, p in (("input_dropout", input_dropout), ("comm_dropout", comm_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p!r}")
        if comm_top_k is not None and not (isinstance(comm_top_k, int) and 1 <= comm_top_k <= n_units):
            raise ValueError(
                f"comm_top_k must be None or an integer in [1, n_units={n_units}], got {comm_top_k!r}"
            )

        self.n_units = n_units
        self.unit_size = unit_size
        self.k = k
        self.cell = cell
        self.input_heads = input_heads
        self.input_key_size = input_key_size
        self.input_value_size = input_value_size
        self.comm_heads = comm_heads
        self.comm_key_size = comm_key_size
        self.comm_value_size = comm_value_size
        self.comm_top_k = comm_top_k
        self.use_comm = use_comm
        self.input_competition = input_competition
        self.input_dropout = nn.Dropout(input_dropout)
        self.comm_dropout = nn.Dropout(comm_dropout)

        n_gates = 4 if cell == "lstm" else 3
        self._gate_size = n_gates * unit_size
        q_in = input_heads * input_key_size
        # Input attention: keys/values shared over units (no bias, so the null slot has key 0 and
        # value 0); queries from each unit's state with its own weights.
        self.input_key = nn.Linear(input_size, q_in, bias=False)
        self.input_value = nn.Linear(input_size, input_value_size, bias=False)
        self.w_query = nn.Parameter(torch.empty(n_units, unit_size, q_in))
        # Each unit's own cell: input weights (from what it read), recurrent weights, biases.
        self.w_x = nn.Parameter(torch.empty(n_units, input_value_size, self._gate_size))
        self.w_hh = nn.Parameter(torch.empty(n_units, unit_size, self._gate_size))
        self.b_x = nn.Parameter(torch.empty(n_units, self._gate_size))
        self.b_h = nn.Parameter(torch.empty(n_units, self._gate_size))
        # Communication: per-unit query/key/value from the updated state, per-unit output projection.
        c_qkv = comm_heads * (2 * comm_key_size + comm_value_size)
        self.w_comm = nn.Parameter(torch.empty(n_units, unit_size, c_qkv))
        self.w_comm_out = nn.Parameter(torch.empty(n_units, comm_heads * comm_value_size, unit_size))
        self.reset_parameters()
        self.last_active_mask: Tensor | None = None
        #: Fused loop with a hand-written backward (exact; see ``forward``); False: the autograd reference.
        self.fast_path = True
        #: On the fast path, one input slot and LSTM units run the re-derived loop (``rims_derived``: fewer
        #: kernels per step, C++ on CPU where a compiler exists): ``None`` (default) where the batch is at
        #: most ``DERIVED_MAX_BATCH`` and the C++ loop is built (its Python loop is no faster than the fused
        #: one; on CUDA it is unmeasured); True: always; False: never (the general fused loop).
        self.derived_step: bool | None = None

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) per unit, as torch does for Linear/LSTM."""
        self.input_key.reset_parameters()
        self.input_value.reset_parameters()
        for w in (self.w_query, self.w_x, self.w_hh, self.w_comm, self.w_comm_out):
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)
        bound = 1.0 / math.sqrt(self.unit_size)
        nn.init.uniform_(self.b_x, -bound, bound)
        nn.init.uniform_(self.b_h, -bound, bound)

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, n_units={self.n_units}, "
            f"k={self.k}, cell={self.cell!r}, input_heads={self.input_heads}, comm_heads={self.comm_heads}"
            + ("" if self.input_competition else ", input_competition=False")
        )

    @classmethod
    def default_hidden_size(cls, kwargs: Mapping[str, Any]) -> int:
        """``n_units * unit_size`` (6 x 32 when neither is given)."""
        n_units = kwargs.get("n_units", DEFAULT_UNITS)
        unit_size = kwargs.get("unit_size", DEFAULT_UNIT_SIZE)
        if isinstance(n_units, int) and isinstance(unit_size, int):
            return n_units * unit_size
        return DEFAULT_UNITS * DEFAULT_UNIT_SIZE  # the constructor names the bad value

    @classmethod
    def resolve_kwargs(cls, hidden_size: int, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Consume ``unit_size``; pick ``n_units`` (and ``k``) that divide a width 6 units do not."""
        kw = dict(kwargs)
        unit_size = kw.pop("unit_size", None)
        n_units = kw.get("n_units")
        if unit_size is not None:
            check_positive("unit_size", unit_size)
            n = DEFAULT_UNITS if n_units is None else n_units
            if isinstance(n, int) and n * unit_size != hidden_size:
                raise ValueError(
                    f"lstm_hidden_size={hidden_size} disagrees with n_units={n} x unit_size={unit_size} = "
                    f"{n * unit_size}; give one of them"
                )
        elif n_units is None and hidden_size % DEFAULT_UNITS != 0:
            kw["n_units"] = n = max(d for d in range(1, DEFAULT_UNITS + 1) if hidden_size % d == 0)
            kw.setdefault("k", max(1, round(n * 2 / 3)))
        elif isinstance(n_units, int) and n_units > 0 and hidden_size % n_units != 0:
            raise ValueError(
                f"lstm_hidden_size={hidden_size} must be divisible by n_units={n_units}; change one of them "
                f"(e.g. lstm_hidden_size={n_units * max(1, round(hidden_size / n_units))})"
            )
        return kw

    def install_keyed_dropout(self, salt: int) -> None:
        """Swap the attention dropout for ``KeyedDropout`` (no parameters: the optimizer is unaffected).

        ``input_dropout`` is applied to [n, B, ...] and ``comm_dropout`` to [n, n, B, H] attention
        probabilities, once per step each (``KeyedDropout`` checks the count). Only the autograd loop calls
        these modules (the fused path draws its own masks), so keyed dropout switches the fused path off.
        """
        self.fast_path = False
        self.input_dropout = KeyedDropout(self.input_dropout.p, batch_dim=1, salt=2 * salt + 1)
        self.comm_dropout = KeyedDropout(self.comm_dropout.p, batch_dim=2, salt=2 * salt + 2)

    def on_rollout_step(self) -> None:
        """Count which units were active on the step the core just ran (``stats`` reports them)."""
        mask = self.last_active_mask
        # The same mask object twice means the core did not run in between: do not count it again.
        if mask is None or self.__dict__.get("_usage_seen") is mask:
            return
        self.__dict__["_usage_seen"] = mask
        flat = mask.reshape(-1, mask.shape[-1])
        counts, steps = self.__dict__.get("_usage", (0, 0))
        self.__dict__["_usage"] = (counts + flat.sum(0).cpu(), steps + flat.shape[0])

    def stats(self) -> dict[str, float]:
        """Unit usage over the rollout steps counted since the last call: ``unit_<i>_active``, the fraction
        of steps unit ``i`` was active (they sum to ``k``), and ``usage_entropy`` (1: every unit used
        equally often; lower: some units dominate)."""
        counts, steps = self.__dict__.pop("_usage", (0, 0))
        if not steps:
            return {}
        freq = (counts.double() / steps).numpy()
        out = {f"unit_{i}_active": float(f) for i, f in enumerate(freq)}
        out["usage_entropy"] = usage_entropy(freq)
        return out

    def __getstate__(self) -> dict:
        """Pickle/deepcopy without the fused path's pooled buffers and weight cache (weakrefs)."""
        state = dict(super().__getstate__())
        for key in (*_POOLED, "_usage", "_usage_seen"):
            state.pop(key, None)
        return state

    def release_buffers(self) -> None:
        """Free the fused path's pooled buffers (saved activations of up to two calls, backward scratch,
        derived weights); they are re-created on the next call. They hold about the memory of one
        training forward+backward: ~1 GB at hidden 600, B=64, T=128; a few MB for the PPO presets."""
        for key in _POOLED:
            self.__dict__.pop(key, None)

    def forward(
        self, x: Tensor, state: State | None = None, episode_starts: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """Run a whole sequence.

        Args:
            x: [T, B, input_size] or [T, B, n_inputs, input_size].
            state: (h0, c0), each [1, B, hidden_size]; zeros if None.
            episode_starts: optional [T, B]; where 1 the state is zeroed before that step, so a rollout
                with resets runs in one call.

        Returns:
            output [T, B, hidden_size] and (hT, cT). The activation mask of the call, [T, B, n_units]
            bool, is kept (detached) in ``self.last_active_mask``.

        Runs the fused time loop with its hand-written backward (``_RIMsSequence``; dropout masks are
        drawn as ``nn.Dropout`` draws them on CPU and saved) unless ``self.fast_path`` is False: then the
        reference loop below, differentiated by autograd.
        """
        self._check_input(x, state, episode_starts)
        if x.dim() == 3:
            x = x.unsqueeze(2)
        if state is None:
            state = self.initial_state(x.shape[1], x.device)
        if self.fast_path and self.input_competition:
            return self._forward_fused(x, state, episode_starts)
        return self._forward_autograd(x, state, episode_starts)

    def _forward_autograd(
        self, x: Tensor, state: State, episode_starts: Tensor | None
    ) -> tuple[Tensor, State]:
        """The reference: one step at a time in plain torch ops, differentiated by autograd.

        ``x`` is [T, B, S, input_size]. The ground truth for the fused path in the tests.
        """
        T, B, S, _ = x.shape
        n, u = self.n_units, self.unit_size
        # Internally unit-major [n, B, u], so every per-unit matmul is a plain bmm over units.
        h = state[0].reshape(B, n, u).transpose(0, 1)
        c = state[1].reshape(B, n, u).transpose(0, 1)

        # Everything that depends on the input only is computed once for all steps.
        H, dk = self.input_heads, self.input_key_size
        keys = self.input_key(x).view(T, B, S, H, dk)
        values = self.input_value(x).view(T, B, S, H, self.input_value_size // H)
        if S == 1:
            values = values.squeeze(2)
        if S == 1 and self.input_competition:  # without competition one slot needs no scores at all
            # One slot: fold each unit's query weights into the keys, so a step's attention score is
            # a dot product in the unit's own space: q.k = h . (W_q k).
            w_query = self.w_query.view(n, u, H, dk) * (1.0 / math.sqrt(dk))
            keys = torch.einsum("nuhd,tbhd->tnbhu", w_query, keys.squeeze(2))
        if self.cell == "lstm":  # one matmul per step on [read, h]
            w_cell = torch.cat([self.w_x, self.w_hh], dim=1)
            b_cell = (self.b_x + self.b_h).unsqueeze(1)
        w_comm = self._scaled_w_comm() if self.use_comm else None
        keep = None if episode_starts is None else (1.0 - episode_starts.to(x.dtype)).view(T, 1, B, 1)
        # Training sequences start episodes only at their first step: then no per-step reset is needed.
        first_only = episode_starts is not None and T > 1 and not bool(episode_starts[1:].any())

        # unbind, not keys[t]: indexing would make every step's backward write a zero tensor of all T steps.
        keys_t, values_t = keys.unbind(0), values.unbind(0)
        keep_t = None if keep is None else keep.unbind(0)
        outputs, masks = [], []
        for t in range(T):
            if keep_t is not None and (t == 0 or not first_only):
                h = h * keep_t[t]
                c = c * keep_t[t]
            read, mask = self._input_attention(keys_t[t], values_t[t], h)
            if self.cell == "lstm":
                gates = torch.baddbmm(b_cell, torch.cat([read, h], dim=-1), w_cell)
                ifo, g = gates.split((3 * u, u), dim=-1)
                i, f, o = torch.sigmoid(ifo).chunk(3, dim=-1)
                c_new = f * c + i * torch.tanh(g)
                h_new = o * torch.tanh(c_new)
            else:
                gx = torch.baddbmm(self.b_x.unsqueeze(1), read, self.w_x)
                gh = torch.baddbmm(self.b_h.unsqueeze(1), h, self.w_hh)
                (xrz, xn), (hrz, hn) = gx.split((2 * u, u), dim=-1), gh.split((2 * u, u), dim=-1)
                r, z = torch.sigmoid(xrz + hrz).chunk(2, dim=-1)
                cand = torch.tanh(xn + r * hn)
                h_new = cand + z * (h - cand)
                c_new = c
            m = mask.unsqueeze(-1)
            if self.use_comm:  # active units read all units (inactive ones offer their old state)
                h_new = h_new + self._communicate(torch.where(m, h_new, h), w_comm)
            # Sparse update: inactive units keep h and c exactly and get no gradient from this step.
            h, c = torch.where(m, h_new, h), torch.where(m, c_new, c)
            outputs.append(h)
            masks.append(mask)
        out = torch.stack(outputs).transpose(1, 2).reshape(T, B, self.hidden_size)
        self.last_active_mask = torch.stack(masks).transpose(1, 2).detach()
        h_t = h.transpose(0, 1).reshape(1, B, self.hidden_size)
        c_t = c.transpose(0, 1).reshape(1, B, self.hidden_size)
        return out, (h_t, c_t)

    def _forward_fused(self, x: Tensor, state: State, episode_starts: Tensor | None) -> tuple[Tensor, State]:
        """Input-only work and weight folding under autograd, then the time loop as one ``_RIMsSequence``.

        Same math as ``_forward_autograd``; without grad (rollouts) the loop runs directly, saving nothing.
        """
        T, B, S, _ = x.shape
        n, u = self.n_units, self.unit_size
        h0 = state[0].reshape(B, n, u).transpose(0, 1)
        c0 = state[1].reshape(B, n, u).transpose(0, 1)
        H, dk = self.input_heads, self.input_key_size
        keys = self.input_key(x).view(T, B, S, H, dk)
        values = self.input_value(x).view(T, B, S, H, self.input_value_size // H)
        w_query = self.w_query
        if S == 1:  # fold the query weights into the keys, as in _forward_autograd: [T,n,B,H,u]
            w_q = self.w_query.view(n, u, H, dk) * (1.0 / math.sqrt(dk))
            keys = torch.einsum("nuhd,tbhd->tnbhu", w_q, keys.squeeze(2)).contiguous()
            values = values.squeeze(2)
        derived = S == 1 and self.cell == "lstm" and self.derived_step is not False
        if self.derived_step is None:  # by default only where it was measured faster: small batches, C++
            derived = derived and B <= DERIVED_MAX_BATCH and rims_ext.usable(x)
        cell_w, w_comm = self._fused_weights(derived)
        resets: list[int] = []
        keep = None
        if episode_starts is not None:
            keep = (1.0 - episode_starts.to(x.dtype)).view(T, B, 1)
            resets = [t for t, any_start in enumerate(episode_starts.bool().any(dim=1).tolist()) if any_start]
        if derived:  # (keys, values, h0, c0, w_x, w_hh, b, w_comm, w_comm_out)
            inputs = (keys, values, h0, c0, *cell_w, w_comm, self.w_comm_out)
        else:
            inputs = (keys, values, h0, c0, w_query, w_comm, self.w_comm_out, *cell_w)
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
        if derived and grad:
            out, c_t, mask = _RIMsDerived.apply(self, resets, keep, *inputs)
        elif derived:
            out, c_t, mask = _derived_loop(self, resets, keep, *inputs, save=False)[:3]
        elif grad:
            out, c_t, mask = _RIMsSequence.apply(self, resets, keep, *inputs)
        else:
            out, c_t, mask = _fused_loop(self, resets, keep, *inputs, save=False)[:3]
        if self.cell == "gru":  # GRU units carry c untouched apart from resets (zeros in practice)
            c_t = c0
            for t in resets:  # resets are only listed where episode starts were given
                assert keep is not None
                c_t = c_t * keep[t]
        self.last_active_mask = mask.transpose(1, 2)
        h_t = out[-1].transpose(0, 1).reshape(1, B, self.hidden_size)
        c_t = c_t.transpose(0, 1).reshape(1, B, self.hidden_size)
        return out.transpose(1, 2).reshape(T, B, self.hidden_size), (h_t, c_t)

    def _input_attention(self, keys: Tensor, values: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """What each unit reads, [n,B,input_value_size], and which units win, [n,B] bool.

        keys: [n,B,H,u] (one slot, query weights folded in) or [B,S,H,dk]; values: [B,(S,)H,dv].
        """
        n, B, _ = h.shape
        if not self.input_competition:  # ablation: no null slot, so every unit reads and updates
            everyone = torch.ones(n, B, dtype=torch.bool, device=h.device)
            if values.dim() == 3:  # one slot: the softmax over it alone is 1 for every head
                ones = torch.ones(n, B, values.shape[1], dtype=h.dtype, device=h.device)
                read = self.input_dropout(ones).unsqueeze(-1) * values
            else:
                H, dk = self.input_heads, self.input_key_size
                query = torch.bmm(h, self.w_query).view(n, B, H, dk)
                probs = (torch.einsum("nbhd,bshd->nbhs", query, keys) * (1.0 / math.sqrt(dk))).softmax(-1)
                read = torch.einsum("nbhs,bshv->nbhv", self.input_dropout(probs), values)
            return read.reshape(n, B, -1), everyone
        if values.dim() == 3:  # one input slot
            # Softmax over [null (score 0), slot (score s)] is sigmoid(s) on the slot.
            p_input = torch.sigmoid(torch.linalg.vecdot(h.unsqueeze(2), keys))  # [n, B, H]
            attention_on_input = p_input.mean(dim=-1)
            read = self.input_dropout(p_input).unsqueeze(-1) * values  # [n, B, H, dv]
        else:
            H, dk = self.input_heads, self.input_key_size
            query = torch.bmm(h, self.w_query).view(n, B, H, dk)
            scores = torch.einsum("nbhd,bshd->nbhs", query, keys) * (1.0 / math.sqrt(dk))
            probs = F.pad(scores, (1, 0)).softmax(dim=-1)  # [n, B, H, 1 + S], null slot first
            attention_on_input = 1.0 - probs[..., 0].mean(dim=-1)
            read = torch.einsum("nbhs,bshv->nbhv", self.input_dropout(probs)[..., 1:], values)
        # Competition: the k units that attend least to the null slot win.
        winners = torch.topk(attention_on_input, self.k, dim=0).indices
        mask = torch.zeros(n, B, dtype=torch.bool, device=h.device).scatter_(0, winners, True)
        return read.reshape(n, B, -1), mask

    def _fused_weights(self, derived: bool = False) -> tuple[tuple[Tensor, ...], Tensor]:
        """The weights in the fused loop's layout: ``(cell weights, w_comm)``.

        LSTM: ``W_cell = [W_x; W_hh]`` and ``b_x + b_h`` (one matmul per step on [read, h]); with
        ``derived`` (``rims_derived``), ``W_x``, ``W_hh`` and ``b_x + b_h``; GRU: the four as they are.
        ``w_comm`` gets the query scale and its columns grouped per head as [query, key, value], so a
        step's projection [n, B, heads * (2 dk + dv)] views as [B * heads, n, 2 dk + dv] with no copy
        and the communication attention runs as batched matmuls over (sample, head).
        Without grad (rollouts: one call per env step) the result is cached until a weight changes
        (in-place updates bump ``_version``; moves and casts change ``data_ptr``).
        """
        sources = (self.w_x, self.w_hh, self.b_x, self.b_h, self.w_comm)
        key = (derived, *((w.data_ptr(), w._version, w.dtype, w.device) for w in sources))
        cache = None if torch.is_grad_enabled() else self.__dict__.get("_fused_weight_cache")
        # weakrefs: a replaced parameter is another object even if its memory lands at the old address
        if (
            cache is not None
            and cache[1] == key
            and all(r() is w for r, w in zip(cache[0], sources, strict=True))
        ):
            return cache[2]
        if self.cell == "lstm" and derived:
            cell_w: tuple[Tensor, ...] = (self.w_x, self.w_hh, (self.b_x + self.b_h).unsqueeze(1))
        elif self.cell == "lstm":
            cell_w = (torch.cat([self.w_x, self.w_hh], dim=1), (self.b_x + self.b_h).unsqueeze(1))
        else:
            cell_w = (self.w_x, self.w_hh, self.b_x.unsqueeze(1), self.b_h.unsqueeze(1))
        w_comm: Tensor = self.w_comm
        if self.use_comm:
            n, u = self.n_units, self.unit_size
            H, dk, dv = self.comm_heads, self.comm_key_size, self.comm_value_size
            q, k, v = self.w_comm.split((H * dk, H * dk, H * dv), dim=-1)
            heads = (q.view(n, u, H, dk) * (1.0 / math.sqrt(dk)), k.view(n, u, H, dk), v.view(n, u, H, dv))
            w_comm = torch.cat(heads, dim=-1).view(n, u, H * (2 * dk + dv))
        if not torch.is_grad_enabled():
            refs = tuple(weakref.ref(w) for w in sources)
            self.__dict__["_fused_weight_cache"] = (refs, key, (cell_w, w_comm))
        return cell_w, w_comm

    def _scaled_w_comm(self) -> Tensor:
        """``w_comm`` with the query columns scaled by 1/sqrt(key size): one op per call, not per step."""
        H, dk = self.comm_heads, self.comm_key_size
        scale = torch.ones(self.w_comm.shape[-1], dtype=self.w_comm.dtype, device=self.w_comm.device)
        scale[: H * dk] = 1.0 / math.sqrt(dk)
        return self.w_comm * scale

    def _communicate(self, h: Tensor, w_comm: Tensor | None = None) -> Tensor:
        """Multi-head attention of each unit over all units, [n,B,u] -> [n,B,u] (caller adds the residual).

        ``w_comm``: ``_scaled_w_comm()``, passed in so that a sequence computes it once.
        """
        n, B, _ = h.shape
        H, dk, dv = self.comm_heads, self.comm_key_size, self.comm_value_size
        qkv = torch.bmm(h, self._scaled_w_comm() if w_comm is None else w_comm)
        q, k, v = qkv.split((H * dk, H * dk, H * dv), dim=-1)
        q = q.reshape(n, 1, B, H, dk)
        k = k.reshape(1, n, B, H, dk)
        # n is small: broadcast-multiply beats B*H bmm calls on n x n matrices.
        scores = (q * k).sum(-1)  # [n_query, n_key, B, H], already scaled through the query weights
        if self.comm_top_k is not None and self.comm_top_k < n:
            kth = scores.topk(self.comm_top_k, dim=1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = self.comm_dropout(scores.softmax(dim=1)).unsqueeze(-1)
        attended = (probs * v.reshape(1, n, B, H, dv)).sum(1)  # [n, B, H, dv]
        return torch.bmm(attended.reshape(n, B, H * dv), self.w_comm_out)
