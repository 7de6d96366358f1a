"""Recurrent Independent Mechanisms (Goyal et al., ICLR 2021) as a drop-in for ``nn.LSTM``.

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
    state:  (h, c), each [1, B, hidden_size]; hidden_size = n_units * unit_size
    output: [T, B, hidden_size]
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rims_rl.recurrent import RecurrentCore, State, check_positive

_CELLS = ("lstm", "gru")
#: Attributes the fused path keeps on the module between calls (see ``RIMs.release_buffers``).
_POOLED = ("_forward_pool", "_backward_workspace", "_fused_weight_cache")


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
    """

    accepts_slots = True  # x may also be [T, B, n_slots, input_size]

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
        )

    def __getstate__(self) -> dict:
        """Pickle/deepcopy without the fused path's pooled buffers and weight cache (weakrefs)."""
        state = dict(super().__getstate__())
        for key in _POOLED:
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
        if self.fast_path:
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
            # One slot: fold each unit's query weights into the keys, so a step's attention score is
            # a dot product in the unit's own space: q.k = h . (W_q k).
            w_query = self.w_query.view(n, u, H, dk) * (1.0 / math.sqrt(dk))
            keys = torch.einsum("nuhd,tbhd->tnbhu", w_query, keys.squeeze(2))
            values = values.squeeze(2)
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
        cell_w, w_comm = self._fused_weights()
        resets: list[int] = []
        keep = None
        if episode_starts is not None:
            keep = (1.0 - episode_starts.to(x.dtype)).view(T, B, 1)
            resets = [t for t, any_start in enumerate(episode_starts.bool().any(dim=1).tolist()) if any_start]
        inputs = (keys, values, h0, c0, w_query, w_comm, self.w_comm_out, *cell_w)
        if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
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

    def _fused_weights(self) -> tuple[tuple[Tensor, ...], Tensor]:
        """The weights in the fused loop's layout: ``(cell weights, w_comm)``.

        LSTM: ``W_cell = [W_x; W_hh]`` and ``b_x + b_h`` (one matmul per step on [read, h]); GRU: the
        four as they are. ``w_comm`` gets the query scale and its columns grouped per head as [query,
        key, value], so a step's projection [n, B, heads * (2 dk + dv)] views as [B * heads, n, 2 dk + dv]
        with no copy and the communication attention runs as batched matmuls over (sample, head).
        Without grad (rollouts: one call per env step) the result is cached until a weight changes
        (in-place updates bump ``_version``; moves and casts change ``data_ptr``).
        """
        sources = (self.w_x, self.w_hh, self.b_x, self.b_h, self.w_comm)
        key = tuple((w.data_ptr(), w._version, w.dtype, w.device) for w in sources)
        cache = None if torch.is_grad_enabled() else self.__dict__.get("_fused_weight_cache")
        # weakrefs: a replaced parameter is another object even if its memory lands at the old address
        if (
            cache is not None
            and cache[1] == key
            and all(r() is w for r, w in zip(cache[0], sources, strict=True))
        ):
            return cache[2]
        if self.cell == "lstm":
            cell_w: tuple[Tensor, ...] = (
                torch.cat([self.w_x, self.w_hh], dim=1),
                (self.b_x + self.b_h).unsqueeze(1),
            )
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


# ----------------------------------------------------------------------------------------------------------
# The fused time loop and its hand-written backward.
#
# Per step t (unit-major: h, c are [n, B, u]; m is the step's [n, B, 1] activation mask):
#   input attention (one slot, keys K_t [n,B,H,u] with the query weights folded in):
#       p = sigmoid(h . K_t)  [n,B,H];  read = p * V_t  [n,B,H,dv]
#   (several slots: scores = (h W_q) . K_t / sqrt(dk), probs = softmax over [null=0, slots], read = probs V_t)
#   LSTM: [i f o g] = [sig sig sig tanh]([read, h] W_cell + b);  c' = f c + i g;  h' = o tanh(c')
#   GRU:  [r z] = sig(gx_rz + gh_rz);  n = tanh(gx_n + r gh_n);  h' = n + z (h - n)  (gx, gh: read/h affine)
#   communication on hm = where(m, h', h): [q k v] = hm W_comm;  P = softmax_units(q . k) (top-k masked);
#       h' += (P v) W_comm_out
#   update: h = where(m, h', h), c = where(m, c', c)
# Backward runs the steps in reverse carrying dh, dc; every factor that does not depend on the incoming
# gradient (sigmoid/tanh derivatives, products of saved activations) is computed for all steps at once
# before the loop, and every weight gradient is one bmm over all T*B rows after it.
# ----------------------------------------------------------------------------------------------------------


class _Workspace:
    """The flat buffers of one ``_fused_loop`` call, taken from and given back to a module's pool.

    Buffers grow to the largest size asked for and are handed out as views. They go back to the pool by
    ``release()`` (no-grad calls) or when this holder dies with the autograd graph that saved it, never
    while a backward may still read them. The pool keeps at most ``keep`` sets per module (training
    holds two at once: the previous graph is freed after the next forward).
    """

    keep = 2

    def __init__(self, pool: list, opts: dict, flat: dict) -> None:
        self.pool, self.opts, self.flat, self.released = pool, opts, flat, False

    @classmethod
    def acquire(cls, core: RIMs, opts: dict) -> _Workspace:
        pool: list = core.__dict__.setdefault("_forward_pool", [])
        for i, (pool_opts, flat) in enumerate(pool):
            if pool_opts == opts:
                del pool[i]
                return cls(pool, opts, flat)
        return cls(pool, opts, {})

    def get(self, name: str, unit_major: bool, T: int, n: int, B: int, X: int) -> Tensor:
        """A [T, n, B, X] buffer (stored unit-major if asked, see ``_unit_major``); contents undefined."""
        size = T * n * B * X
        flat = self.flat.get(name)
        if flat is None or flat.numel() < size:
            flat = self.flat[name] = torch.empty(size, **self.opts)
        if unit_major:
            return flat[:size].view(n, T, B, X).transpose(0, 1)
        return flat[:size].view(T, n, B, X)

    def release(self) -> None:
        if not self.released:
            self.released = True
            if len(self.pool) < self.keep:
                self.pool.append((self.opts, self.flat))

    def __del__(self) -> None:
        self.release()


def _unit_major(T: int, n: int, B: int, X: int, **opts: Any) -> Tensor:
    """A [T, n, B, X] buffer stored unit-major: step t's slice is written in the loop, and the weight
    gradients read all steps of a unit as [T*B, X] rows with no copy."""
    return torch.empty(n, T, B, X, **opts).transpose(0, 1)


def _dropout_noise(like: Tensor, p: float) -> Tensor:
    """A dropout mask (kept entries 1/(1-p)) drawn as ``nn.Dropout`` draws it on CPU, so the reference
    path gets the same one from the same seed."""
    return torch.empty_like(like).bernoulli_(1.0 - p).div_(1.0 - p)


def _dropped(x: Tensor, p: float, noises: list[Tensor]) -> Tensor:
    """``x`` with dropout; the mask is appended to ``noises`` for the backward."""
    noise = _dropout_noise(x, p)
    noises.append(noise)
    return x * noise


def _fused_loop(
    core: RIMs,
    resets: list[int],
    keep: Tensor | None,
    keys: Tensor,
    values: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_query: Tensor,
    w_comm: Tensor,
    w_comm_out: Tensor,
    *cell_w: Tensor,
    save: bool,
) -> tuple[Tensor, Tensor, Tensor, dict]:
    """The sequence without autograd: (out [T,n,B,u], cT [n,B,u], mask [T,n,B], saved).

    keys: [T,n,B,H,u] (one slot, query weights folded in) or [T,B,S,H,dk]; values: [T,B,(S,)H,dv];
    h0, c0: [n,B,u]; keep: [T,B,1] (applied before the steps listed in ``resets``); cell_w: (W_cell,
    b_cell) for LSTM, (W_x, W_hh, b_x, b_h) for GRU. ``saved`` holds what the backward needs (empty if
    not ``save``); the per-step buffers are written in place with ``out=``, so saving costs no copies.
    """
    one_slot = values.dim() == 4
    T, B = values.shape[:2]
    n, u, k = core.n_units, core.unit_size, core.k
    H, dk, Dv = core.input_heads, core.input_key_size, core.input_value_size
    dv = Dv // H
    lstm, comm = core.cell == "lstm", core.use_comm
    opts: dict[str, Any] = dict(dtype=h0.dtype, device=h0.device)
    reset_set = set(resets)
    p_drop_in = core.input_dropout.p if core.training else 0.0
    p_drop_c = core.comm_dropout.p if core.training else 0.0
    out = torch.empty(T, n, B, u, **opts)
    mask = torch.zeros(T, n, B, dtype=torch.bool, device=h0.device)
    # The saved activations come from the module's pool and go back when the graph that saved them is
    # freed (or at the end of a no-grad call): fresh buffers this size come from mmap, and first-touch
    # page faults cost more than the loop's arithmetic at large batches. ``out`` and ``mask`` escape, so
    # they are always fresh.
    ws = _Workspace.acquire(core, opts)
    sv: dict = {"mask": mask, "noise_in": [], "noise_c": [], "workspace": ws}
    if lstm:
        w_cell, b_cell = cell_w
        xh = ws.get("xh", True, T, n, B, Dv + u)  # the cell's input [read, h], rows for dW_cell
        reads, hs = xh[..., :Dv], xh[..., Dv:]
        acts = ws.get("acts", False, T, n, B, 4 * u)
        tcs = ws.get("tcs", False, T, n, B, u)
        cs = ws.get("cs", False, T + 1, n, B, u)
        cs[0] = c0
        sv.update(xh=xh, acts=acts, tcs=tcs, cs=cs)
    else:
        w_x, w_hh, b_x, b_h = cell_w
        reads = ws.get("reads", True, T, n, B, Dv)
        hs = ws.get("hs", True, T, n, B, u)
        rzs = ws.get("rzs", False, T, n, B, 2 * u)
        cands = ws.get("cands", False, T, n, B, u)
        ghns: list[Tensor] = []
        sv.update(reads=reads, rzs=rzs, cands=cands, ghns=ghns)
    sv["hs"] = hs
    if one_slot:
        p_in = ws.get("p_in", False, T, n, B, H)
        sv["p_in"] = p_in
    else:
        queries = ws.get("queries", True, T, n, B, H * dk)
        probs_in: list[Tensor] = []
        sv.update(queries=queries, probs_in=probs_in)
    if comm:
        Hc, dkc, dvc = core.comm_heads, core.comm_key_size, core.comm_value_size
        hms = ws.get("hms", True, T, n, B, u)
        G = 2 * dkc + dvc  # one head's [query, key, value] columns (w_comm comes in head order)
        qkvs = ws.get("qkvs", False, T, n, B, Hc * G)
        atts = ws.get("atts", True, T, n, B, Hc * dvc)
        probs_c: list[Tensor] = []
        sv.update(hms=hms, qkvs=qkvs, atts=atts, probs_c=probs_c)
        top_k = core.comm_top_k if core.comm_top_k is not None and core.comm_top_k < n else None

    # Every per-step view is cut once for all steps (``unbind``): indexing a tensor costs ~2 us and a
    # ``[..., a:b]`` slice ~6 us in Python, a list lookup ~0.1 us, and a step has dozens of them.
    hs_s, reads_s, mask_s, out_s = hs.unbind(0), reads.unbind(0), mask.unbind(0), out.unbind(0)
    m_s = mask.unsqueeze(-1).unbind(0)
    keys_s, values_s = keys.unbind(0), values.unbind(0)
    keep_s = keep.unbind(0) if keep is not None else ()
    if one_slot:
        p_in_s, read4_s = p_in.unbind(0), reads.view(T, n, B, H, dv).unbind(0)
    else:
        queries_s = queries.unbind(0)
    if lstm:
        xh_s, cs_s, tcs_s = xh.unbind(0), cs.unbind(0), tcs.unbind(0)
        ifo_s, g_s = acts[..., : 3 * u].unbind(0), acts[..., 3 * u :].unbind(0)
        i_s, f_s, o_s, gg_s = (a.unbind(0) for a in acts.split(u, dim=-1))
    else:
        rzs_s, r_s, z_s, cands_s = (
            rzs.unbind(0),
            rzs[..., :u].unbind(0),
            rzs[..., u:].unbind(0),
            cands.unbind(0),
        )
    if comm:
        hms_s, qkvs_s = hms.unbind(0), qkvs.unbind(0)
        heads = qkvs.view(T, n, B * Hc, G).transpose(1, 2)  # [T, B*Hc, n, G]
        q_s, k_s, v_s = (a.unbind(0) for a in heads.split((dkc, dkc, dvc), dim=-1))
        atts_s, att4_s = atts.unbind(0), atts.view(T, n, B, Hc, dvc).unbind(0)
    h = h0
    for t in range(T):
        h_t = hs_s[t]
        if t in reset_set:
            torch.mul(h, keep_s[t], out=h_t)
            if lstm:
                cs_s[t].mul_(keep_s[t])
        else:
            h_t.copy_(h)
        h = h_t
        if one_slot:
            p = torch.sigmoid(torch.linalg.vecdot(h.unsqueeze(2), keys_s[t]), out=p_in_s[t])
            score = p.mean(dim=-1)
            if p_drop_in > 0:
                p = _dropped(p, p_drop_in, sv["noise_in"])
            torch.mul(p.unsqueeze(-1), values_s[t], out=read4_s[t])
        else:
            q = torch.bmm(h, w_query, out=queries_s[t]).view(n, B, H, dk)
            scores = torch.einsum("nbhd,bshd->nbhs", q, keys_s[t]) * (1.0 / math.sqrt(dk))
            probs = F.pad(scores, (1, 0)).softmax(dim=-1)
            score = 1.0 - probs[..., 0].mean(dim=-1)
            probs_in.append(probs)
            if p_drop_in > 0:
                probs = _dropped(probs, p_drop_in, sv["noise_in"])
            reads_s[t].copy_(torch.einsum("nbhs,bshv->nbhv", probs[..., 1:], values_s[t]).reshape(n, B, Dv))
        mask_s[t].scatter_(0, torch.topk(score, k, dim=0).indices, True)
        m = m_s[t]
        if lstm:
            gates_ifo, gates_g = torch.baddbmm(b_cell, xh_s[t], w_cell).split((3 * u, u), dim=-1)
            torch.sigmoid(gates_ifo, out=ifo_s[t])
            torch.tanh(gates_g, out=g_s[t])
            c = cs_s[t]
            c_new = torch.addcmul(f_s[t] * c, i_s[t], gg_s[t])
            h_cell = o_s[t] * torch.tanh(c_new, out=tcs_s[t])
        else:
            gx_rz, gx_n = torch.baddbmm(b_x, reads_s[t], w_x).split((2 * u, u), dim=-1)
            gh_rz, ghn = torch.baddbmm(b_h, h, w_hh).split((2 * u, u), dim=-1)
            torch.sigmoid(gx_rz + gh_rz, out=rzs_s[t])
            r, z = r_s[t], z_s[t]
            cand = torch.tanh(torch.addcmul(gx_n, r, ghn), out=cands_s[t])
            h_cell = torch.addcmul(cand, z, h - cand)
            ghns.append(ghn)
        if comm:
            torch.where(m, h_cell, h, out=hms_s[t])
            # [B*Hc, n, G]: one small attention per (sample, head), as batched matmuls
            torch.bmm(hms_s[t], w_comm, out=qkvs_s[t])
            # Transposed, [B*Hc, n_key, n_query]: softmax over a middle dim of size n is ~3x faster on CPU
            # than over a last dim of size n.
            scores = torch.bmm(k_s[t], q_s[t].transpose(1, 2))
            if top_k is not None:
                kth = scores.topk(top_k, dim=1).values[:, -1:]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            P = scores.softmax(dim=1)
            probs_c.append(P)
            if p_drop_c > 0:  # drawn in the reference's [n_query, n_key, B, Hc] order, for the same mask
                noise = _dropout_noise(P.new_empty(n, n, B, Hc), p_drop_c)
                sv["noise_c"].append(noise.permute(2, 3, 1, 0).reshape(B * Hc, n, n))
                P = P * sv["noise_c"][-1]
            att_heads = torch.bmm(P.transpose(1, 2), v_s[t]).view(B, Hc, n, dvc)
            att4_s[t].copy_(att_heads.permute(2, 0, 1, 3))
            h_cell = h_cell + torch.bmm(atts_s[t], w_comm_out)
        h = torch.where(m, h_cell, h, out=out_s[t])
        if lstm:
            torch.where(m, c_new, c, out=cs_s[t + 1])
    c_t = cs[T].clone() if lstm else h0.new_zeros(0)
    if not save:
        ws.release()
    return out, c_t, mask, (sv if save else {})


def _fused_backward(
    core: RIMs,
    resets: list[int],
    keep: Tensor | None,
    keys: Tensor,
    values: Tensor,
    w_query: Tensor,
    w_comm: Tensor,
    w_comm_out: Tensor,
    cell_w: tuple[Tensor, ...],
    sv: dict,
    d_out: Tensor,
    d_ct: Tensor,
) -> tuple[Tensor | None, ...]:
    """Gradients of ``_fused_loop`` for (keys, values, h0, c0, w_query, w_comm, w_comm_out, *cell_w).

    d_out: [T,n,B,u], d_ct: [n,B,u]. Inactive units pass dh, dc straight through (``where``), so their
    rows of every per-step gradient are zero and their weights get nothing from that step.
    """
    one_slot = values.dim() == 4
    T, B = values.shape[:2]
    n, u = core.n_units, core.unit_size
    H, dk, Dv = core.input_heads, core.input_key_size, core.input_value_size
    dv = Dv // H
    lstm, comm = core.cell == "lstm", core.use_comm
    opts: dict[str, Any] = dict(dtype=d_out.dtype, device=d_out.device)
    reset_set = set(resets)
    mf = sv["mask"].to(d_out.dtype).unsqueeze(-1)  # [T,n,B,1]
    # Scratch buffers live only inside this call, so they are kept on the module and reused (grown to the
    # largest size seen; PPO minibatches vary in sequence count): fresh buffers of this size come from
    # mmap, and their first-touch page faults were ~15% of the backward at B=64.
    pool: dict = core.__dict__.setdefault("_backward_workspace", {})

    def ws(name: str, unit_major: bool, T: int, n: int, B: int, X: int) -> Tensor:
        flat = pool.get((name, d_out.dtype, d_out.device))
        if flat is None or flat.numel() < T * n * B * X:
            flat = pool[(name, d_out.dtype, d_out.device)] = torch.empty(T * n * B * X, **opts)
        if unit_major:
            return flat[: T * n * B * X].view(n, T, B, X).transpose(0, 1)
        return flat[: T * n * B * X].view(T, n, B, X)

    hs = sv["hs"]

    if lstm:
        w_cell_t = cell_w[0].transpose(1, 2)
        i, f, o, g = sv["acts"].split(u, dim=-1)
        tc, c_prev = sv["tcs"], sv["cs"][:T]
        k_c = o * (1.0 - tc * tc)  # dc'/dh' through h' = o tanh(c')
        # d(pre-activation) = fac * (dc' for i, f, g; dh' for o)
        fac = ws("fac", False, T, n, B, 4 * u)
        parts = [g * i * (1.0 - i), c_prev * f * (1.0 - f), tc * o * (1.0 - o), i * (1.0 - g * g)]
        torch.cat(parts, dim=-1, out=fac)
        dgates = ws("dgates", True, T, n, B, 4 * u)
        dxh = ws("dxh", False, T, n, B, Dv + u)
        dreads = dxh[..., :Dv]
        dc = d_ct
    else:
        w_x_t, w_hh_t = cell_w[0].transpose(1, 2), cell_w[1].transpose(1, 2)
        r, z = sv["rzs"].chunk(2, dim=-1)
        cand = sv["cands"]
        ghn = torch.stack(sv["ghns"])
        f_n = (1.0 - z) * (1.0 - cand * cand)  # dh' -> d(gx_n)
        f_r = ghn * r * (1.0 - r)  # d(gx_n) -> d(r pre-activation)
        f_z = (hs - cand) * z * (1.0 - z)  # dh' -> d(z pre-activation)
        dgx = ws("dgx", True, T, n, B, 3 * u)
        dgh = ws("dgh", True, T, n, B, 3 * u)
        dreads = ws("dreads", False, T, n, B, Dv)
    noise_in, noise_c = sv["noise_in"], sv["noise_c"]
    if one_slot:
        p_in = sv["p_in"]
        dsig = p_in * (1.0 - p_in)
        if noise_in:  # d(read)/d(p) passes the dropout mask; fold it into the sigmoid derivative
            noise_all = torch.stack(noise_in)
            dsig = dsig * noise_all
            p_in = p_in * noise_all
        ds = ws("ds", False, T, n, B, H)
    else:
        S = keys.shape[2]
        w_query_t = w_query.transpose(1, 2)
        dscores = ws("dscores", False, T, n, B, H * S).view(T, n, B, H, S)
        dqueries = ws("dqueries", True, T, n, B, H * dk)
        scale = 1.0 / math.sqrt(dk)
    if comm:
        Hc, dkc, dvc = core.comm_heads, core.comm_key_size, core.comm_value_size
        w_comm_t, w_comm_out_t = w_comm.transpose(1, 2), w_comm_out.transpose(1, 2)
        qkvs, probs_c = sv["qkvs"], sv["probs_c"]
        dcomm = ws("dcomm", True, T, n, B, u)
        dqkv = ws("dqkv", True, T, n, B, qkvs.shape[-1])
        G = 2 * dkc + dvc

    # Per-step views cut once (see _fused_loop).
    mf_s, d_out_s, reads4_s = mf.unbind(0), d_out.unbind(0), dreads.view(T, n, B, H, dv).unbind(0)
    keys_s, values_s = keys.unbind(0), values.unbind(0)
    keep_s = keep.unbind(0) if keep is not None else ()
    if comm:
        dcomm_s, dqkv_s = dcomm.unbind(0), dqkv.unbind(0)
        heads = qkvs.view(T, n, B * Hc, G).transpose(1, 2)  # [T, B*Hc, n, G]
        q_s, k_s, v_s = (a.unbind(0) for a in heads.split((dkc, dkc, dvc), dim=-1))
        d_heads_s = dqkv.view(T, n, B * Hc, G).transpose(1, 2).unbind(0)
    if lstm:
        k_c_s, fac4_s, fac_o_s = (
            k_c.unbind(0),
            fac.view(T, n, B, 4, u).unbind(0),
            fac[..., 2 * u : 3 * u].unbind(0),
        )
        dgates_s, dg4_s = dgates.unbind(0), dgates.view(T, n, B, 4, u).unbind(0)
        dg_o_s, f_s = dgates[..., 2 * u : 3 * u].unbind(0), f.unbind(0)
        dxh_s, dxh_h_s = dxh.unbind(0), dxh[..., Dv:].unbind(0)
    else:
        f_n_s, f_r_s, f_z_s, r_s, z_s = (a.unbind(0) for a in (f_n, f_r, f_z, r, z))
        dgx_s, dgh_s, dreads_s = dgx.unbind(0), dgh.unbind(0), dreads.unbind(0)
        dgx_r_s, dgx_z_s, dgx_n_s = (a.unbind(0) for a in dgx.split(u, dim=-1))
        dgx_rz_s, dgh_rz_s, dgh_n_s = (
            dgx[..., : 2 * u].unbind(0),
            *(a.unbind(0) for a in dgh.split((2 * u, u), -1)),
        )
    if one_slot:
        dsig_s, ds_s = dsig.unbind(0), ds.unbind(0)
    else:
        dscores_s, dqueries_s = dscores.unbind(0), dqueries.unbind(0)
        dq4_s = dqueries.view(T, n, B, H, dk).unbind(0)
    dh = torch.zeros(n, B, u, **opts)
    for t in reversed(range(T)):
        m = mf_s[t]
        dh_out = d_out_s[t] + dh
        if comm:
            d_att = torch.bmm(torch.mul(dh_out, m, out=dcomm_s[t]), w_comm_out_t)
            d_att = d_att.view(n, B * Hc, dvc).transpose(0, 1)  # [B*Hc, n, dv]
            P = probs_c[t]
            P_d = P * noise_c[t] if noise_c else P  # the probabilities the values were mixed with
            dP = torch.bmm(v_s[t], d_att.transpose(1, 2))  # all [B*Hc, n_key, n_query], as in the forward
            if noise_c:
                dP = dP * noise_c[t]
            dS = P * (dP - (P * dP).sum(dim=1, keepdim=True))
            # bmm's out= into a strided view is a slow path: one cat, then one copy into the unit-major rows
            d_heads = torch.cat(
                [torch.bmm(dS.transpose(1, 2), k_s[t]), torch.bmm(dS, q_s[t]), torch.bmm(P_d, d_att)], -1
            )
            d_heads_s[t].copy_(d_heads)
            dh_out = dh_out + torch.bmm(dqkv_s[t], w_comm_t)
        dh_cell = dh_out * m
        dh = dh_out - dh_cell
        if lstm:
            dc_new = dc * m
            dc_tot = torch.addcmul(dc_new, dh_cell, k_c_s[t])
            torch.mul(fac4_s[t], dc_tot.unsqueeze(2), out=dg4_s[t])
            torch.mul(fac_o_s[t], dh_cell, out=dg_o_s[t])
            torch.bmm(dgates_s[t], w_cell_t, out=dxh_s[t])
            dc = torch.addcmul(dc - dc_new, dc_tot, f_s[t])
            dh = dh + dxh_h_s[t]
        else:
            dn = torch.mul(dh_cell, f_n_s[t], out=dgx_n_s[t])
            torch.mul(dn, f_r_s[t], out=dgx_r_s[t])
            torch.mul(dh_cell, f_z_s[t], out=dgx_z_s[t])
            dgh_rz_s[t].copy_(dgx_rz_s[t])
            torch.mul(dn, r_s[t], out=dgh_n_s[t])
            torch.bmm(dgx_s[t], w_x_t, out=dreads_s[t])
            dh = torch.addcmul(dh, dh_cell, z_s[t]) + torch.bmm(dgh_s[t], w_hh_t)
        dread = reads4_s[t]
        if one_slot:
            d_p = (dread * values_s[t]).sum(-1)
            dsv = torch.mul(d_p, dsig_s[t], out=ds_s[t])
            dh = dh + (dsv.unsqueeze(-1) * keys_s[t]).sum(-2)
        else:
            ps = sv["probs_in"][t][..., 1:]
            dps = torch.einsum("nbhv,bshv->nbhs", dread, values_s[t])
            if noise_in:
                dps = dps * noise_in[t][..., 1:]
            dsc = torch.mul(ps * (dps - (ps * dps).sum(-1, keepdim=True)), scale, out=dscores_s[t])
            dq4_s[t].copy_(torch.einsum("nbhs,bshd->nbhd", dsc, keys_s[t]))
            dh = dh + torch.bmm(dqueries_s[t], w_query_t)
        if t in reset_set:
            dh = dh * keep_s[t]
            if lstm:
                dc = dc * keep_s[t]

    def rows(a: Tensor) -> Tensor:  # [T,n,B,X] -> [n,T*B,X] (a view for _unit_major buffers)
        return a.transpose(0, 1).reshape(n, T * B, a.shape[-1])

    def wgrad(a: Tensor, b: Tensor) -> Tensor:  # sum over all steps and samples of a^T b, per unit
        return torch.bmm(rows(a).transpose(1, 2), rows(b))

    if lstm:
        cell_grads: tuple[Tensor, ...] = (wgrad(sv["xh"], dgates), dgates.sum(dim=(0, 2)).unsqueeze(1))
    else:
        cell_grads = (
            wgrad(sv["reads"], dgx),
            wgrad(hs, dgh),
            dgx.sum(dim=(0, 2)).unsqueeze(1),
            dgh.sum(dim=(0, 2)).unsqueeze(1),
        )
    if one_slot:
        d_keys = ds.unsqueeze(-1) * hs.unsqueeze(-2)  # [T,n,B,H,u]
        d_values = (p_in.unsqueeze(-1) * dreads.reshape(T, n, B, H, dv)).sum(1)
        d_wq = None
    else:
        q_all = sv["queries"].view(T, n, B, H, dk)
        d_keys = torch.einsum("tnbhs,tnbhd->tbshd", dscores, q_all)
        ps_all = torch.stack(sv["probs_in"])[..., 1:]
        if noise_in:
            ps_all = ps_all * torch.stack(noise_in)[..., 1:]
        d_values = torch.einsum("tnbhs,tnbhv->tbshv", ps_all, dreads.reshape(T, n, B, H, dv))
        d_wq = wgrad(hs, dqueries)
    d_wc: Tensor | None = None  # no communication: those weights get no gradient
    d_wco: Tensor | None = None
    if comm:
        d_wc, d_wco = wgrad(sv["hms"], dqkv), wgrad(sv["atts"], dcomm)
    return (d_keys, d_values, dh, dc if lstm else None, d_wq, d_wc, d_wco, *cell_grads)


class _RIMsSequence(torch.autograd.Function):
    """The time loop as one autograd node: forward saves activations, backward is ``_fused_backward``."""

    @staticmethod
    def forward(
        ctx: Any,  # FunctionCtx: attributes are set on it (torch's stubs do not declare them)
        core: RIMs,
        resets: list[int],
        keep: Tensor | None,
        *inputs: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        out, c_t, mask, saved = _fused_loop(core, resets, keep, *inputs, save=True)
        ctx.core, ctx.resets, ctx.keep, ctx.saved = core, resets, keep, saved
        keys, values, _, _, w_query, w_comm, w_comm_out, *cell_w = inputs
        ctx.save_for_backward(keys, values, w_query, w_comm, w_comm_out, *cell_w)
        ctx.mark_non_differentiable(mask)
        return out, c_t, mask

    @staticmethod
    def backward(ctx: Any, d_out: Tensor, d_ct: Tensor, _: Tensor) -> tuple:
        keys, values, w_query, w_comm, w_comm_out, *cell_w = ctx.saved_tensors
        grads = _fused_backward(
            ctx.core,
            ctx.resets,
            ctx.keep,
            keys,
            values,
            w_query,
            w_comm,
            w_comm_out,
            tuple(cell_w),
            ctx.saved,
            d_out.contiguous(),
            d_ct,
        )
        return (None, None, None, *grads)
