"""Temporal Latent Bottleneck (Didolkar, Gupta, Goyal et al., NeurIPS 2022, arXiv 2205.14794) as a drop-in for
``nn.LSTM``, trained chunk-parallel.

Two streams over a sequence cut into chunks of ``K = chunk_size`` steps:

* **fast stream** -- a small pre-LayerNorm Transformer over the steps of the current chunk. Each of its
  ``L = n_layers`` layers is causal self-attention + FFN followed by cross-attention to the slow latents +
  FFN (the paper's interleaved "self-attention + FFN" / "cross-attention + FFN" blocks, Fig. 1);
* **slow stream** -- ``N = n_latents`` latent vectors ``I`` (the "temporal latent bottleneck"). They are
  read by every fast step but change only at the last step of a chunk, when they query the chunk's fast
  outputs ``Y`` (cross-attention + FFN) and take a gated recurrent update (the paper's recurrent ``G``).

Equations (``d = d_model``; a chunk holds steps at positions ``0..K-1``; ``Z`` is ``[K, d]``)::

    z^0_p      = W_e x_p + b_e + P[p]                                    (embedding + chunk position)
    for each fast layer l:
      A        = Z + SelfAttn(LN(Z) -> LN(Z), causal)                     (position p sees 0..p)
      A        = A + FFN(LN(A))
      B        = A + CrossAttn(LN(A) -> LN(I))                            (top-down read of the slow stream)
      Z        = B + FFN(LN(B))
    Y          = LN(Z);   out_p = W_o Y_p + b_o                           ([hidden_size] per step)
    at a chunk's end (position K-1):
      M        = CrossAttn(LN(I) -> Y);  M = M + FFN(LN(M))              (latents read the chunk)
      i, f     = sigmoid(W_g [M, I] + b_g)                                (forget bias starts at +1)
      I        = f * I + i * tanh(M)

**Training is chunk-parallel.** Every operation of the fast stream is causal within the chunk and reads
the latents, which are fixed during a chunk, so all steps of a chunk are one batched Transformer call
(:meth:`TemporalLatentBottleneck._fast`); the first layer's self-attention + FFN reads no latents and runs
on all chunks of a call at once. A sequence call splits each batch row into *chunk instances*: an
instance ends at position ``K-1`` or is cut by an episode start (which zeroes the state: fresh latents,
position 0). With starts anywhere the instances of different rows are not aligned, so round ``r`` gathers
each row's ``r``-th instance into a padded ``[B, K, d]`` tensor (the first one completed with the earlier
steps carried in the state), runs the fast stream once for the round, scatters the outputs back to their
time steps and updates the latents of rows whose instance ended. The number of rounds is about ``T / K``
plus the number of cuts; only the slow update (and the rounds' order) is sequential. The valid slots of an
instance are always a prefix ``0..p``, so the causal mask alone keeps padding unread.

**State** (only what recomputing the current chunk needs), ``s = cat(h, c, dim=-1)`` with
``state_size = ceil((N*d + (K-1)*d + 1) / 2)``::

    s[..., 0 : N*d]                 I - I_0: slow latents as an offset from the learned initial I_0
    s[..., N*d : (N+K-1)*d]         z^0 of the chunk's earlier steps [K-1, d] (slots 0..p-1; rest zero)
    s[..., (N+K-1)*d]               p: position in the chunk of the *next* step (0 .. K-1)
    the rest                        zero (at most one number, making the width even)

An all-zero state is "start of a chunk, learned initial latents, nothing seen": zeroing it where
``episode_starts`` is 1 starts a fresh episode. A step call (T=1) at position ``p`` recomputes the fast
stream over the chunk's ``p + 1`` steps from their stored ``z^0``, so step calls and sequence calls agree
to float rounding. ``out`` (``hidden_size`` features) is a linear map of ``Y``; ``h`` is not ``out[-1]``
(nothing in sb3-contrib assumes it is). ``state_size`` is independent of ``hidden_size``.

**Fast paths (issue 43; ``fast_path = False`` runs the code before, kept as the reference the tests
compare against).** A sequence call computes everything that does not read the latents (embedding, the
first layer's self-attention + FFN, its cross-attention queries) for all rounds before the loop over
rounds, calls torch's functions instead of modules, makes the latents' two projections per round one
matmul (LayerNorm's affine folded into the weights), and uses fused attention in the slow update (its
weights for :attr:`TemporalLatentBottleneck.last_slow_attention` are computed only when read); on CPU the
loop over rounds runs in C++ (``rims_rl.cores.tlb_ext``: the same ATen calls with autograd, same bits).
A no-grad step with one fast layer (sb3's rollout call, :meth:`TemporalLatentBottleneck._step`) computes
only the new slot: causal attention means its output reads slots ``0..p``, so only the self-attention's
keys and values are needed for the earlier slots; rows whose chunk ends also run the whole chunk for the slow
update. On CPU that step runs in C++ (``rims_rl.cores.tlb_ext``: the same ATen calls, the same bits),
which also keeps, for the state it returns, the keys and values of the chunk's slots and of the latents
and the chunk's outputs: the next step, if it continues from that very state with unchanged weights,
computes its new slot only and a chunk end only the slow update (same math; rounding apart). Outputs,
states and gradients equal the reference's to float64 rounding (``tests/test_tlb.py``).

**Defaults vs the paper.** Fig. 1 of the paper: chunks of ``K`` steps go through a Transformer ``F`` of
interleaved self-attention + FFN and cross-attention (to the latents) + FFN layers; the latent set ``I`` is
updated once per chunk by a recurrent function ``G`` that attends to ``F``'s outputs. That is the structure
here. The paper tunes ``K``, ``N`` and the depth per task (vision and RL models far larger than a policy's
core); the values here are ours, sized for RL policies whose core replaces a 120..600-wide LSTM:

* ``chunk_size=8``: the slow stream updates every 8 env steps; PPO sequences of 32..128 steps hold 4..16
  chunks, and a step call recomputes at most 8 positions;
* ``n_latents=4`` latents of width ``d_model``, one fast layer (``n_layers=1``: one self-attention + FFN and
  one cross-attention + FFN block, the smallest interleaving of Fig. 1), ``n_heads=4`` (16 features per
  head at ``d_model=64``);
* ``ffn_mult=2``, half the Transformer's usual 4: the FFNs are most of the FLOPs (the slow update's FFN and
  gate run on ``N * B`` latents per chunk, half as many rows as the chunk's steps), and 2 is what keeps a
  forward+backward under 1.5x ``nn.LSTM``'s on CPU (about 1.4x at width 192, against 1.55x with 4);
* ``d_model``: ``None`` picks ``max(64, 16 * floor(hidden_size / 48))`` (about a third of the width, at
  least 64; rounded to a multiple of ``n_heads``; resolved by the constructor, so direct construction,
  the registry and the policies all get it). The parameter count is then within 0.5x..2x of
  ``nn.LSTM(64, hidden_size)`` for widths 104..1592: 1.46x at 120, 0.68x at 192, 0.63x at 256, 0.73x at
  600, 0.79x at 1024. Below 104 the floor of 64 dominates (3.8x at 64). Dropout is not used.

Checkpoints of the TLB of rims-rl < 0.2 (state packed into ``2 * hidden_size``, ``d_model <= 28``) do not
load: :meth:`TemporalLatentBottleneck._load_from_state_dict` says so in one line.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rims_rl.checks import check_positive
from rims_rl.cores import tlb_ext
from rims_rl.cores.base import RecurrentCore, State

MIN_D_MODEL = 64

#: core -> (its parameters in the C++ step's order, its ``tlb_ext`` Runner: the C++ step with the cache of
#: its latest step). Held outside the module, so that it is neither pickled nor deep-copied with it.
_RUNNERS: weakref.WeakKeyDictionary[nn.Module, tuple[list[Tensor], Any]] = weakref.WeakKeyDictionary()


def default_d_model(hidden_size: int, n_heads: int = 4) -> int:
    """``d_model`` when none is given: about a third of the width, at least 64, a multiple of 16 and of
    ``n_heads`` (so the parameter count tracks ``nn.LSTM``'s, see the module docstring)."""
    step = math.lcm(16, n_heads)
    return max(-(-MIN_D_MODEL // step) * step, step * (hidden_size // (3 * step)))


def _lin(x: Tensor, m: nn.Linear) -> Tensor:
    """``m(x)`` without the module call's Python overhead (the fast paths run ~40 of these per round)."""
    return F.linear(x, m.weight, m.bias)


def _norm(x: Tensor, m: nn.LayerNorm) -> Tensor:
    """``m(x)`` for a LayerNorm, without the module call."""
    return F.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)


def _gelu(x: Tensor) -> Tensor:
    """Exact GELU through ATen's vectorised kernel instead of oneDNN's.

    On CPU, ``F.gelu`` hands a contiguous float32 input to oneDNN, which costs a fixed ~10 us forward and
    ~30 us backward per call: most of the time at these sizes (16..320 rows of 128). A transposed 2-D view
    is not contiguous, so it takes ATen's kernel (same function, ~1-5 us); the result is transposed back
    (contiguous again, no copy)."""
    f = x.shape[-1]
    return F.gelu(x.reshape(-1, f).t()).t().view(x.shape)


def _ffn(x: Tensor, m: _FFN) -> Tensor:
    """``m(x)`` for a :class:`_FFN` (LN, Linear, exact GELU, Linear), without the module calls."""
    norm, up, _, down = m._modules.values()
    return _lin(_gelu(_lin(_norm(x, cast(nn.LayerNorm, norm)), cast(nn.Linear, up))), cast(nn.Linear, down))


def _heads(t: Tensor, n_heads: int) -> Tensor:
    """[B, S, d] -> [B, H, S, d/H] (a view)."""
    B, S, d = t.shape
    return t.view(B, S, n_heads, d // n_heads).transpose(1, 2)


def _kv_heads(keys: Tensor, attn: _Attention) -> tuple[Tensor, Tensor]:
    """Keys and values of ``attn`` for keys [B, S, d]: each [B, H, S, d/H] (as ``_Attention._heads``)."""
    kv = _lin(keys, attn.kv)
    d = keys.shape[-1]  # split, not unbind: its backward is one cat, not a stack and a copy
    return _heads(kv[..., :d], attn.n_heads), _heads(kv[..., d:], attn.n_heads)


def _merge(read: Tensor) -> Tensor:
    """[B, H, Q, d/H] -> [B, Q, d]."""
    return read.transpose(1, 2).flatten(2)


class _Attention(nn.Module):
    """Multi-head attention with separate query / key-value inputs and an optional [Q, S] mask."""

    def __init__(self, d: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.o = nn.Linear(d, d)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor | None = None) -> Tensor:
        """query [B, Q, d], keys [B, S, d], mask [Q, S] (True: may attend) -> [B, Q, d] (fused kernel)."""
        q, k, v = self._heads(query, keys)
        read = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o(read.transpose(1, 2).flatten(2))

    def with_probs(self, query: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
        """Unmasked attention that also returns its weights: ([B, Q, d], probs [B, H, Q, S])."""
        q, k, v = self._heads(query, keys)
        probs = ((q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))).softmax(dim=-1)
        return self.o((probs @ v).transpose(1, 2).flatten(2)), probs

    def _heads(self, query: Tensor, keys: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q [B, H, Q, d/H], k and v [B, H, S, d/H]."""
        B, Q, d = query.shape
        H = self.n_heads
        q = self.q(query).view(B, Q, H, d // H).transpose(1, 2)
        k, v = self.kv(keys).view(B, keys.shape[1], 2, H, d // H).permute(2, 0, 3, 1, 4)
        return q, k, v


class _FFN(nn.Sequential):
    """Pre-LN position-wise feed-forward block (its residual is added by the caller)."""

    def __init__(self, d: int, mult: int) -> None:
        super().__init__(nn.LayerNorm(d), nn.Linear(d, mult * d), nn.GELU(), nn.Linear(mult * d, d))


class _FastLayer(nn.Module):
    """Causal self-attention + FFN, then cross-attention to the slow latents + FFN (pre-LN, residual)."""

    def __init__(self, d: int, n_heads: int, ffn_mult: int) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(d)
        self.self_attn = _Attention(d, n_heads)
        self.ffn_self = _FFN(d, ffn_mult)
        self.norm_cross = nn.LayerNorm(d)
        self.norm_slow = nn.LayerNorm(d)
        self.cross_attn = _Attention(d, n_heads)
        self.ffn_cross = _FFN(d, ffn_mult)

    def forward(self, z: Tensor, causal: Tensor, slow: Tensor) -> Tensor:
        """z [B, K, d] (a chunk's slots), causal [K, K], slow [B, N, d] -> [B, K, d]."""
        return self.read_slow(self.within_chunk(z, causal), slow)

    def within_chunk(self, z: Tensor, causal: Tensor) -> Tensor:
        """Causal self-attention + FFN: reads only the chunk, so it may run on many chunks at once."""
        h = self.norm_self(z)
        a = z + self.self_attn(h, h, causal)
        return a + self.ffn_self(a)

    def read_slow(self, a: Tensor, slow: Tensor) -> Tensor:
        """Cross-attention to the latents + FFN: a [B, K, d], slow [B, N, d] -> [B, K, d]."""
        b = a + self.cross_attn(self.norm_cross(a), self.norm_slow(slow))
        return b + self.ffn_cross(b)


class TemporalLatentBottleneck(RecurrentCore):
    """A TLB recurrent core with the interface of a one-layer, time-major ``nn.LSTM`` (see module doc).

    Args:
        input_size: features per step.
        hidden_size: width of ``out`` (a linear map of the fast stream's output).
        n_latents: slow-stream latent vectors ``N``.
        chunk_size: steps per chunk ``K`` (the slow stream updates once per chunk).
        n_layers: fast-stream layers ``L`` (each: self-attention + FFN, cross-attention + FFN).
        n_heads: attention heads (all attentions).
        d_model: width of both streams; ``None``: :func:`default_d_model` of ``hidden_size``.
        ffn_mult: FFN hidden width as a multiple of ``d_model``.
    """

    #: False: run the reference implementation (the code before issue 43: module calls, one
    #: ``_fast_reference`` per round, a full chunk recomputed per step call), kept to test and benchmark the
    #: fast paths against. Same parameters and state either way.
    fast_path: bool = True
    #: The no-grad step on CPU runs in C++ (``rims_rl.cores.tlb_ext``, same ATen calls, same results) where
    #: it builds; False: always the Python step.
    step_ext: bool = True
    #: The C++ step keeps what it computed for the state it returns (keys and values of the chunk's slots
    #: and of the latents, the chunk's outputs), and the next step that continues from that very state
    #: (same tensors, unmodified, same weights) computes only its new slot (``tlb_ext``). False: no cache.
    step_cache: bool = True
    #: With one fast layer, a CPU sequence call runs its loop over rounds in C++ (``tlb_ext``: the Python
    #: loop's ATen calls with autograd, without its Python); False: the Python loop.
    train_ext: bool = True

    # Version 2: chunk-parallel TLB with its own state_size (issue 25). Version 1 (nn.Module's default) was
    # the packed-state TLB; its checkpoints are refused in _load_from_state_dict.
    _version = 2

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 256,
        n_latents: int = 4,
        chunk_size: int = 8,
        n_layers: int = 1,
        n_heads: int = 4,
        d_model: int | None = None,
        ffn_mult: int = 2,
    ) -> None:
        for name, value in (
            ("input_size", input_size),
            ("hidden_size", hidden_size),
            ("n_latents", n_latents),
            ("chunk_size", chunk_size),
            ("n_layers", n_layers),
            ("n_heads", n_heads),
            ("ffn_mult", ffn_mult),
        ):
            check_positive(name, value)
        if d_model is None:
            d_model = default_d_model(hidden_size, n_heads)
        check_positive("d_model", d_model)
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        pos_index = (n_latents + chunk_size - 1) * d_model  # latents, then chunk memory, then position
        super().__init__(input_size, hidden_size, state_size=(pos_index + 2) // 2)  # ceil((pos_index+1)/2)
        self._slow_size = n_latents * d_model
        self._pos_index = pos_index

        self.n_latents = n_latents
        self.chunk_size = chunk_size
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.d_model = d_model
        self.ffn_mult = ffn_mult

        d = d_model
        self.embed = nn.Linear(input_size, d)
        self.position = nn.Parameter(torch.zeros(chunk_size, d))
        self.fast_layers = nn.ModuleList(_FastLayer(d, n_heads, ffn_mult) for _ in range(n_layers))
        self.norm_out = nn.LayerNorm(d)
        self.out = nn.Linear(d, hidden_size)
        self.initial_latents = nn.Parameter(torch.zeros(n_latents, d))
        self.norm_latents = nn.LayerNorm(d)
        self.slow_attn = _Attention(d, n_heads)
        self.slow_ffn = _FFN(d, ffn_mult)
        self.slow_gate = nn.Linear(2 * d, 2 * d)
        self.reset_parameters()
        # The latest slow update's attention [B, H, N, K] (detached) and the rows whose chunk ended then
        # (reference path), or its queries [B, H, N, d/H] and keys [B, H, K, d/H] (fast path).
        self._slow_probs: tuple[Tensor, Tensor] | None = None
        self._slow_qk: tuple[Tensor, Tensor, Tensor | None] | None = None  # ended None: every row

    @property
    def last_slow_attention(self) -> Tensor | None:
        """Attention of the slow latents over the chunk's steps at the most recent chunk end (kept across
        calls, so T=1 rollout steps keep it), ``[n_ended, n_heads, n_latents, chunk_size]`` for the batch
        rows whose chunk ended then; detached. ``None`` until a chunk has ended. Selected (and, on the fast
        path, computed from the kept queries and keys) on read, so that training neither waits for the
        device nor computes weights nobody reads at every chunk end."""
        if self._slow_qk is not None:
            q, k, ended = self._slow_qk
            if ended is not None:
                q, k = q[ended], k[ended]
            return ((q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))).softmax(dim=-1)
        if self._slow_probs is None:
            return None
        probs, ended = self._slow_probs
        return probs[ended]

    def reset_parameters(self) -> None:
        """Linear layers keep torch's init; positions and initial latents ~ N(0, 0.02); forget bias +1."""
        nn.init.normal_(self.position, std=0.02)
        nn.init.normal_(self.initial_latents, std=0.02)
        with torch.no_grad():
            self.slow_gate.bias.zero_()
            self.slow_gate.bias[self.d_model :] = 1.0

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.output_size}, n_latents={self.n_latents}, "
            f"chunk_size={self.chunk_size}, n_layers={self.n_layers}, n_heads={self.n_heads}, "
            f"d_model={self.d_model}, ffn_mult={self.ffn_mult}, state_size={self.state_size}"
        )

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Refuse a checkpoint of the old packed-state TLB in one line, instead of torch's list of shape
        mismatches (its fast layers were called ``layers``; its state dict carries no version 2)."""
        version = local_metadata.get("version")
        if (version is not None and version < 2) or any(k.startswith(prefix + "layers.") for k in state_dict):
            raise ValueError(
                "this TLB checkpoint was saved by rims-rl < 0.2 (packed state, d_model <= 28); retrain it, "
                "the TLB core changed in issue 25"
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def unpack_state(self, state: State) -> tuple[Tensor, Tensor, Tensor]:
        """(slow latents [B, N, d], z^0 of the chunk's earlier steps [B, K-1, d], next position [B] long).

        The position is rounded and clamped to [0, K-1], so a state that went through float buffers reads
        back exactly."""
        s = torch.cat(state, dim=-1)[0]
        B, d = s.shape[0], self.d_model
        slow = self.initial_latents + s[:, : self._slow_size].view(B, self.n_latents, d)
        memory = s[:, self._slow_size : self._pos_index].view(B, self.chunk_size - 1, d)
        position = s[:, self._pos_index].round().long().clamp(0, self.chunk_size - 1)
        return slow, memory, position

    def pack_state(self, slow: Tensor, memory: Tensor, position: Tensor) -> State:
        """Inverse of :meth:`unpack_state`: ``(h, c)``, each ``[1, B, state_size]``."""
        B = slow.shape[0]
        parts = [
            (slow - self.initial_latents).reshape(B, -1),
            memory.reshape(B, -1),
            position.to(slow.dtype).unsqueeze(-1),
        ]
        s = torch.cat(parts, dim=-1)
        s = F.pad(s, (0, 2 * self.state_size - s.shape[-1]))
        h, c = s.unsqueeze(0).split(self.state_size, dim=-1)
        return h, c

    def _layers(self) -> list[_FastLayer]:
        return cast(list[_FastLayer], list(self.fast_layers))

    def _fast_reference(self, a: Tensor, causal: Tensor, slow: Tensor) -> Tensor:
        """The fast stream over whole chunks, from the first layer's latent-free half (``_first_half``):
        a [B, K, d], causal [K, K], slow [B, N, d] -> Y [B, K, d].

        ``_fast_reference(_first_half(z0), ...)`` is the fast stream of z0 [B, K, d]; one implementation for
        step calls and sequence calls (which is why they agree). The first half runs on all rounds at once."""
        first, *rest = self._layers()
        z = first.read_slow(a, slow)
        for layer in rest:
            z = layer(z, causal, slow)
        return self.norm_out(z)

    def _first_half(self, z0: Tensor, causal: Tensor) -> Tensor:
        """The first fast layer's self-attention + FFN (reads no latents): z0 [..., K, d] -> [..., K, d]."""
        return self._layers()[0].within_chunk(z0.flatten(0, -3), causal).view(z0.shape)

    def _slow_update_reference(self, slow: Tensor, chunk_out: Tensor, ended: Tensor) -> Tensor:
        """Gated cross-attention update of the latents [B, N, d] from the chunk's outputs [B, K, d]."""
        m, probs = self.slow_attn.with_probs(self.norm_latents(slow), chunk_out)
        m = m + self.slow_ffn(m)
        i, f = torch.sigmoid(self.slow_gate(torch.cat([m, slow], dim=-1))).chunk(2, dim=-1)
        self._slow_probs, self._slow_qk = (probs.detach(), ended), None
        return f * slow + i * torch.tanh(m)

    def forward(
        self, x: Tensor, state: State | None = None, episode_starts: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """Run a sequence: x [T, B, input_size] -> (out [T, B, hidden_size], (h, c) [1, B, state_size] each).

        Where ``episode_starts`` [T, B] is 1 the state is zeroed before that step. Chunk-parallel: one fast
        stream call per round of chunk instances (module docstring). A no-grad single step (sb3's rollouts)
        with one fast layer computes only the new step's output (:meth:`_step`)."""
        self._check_input(x, state, episode_starts)
        if not self.fast_path:
            return self._forward_reference(x, state, episode_starts)
        if state is None:
            state = self.initial_state(x.shape[1], x.device)
        if x.shape[0] == 1 and self.n_layers == 1 and not torch.is_grad_enabled():
            return self._step(x, state, episode_starts)
        return self._forward_fast(x, state, episode_starts)

    def _within_chunk(self, z0: Tensor) -> Tensor:
        """The first fast layer's causal self-attention + FFN over whole chunks: z0 [n, K, d] -> [n, K, d].

        Reads no latents, so it runs on every round of a call at once (as ``_first_half``)."""
        layer = self._layers()[0]
        h = _norm(z0, layer.norm_self)
        attn = layer.self_attn
        k, v = _kv_heads(h, attn)
        read = F.scaled_dot_product_attention(_heads(_lin(h, attn.q), attn.n_heads), k, v, is_causal=True)
        a = z0 + _lin(_merge(read), attn.o)
        return a + _ffn(a, layer.ffn_self)

    def _cross_queries(self, a: Tensor) -> Tensor:
        """The first layer's cross-attention queries [n, H, K, d/H] of its within-chunk output a [n, K, d]:
        they read no latents, so they too are computed for every round at once."""
        layer = self._layers()[0]
        return _heads(_lin(_norm(a, layer.norm_cross), layer.cross_attn.q), self.n_heads)

    def _read_slow(
        self, layer: _FastLayer, a: Tensor, q: Tensor, slow: Tensor, kv: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """Cross-attention of a [B, Q, d] (queries q [B, H, Q, d/H]) to the latents [B, N, d] (or their
        keys and values ``kv``, from :meth:`_latent_projections`), then FFN."""
        k, v = _kv_heads(_norm(slow, layer.norm_slow), layer.cross_attn) if kv is None else kv
        b = a + _lin(_merge(F.scaled_dot_product_attention(q, k, v)), layer.cross_attn.o)
        return b + _ffn(b, layer.ffn_cross)

    def _folded_latent_weights(self) -> tuple[Tensor, Tensor] | None:
        """The two projections of the latents a round makes -- the first layer's cross-attention keys and
        values of ``norm_slow(I)`` and the slow update's queries of ``norm_latents(I)`` -- as one matmul of
        the affine-free normalised latents: LayerNorm's scale and shift folded into the weights,
        ``W (g * x^ + b) + c = (W g) x^ + (W b + c)``. Computed once per call (with autograd), it saves a
        LayerNorm and a matmul per round. ``None`` where the two norms' ``eps`` differ."""
        layer = self._layers()[0]
        n_slow, n_lat = layer.norm_slow, self.norm_latents
        if n_slow.eps != n_lat.eps or n_slow.weight is None or n_lat.weight is None:
            return None
        kv, q = layer.cross_attn.kv, self.slow_attn.q
        weight = torch.cat([kv.weight * n_slow.weight, q.weight * n_lat.weight])
        bias = torch.cat(
            [torch.addmv(kv.bias, kv.weight, n_slow.bias), torch.addmv(q.bias, q.weight, n_lat.bias)]
        )
        return weight, bias

    def _latent_projections(
        self, slow: Tensor, folded: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Cross-attention keys, values and slow-update queries of the latents [B, N, d] (heads split)."""
        d, H = self.d_model, self.n_heads
        eps = self.norm_latents.eps
        proj = F.linear(F.layer_norm(slow, (d,), None, None, eps), *folded)
        return _heads(proj[..., :d], H), _heads(proj[..., d : 2 * d], H), _heads(proj[..., 2 * d :], H)

    def _fast(self, a: Tensor, q: Tensor, slow: Tensor, kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """One round of the fast stream from the first layer's within-chunk output a [B, K, d] and its
        cross-attention queries q: -> Y [B, K, d] (the reference's ``_fast_reference``, without modules)."""
        first, *rest = self._layers()
        z = self._read_slow(first, a, q, slow, kv)
        for layer in rest:
            h = _norm(z, layer.norm_self)
            k, v = _kv_heads(h, layer.self_attn)
            read = F.scaled_dot_product_attention(
                _heads(_lin(h, layer.self_attn.q), self.n_heads), k, v, is_causal=True
            )
            z = z + _lin(_merge(read), layer.self_attn.o)
            z = z + _ffn(z, layer.ffn_self)
            z = self._read_slow(
                layer, z, _heads(_lin(_norm(z, layer.norm_cross), layer.cross_attn.q), self.n_heads), slow
            )
        return _norm(z, self.norm_out)

    def _slow_update(
        self, slow: Tensor, chunk_out: Tensor, ended: Tensor | None, q: Tensor | None = None
    ) -> Tensor:
        """Gated cross-attention update of the latents [B, N, d] from the chunk's outputs [B, K, d] (fused
        attention; the weights for :attr:`last_slow_attention` are computed only when read). ``q``: the
        latents' queries if already computed (:meth:`_latent_projections`)."""
        attn = self.slow_attn
        if q is None:
            q = _heads(_lin(_norm(slow, self.norm_latents), attn.q), self.n_heads)
        k, v = _kv_heads(chunk_out, attn)
        m = _lin(_merge(F.scaled_dot_product_attention(q, k, v)), attn.o)
        m = m + _ffn(m, self.slow_ffn)
        i, f = torch.sigmoid(_lin(torch.cat([m, slow], dim=-1), self.slow_gate)).chunk(2, dim=-1)
        self._slow_qk, self._slow_probs = (q.detach(), k.detach(), ended), None
        return f * slow + i * torch.tanh(m)

    def _forward_fast(self, x: Tensor, state: State, episode_starts: Tensor | None) -> tuple[Tensor, State]:
        """The chunk-parallel sequence call (module docstring), with everything that does not read the
        latents (embedding, the first layer's self-attention + FFN, the cross-attention queries) computed
        for all rounds at once before the loop over rounds."""
        T, B, _ = x.shape
        K, d, dev = self.chunk_size, self.d_model, x.device
        slow, memory, pos0 = self.unpack_state(state)

        t_idx = torch.arange(T, device=dev).unsqueeze(1)
        if episode_starts is None:
            pos = (pos0 + t_idx) % K
        else:
            starts = episode_starts != 0
            last_start = torch.where(starts, t_idx, -1).cummax(dim=0).values
            pos = torch.where(last_start >= 0, t_idx - last_start, pos0 + t_idx) % K
        new_instance = pos == 0
        new_instance[0] = True
        rnd = new_instance.long().cumsum(dim=0) - 1  # [T, B]
        b_idx = torch.arange(B, device=dev).expand(T, B)
        n_rounds = int(rnd[-1].max()) + 1
        flags = torch.zeros(2, n_rounds, B, dtype=torch.bool, device=dev)  # [ended, reset]
        full = pos == K - 1
        flags[0, rnd[full], b_idx[full]] = True  # the instance reaches the chunk's last position
        if episode_starts is not None:
            flags[1, rnd[starts], b_idx[starts]] = True  # the instance begins with an episode start
        ended, reset = flags
        (any_ended, any_reset), (all_ended, all_reset) = torch.stack(
            [flags.any(dim=2), flags.all(dim=2)]
        ).tolist()  # one host sync for the whole call

        slots = torch.arange(K, device=dev)
        carried = F.pad(memory, (0, 0, 0, 1)) * (slots < pos[0].unsqueeze(1)).unsqueeze(-1).to(memory.dtype)
        z0 = _lin(x, self.embed) + self.position[pos]  # [T, B, d]
        flat = (rnd * B + b_idx) * K + pos  # [T, B]: each step's slot in the [R, B, K] rounds
        Z = torch.cat([carried.reshape(B * K, d), carried.new_zeros((n_rounds - 1) * B * K, d)])
        Z = Z.index_put((flat.flatten(),), z0.reshape(T * B, d)).view(n_rounds * B, K, d)

        A = self._within_chunk(Z)  # [R*B, K, d], every round at once
        Q = self._cross_queries(A)
        initial = self.initial_latents.expand(B, -1, -1)
        folded = self._folded_latent_weights()
        if folded is not None and self.n_layers == 1 and self.train_ext and tlb_ext.usable(x):
            round_flags = [int(v) for v in any_reset + all_reset + any_ended + all_ended]
            Y, slow, r_last, *slow_qk = self._runner().rounds(A, Q, slow, reset, ended, round_flags, *folded)
            if slow_qk:
                self._slow_qk, self._slow_probs = (slow_qk[0], slow_qk[1], ended[int(r_last)]), None
            return self._sequence_outputs(Y.view(-1, d), Z, flat, rnd, b_idx, pos, slow, T, B)
        ys = []
        for r, (a_round, q_round) in enumerate(zip(A.split(B), Q.split(B), strict=True)):
            if any_reset[r]:
                slow = initial if all_reset[r] else torch.where(reset[r, :, None, None], initial, slow)
            kv, q_slow = None, None
            if folded is not None:
                k_c, v_c, q_slow = self._latent_projections(slow, folded)
                kv = (k_c, v_c)
            y = self._fast(a_round, q_round, slow, kv)
            ys.append(y)
            if any_ended[r]:
                new = self._slow_update(slow, y, ended[r], q_slow)
                slow = new if all_ended[r] else torch.where(ended[r, :, None, None], new, slow)
        return self._sequence_outputs(torch.cat(ys).view(-1, d), Z, flat, rnd, b_idx, pos, slow, T, B)

    def _sequence_outputs(
        self,
        Y: Tensor,
        Z: Tensor,
        flat: Tensor,
        rnd: Tensor,
        b_idx: Tensor,
        pos: Tensor,
        slow: Tensor,
        T: int,
        B: int,
    ) -> tuple[Tensor, State]:
        """The outputs of a sequence call from the rounds' fast-stream outputs Y [R*B*K, d], and its state."""
        K, d = self.chunk_size, self.d_model
        n_rounds = Z.shape[0] // B
        slots = torch.arange(K, device=Z.device)
        out = _lin(Y.index_select(0, flat.flatten()), self.out).view(T, B, -1)

        next_pos = (pos[-1] + 1) % K
        last = Z.view(n_rounds, B, K, d)[rnd[-1], b_idx[-1], : K - 1]  # [B, K-1, d]
        kept = (slots[: K - 1] < next_pos.unsqueeze(1)).unsqueeze(-1).to(last.dtype)
        return out, self.pack_state(slow, last * kept, next_pos)

    def _step(self, x: Tensor, state: State, episode_starts: Tensor | None) -> tuple[Tensor, State]:
        """A no-grad single step with one fast layer (sb3's rollout call): the output of the new step only.

        Causal attention means position ``p``'s output reads only slots ``0..p``: the step computes the
        self-attention's keys and values of the chunk's slots but queries, FFNs, the cross-attention and
        the output map for its one new slot per row (instead of all ``K`` slots, as the reference does).
        Rows whose chunk ends at this step also run the whole chunk (:meth:`_chunk_end`) for the slow
        update, which reads every slot's output."""
        if self.step_ext and tlb_ext.usable(x):
            keep = self.step_cache and not torch.is_inference_mode_enabled() and not state[0].is_inference()
            out, h, c, *slow_qk = self._runner()(x, state[0], state[1], episode_starts, keep)
            if slow_qk:
                self._slow_qk, self._slow_probs = (slow_qk[0], slow_qk[1], None), None
            return out, (h, c)
        B, d, K = x.shape[1], self.d_model, self.chunk_size
        slow, memory, p = self.unpack_state(state)
        if episode_starts is not None:
            fresh = episode_starts[0] != 0
            slow = torch.where(fresh[:, None, None], self.initial_latents, slow)
            p = p.masked_fill(fresh, 0)
        layer = self._layers()[0]
        slots = torch.arange(K, device=x.device)
        z0 = _lin(x[0], self.embed) + self.position.index_select(0, p)  # [B, d]
        Z = torch.where((slots == p[:, None]).unsqueeze(-1), z0.unsqueeze(1), F.pad(memory, (0, 0, 0, 1)))
        valid = (slots <= p[:, None])[:, None, None, :]  # [B, 1, 1, K]: the causal row of slot p

        attn = layer.self_attn
        k, v = _kv_heads(_norm(Z, layer.norm_self), attn)
        q = _lin(_norm(z0, layer.norm_self), attn.q).view(B, self.n_heads, 1, -1)
        a = z0 + _lin(F.scaled_dot_product_attention(q, k, v, attn_mask=valid).view(B, d), attn.o)
        a = (a + _ffn(a, layer.ffn_self)).unsqueeze(1)  # [B, 1, d]
        q = _heads(_lin(_norm(a, layer.norm_cross), layer.cross_attn.q), self.n_heads)
        y = _norm(self._read_slow(layer, a, q, slow), self.norm_out)
        out = _lin(y, self.out).view(1, B, -1)

        ended = p == K - 1
        next_p = torch.where(ended, 0, p + 1)
        if bool(ended.any()):
            idx = ended.nonzero().squeeze(1)
            slow = slow.index_copy(0, idx, self._chunk_end(Z.index_select(0, idx), slow.index_select(0, idx)))
        kept = (slots[: K - 1] < next_p[:, None]).unsqueeze(-1).to(Z.dtype)
        return out, self.pack_state(slow, Z[:, : K - 1] * kept, next_p)

    def _runner(self) -> Any:
        """This core's C++ step (``tlb_ext``'s ``Runner``): the parameters in its order
        (``tlb_ext.WEIGHT_NAMES``), the parameter objects themselves (in-place updates are seen; a replaced
        parameter makes a new runner), and the cache of its latest step."""
        entry = _RUNNERS.get(self)
        if entry is None or entry[0][0] is not self.embed.weight or entry[0][-1] is not self.slow_gate.bias:
            params = dict(self.named_parameters())
            weights: list[Tensor] = [params[name] for name in tlb_ext.WEIGHT_NAMES]
            modules = dict(self.named_modules())
            eps = [cast(nn.LayerNorm, modules[n]).eps for n in tlb_ext.NORM_NAMES]
            ext = cast(Any, tlb_ext.extension())
            runner = ext.Runner(weights, eps, self.n_latents, self.chunk_size, self.n_heads)
            _RUNNERS[self] = (weights, runner)
            return runner
        return entry[1]

    def _chunk_end(self, z0: Tensor, slow: Tensor) -> Tensor:
        """The fast stream over whole chunks z0 [n, K, d] and the slow update it feeds: new latents."""
        a = self._within_chunk(z0)
        y = self._fast(a, self._cross_queries(a), slow)
        return self._slow_update(slow, y, None)

    def _forward_reference(
        self, x: Tensor, state: State | None, episode_starts: Tensor | None
    ) -> tuple[Tensor, State]:
        """The code before issue 43 (``fast_path = False``), which the fast paths are tested against."""
        T, B, _ = x.shape
        K, d, dev = self.chunk_size, self.d_model, x.device
        if state is None:
            state = self.initial_state(B, dev)
        slow, memory, pos0 = self.unpack_state(state)

        # Chunk alignment per batch row: position p[t, b] of each step and the round (chunk instance) it
        # belongs to. After an episode start positions count from 0, before any from the carried position.
        t_idx = torch.arange(T, device=dev).unsqueeze(1)
        if episode_starts is None:
            starts = torch.zeros(T, B, dtype=torch.bool, device=dev)
        else:
            starts = episode_starts != 0
        last_start = torch.where(starts, t_idx, -1).cummax(dim=0).values
        pos = torch.where(last_start >= 0, t_idx - last_start, pos0 + t_idx) % K
        new_instance = pos == 0
        new_instance[0] = True
        rnd = new_instance.long().cumsum(dim=0) - 1  # [T, B]
        b_idx = torch.arange(B, device=dev).expand(T, B)
        n_rounds = int(rnd[-1].max()) + 1
        reset = torch.zeros(n_rounds, B, dtype=torch.bool, device=dev)
        reset[rnd[starts], b_idx[starts]] = True  # the instance begins with an episode start
        ended = torch.zeros(n_rounds, B, dtype=torch.bool, device=dev)
        full = pos == K - 1
        ended[rnd[full], b_idx[full]] = True  # the instance reaches the chunk's last position
        any_reset = reset.any(dim=1).tolist()  # one host sync for the whole call
        any_ended = ended.any(dim=1).tolist()

        # Gather: slots of round r of row b; round 0 starts with the carried z^0 of the earlier steps.
        slots = torch.arange(K, device=dev)
        carried = F.pad(memory, (0, 0, 0, 1)) * (slots < pos[0].unsqueeze(1)).unsqueeze(-1).to(memory.dtype)
        z0 = self.embed(x) + self.position[pos]  # [T, B, d]
        Z = torch.cat([carried.unsqueeze(0), carried.new_zeros(n_rounds - 1, B, K, d)])
        Z = Z.index_put((rnd, b_idx, pos), z0)

        causal = torch.ones(K, K, dtype=torch.bool, device=dev).tril()
        initial = self.initial_latents.expand(B, -1, -1)
        ys = []
        A = self._first_half(Z, causal)  # [R, B, K, d], every round at once
        for r, a_round in enumerate(A.unbind(0)):  # one backward node, not a zero-filled grad per round
            if any_reset[r]:
                slow = torch.where(reset[r, :, None, None], initial, slow)
            y = self._fast_reference(a_round, causal, slow)
            ys.append(y)
            if any_ended[r]:
                slow = torch.where(
                    ended[r, :, None, None], self._slow_update_reference(slow, y, ended[r]), slow
                )
        Y = torch.stack(ys)  # [R, B, K, d]
        out = self.out(Y[rnd, b_idx, pos])  # [T, B, hidden_size]

        # State: the last instance's z^0 of the steps seen so far (none once the chunk ended).
        next_pos = (pos[-1] + 1) % K
        last = Z[rnd[-1], b_idx[-1], : K - 1]  # [B, K-1, d]
        kept = (slots[: K - 1] < next_pos.unsqueeze(1)).unsqueeze(-1).to(last.dtype)
        return out, self.pack_state(slow, last * kept, next_pos)

    def stats(self) -> dict[str, float]:
        """TensorBoard scalars: normalised entropy of the last slow-stream attention over chunk steps
        (1 = the latents read every step equally, 0 = each latent reads one step)."""
        p = self.last_slow_attention
        if p is None or p.numel() == 0:
            return {}
        ent = -(p.clamp_min(1e-12).log() * p).sum(-1).mean()
        return {
            "slow_attention_entropy": float(ent / math.log(self.chunk_size)) if self.chunk_size > 1 else 1.0
        }
