"""Temporal Latent Bottleneck (Didolkar, Gupta, Goyal et al., NeurIPS 2022) as a drop-in for ``nn.LSTM``.

Two streams over a sequence cut into chunks of ``K = chunk_size`` steps:

* **fast stream** -- a small pre-LayerNorm Transformer over the steps of the current chunk. Each of its
  ``n_layers`` layers is causal self-attention + FFN followed by cross-attention to the slow latents +
  FFN (the paper's interleaved "self-attention + FFN" / "cross-attention + FFN" blocks, Fig. 1);
* **slow stream** -- ``N = n_latents`` latent vectors ``I`` (the "temporal latent bottleneck"). They are
  read by every fast step but change only at the last step of a chunk, when they query the chunk's fast
  outputs ``Y`` (cross-attention) and take a gated recurrent update.

Equations (``d = d_model``, ``p`` = position of step ``t`` in its chunk, ``0 <= p < K``)::

    z^0_t       = W_e x_t + b_e + P[p]                                  (embedding + chunk position)
    for each fast layer l:
      a         = z + SelfAttn(LN(z) -> LN(z^l_{t-p..t}))              (causal, within the chunk only)
      a         = a + FFN(LN(a))
      b         = a + CrossAttn(LN(a) -> LN(I))                         (top-down read of the slow stream)
      z^{l+1}_t = b + FFN(LN(b))
    y_t         = LN(z^L_t);   out_t = W_o y_t + b_o                    ([B, hidden_size])
    if p == K - 1 (chunk end):
      M         = CrossAttn(LN(I) -> Y_{chunk});  M = M + FFN(LN(M))   (latents read the chunk)
      i, f      = sigmoid(W_g [M, I] + b_g)                             (forget bias starts at +1)
      I         = f * I + i * tanh(M)                                   (gated recurrent update)

**State packing.** sb3-contrib stores ``(h, c)`` of shape ``[1, B, hidden_size]`` each, so the recurrent
state lives in the ``2 * hidden_size`` numbers of ``s = cat(h, c, dim=-1)``::

    s[..., 0 : N*d]                     I - I_0: slow latents as an offset from the learned initial I_0
    s[..., N*d : N*d + (L+1)*(K-1)*d]   chunk memory [L+1, K-1, d]: the inputs z^l of every fast layer
                                        l < L and the outputs y of the chunk's earlier steps (slots 0..p-1)
    s[..., N*d + (L+1)*(K-1)*d]         p: position in the chunk of the *next* step (0 .. K-1)
    the rest                            zeros

so an all-zero state is "start of a chunk, learned initial latents, empty memory" and zeroing the state
where ``episode_starts`` is 1 starts a fresh episode. ``out`` has ``hidden_size`` features (a linear map of
``y_t``), which is what sb3-contrib's heads expect; ``h`` is *not* ``out[-1]`` (nothing in sb3-contrib
assumes it is). The cost of fitting into an LSTM-sized state is a small ``d_model``: by default the
largest multiple of ``n_heads`` with ``(N + (L+1)(K-1)) d + 1 <= 2 * hidden_size``.

Step-by-step calls (T=1, state carried) and one sequence call run the same per-step code, so they agree;
only the loop over time remains in Python (heads, latents and chunk slots are batched tensor ops).

Paper defaults: the paper's chunk size and number of latents vary per task; ``chunk_size=8`` and
``n_latents=4`` here are sized for the small hidden sizes of RL policies. Dropout is not used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rims_rl.recurrent import RecurrentCore, State, check_positive


class _Attention(nn.Module):
    """Multi-head attention with separate query / key-value inputs and an optional key mask."""

    def __init__(self, d: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.o = nn.Linear(d, d)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """query [B, Q, d], keys [B, S, d], mask [B, S] (True: may attend) -> ([B, Q, d], [B, H, Q, S])."""
        B, Q, d = query.shape
        H = self.n_heads
        q = self.q(query).view(B, Q, H, d // H)
        k, v = self.kv(keys).view(B, keys.shape[1], 2, H, d // H).unbind(2)
        scores = torch.einsum("bqhe,bshe->bhqs", q, k) * (1.0 / math.sqrt(d // H))
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        probs = scores.softmax(dim=-1)
        read = torch.einsum("bhqs,bshe->bqhe", probs, v).reshape(B, Q, d)
        return self.o(read), probs


class _FFN(nn.Sequential):
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

    def forward(self, z: Tensor, chunk: Tensor, mask: Tensor, slow: Tensor) -> Tensor:
        """z [B, d] (this step), chunk [B, K, d] (layer inputs, slot p = z), mask [B, K], slow [B, N, d]."""
        a = z + self.self_attn(self.norm_self(z).unsqueeze(1), self.norm_self(chunk), mask)[0].squeeze(1)
        a = a + self.ffn_self(a)
        b = a + self.cross_attn(self.norm_cross(a).unsqueeze(1), self.norm_slow(slow))[0].squeeze(1)
        return b + self.ffn_cross(b)


class TemporalLatentBottleneck(RecurrentCore):
    """A TLB recurrent core with the interface of a one-layer, time-major ``nn.LSTM`` (see module doc).

    Args:
        input_size: features per step.
        hidden_size: size of ``out`` and of each of ``h``, ``c``; the packed state must fit in
            ``2 * hidden_size``.
        n_latents: slow-stream latent vectors ``N``.
        chunk_size: steps per chunk ``K`` (the slow stream updates once per chunk).
        n_layers: fast-stream layers ``L`` (each: self-attention + FFN, cross-attention + FFN).
        n_heads: attention heads (all attentions).
        d_model: width of both streams; ``None`` picks the largest multiple of ``n_heads`` that fits.
        ffn_mult: FFN hidden width as a multiple of ``d_model``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 256,
        n_latents: int = 4,
        chunk_size: int = 8,
        n_layers: int = 1,
        n_heads: int = 2,
        d_model: int | None = None,
        ffn_mult: int = 2,
    ) -> None:
        super().__init__(input_size, hidden_size)  # checks both, sets nn.LSTM's attributes
        for name, value in (
            ("n_latents", n_latents),
            ("chunk_size", chunk_size),
            ("n_layers", n_layers),
            ("n_heads", n_heads),
            ("ffn_mult", ffn_mult),
        ):
            check_positive(name, value)
        slots = n_latents + (n_layers + 1) * (chunk_size - 1)  # d-sized vectors in the state
        if d_model is None:
            d_model = (2 * hidden_size - 1) // slots // n_heads * n_heads
            if d_model < 1:
                raise ValueError(
                    f"hidden_size={hidden_size} is too small to pack n_latents={n_latents} + "
                    f"(n_layers+1)*(chunk_size-1)={slots - n_latents} vectors of at least n_heads={n_heads} "
                    f"features plus a position into 2*hidden_size; raise hidden_size to at least "
                    f"{(slots * n_heads + 2) // 2} or shrink chunk_size / n_latents / n_heads"
                )
        check_positive("d_model", d_model)
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if slots * d_model + 1 > 2 * hidden_size:
            raise ValueError(
                f"the packed state needs (n_latents + (n_layers+1)*(chunk_size-1)) * d_model + 1 = "
                f"{slots * d_model + 1} numbers but (h, c) hold 2*hidden_size = {2 * hidden_size}; "
                f"lower d_model (max {(2 * hidden_size - 1) // slots}) or raise hidden_size"
            )

        self.n_latents = n_latents
        self.chunk_size = chunk_size
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.d_model = d_model
        self.ffn_mult = ffn_mult
        self._slow_size = n_latents * d_model
        self._mem_size = (n_layers + 1) * (chunk_size - 1) * d_model
        self._pos_index = self._slow_size + self._mem_size

        d = d_model
        self.embed = nn.Linear(input_size, d)
        self.position = nn.Parameter(torch.zeros(chunk_size, d))
        self.layers = nn.ModuleList(_FastLayer(d, n_heads, ffn_mult) for _ in range(n_layers))
        self.norm_out = nn.LayerNorm(d)
        self.out = nn.Linear(d, hidden_size)
        self.initial_latents = nn.Parameter(torch.zeros(n_latents, d))
        self.norm_latents = nn.LayerNorm(d)
        self.slow_attn = _Attention(d, n_heads)
        self.slow_ffn = _FFN(d, ffn_mult)
        self.slow_gate = nn.Linear(2 * d, 2 * d)
        self.reset_parameters()
        #: Attention of the slow latents over the chunk's steps at the most recent chunk end (kept across
        #: calls, so T=1 rollout steps keep it), ``[n_ended, n_heads, n_latents, chunk_size]`` for the
        #: batch rows whose chunk ended then; detached. ``None`` until a chunk has ended.
        self.last_slow_attention: Tensor | None = None

    def reset_parameters(self) -> None:
        """Linear layers keep torch's init; positions and initial latents ~ N(0, 0.02); forget bias +1."""
        nn.init.normal_(self.position, std=0.02)
        nn.init.normal_(self.initial_latents, std=0.02)
        with torch.no_grad():
            self.slow_gate.bias.zero_()
            self.slow_gate.bias[self.d_model :] = 1.0

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, n_latents={self.n_latents}, "
            f"chunk_size={self.chunk_size}, n_layers={self.n_layers}, n_heads={self.n_heads}, "
            f"d_model={self.d_model}"
        )

    def unpack_state(self, state: State) -> tuple[Tensor, Tensor, Tensor]:
        """(slow latents [B, N, d], chunk memory [B, L+1, K-1, d], next position [B] long) of a state.

        The position is rounded and clamped to [0, K-1], so a state that went through float buffers reads back
        exactly."""
        s = torch.cat(state, dim=-1)[0]
        B, d = s.shape[0], self.d_model
        slow = self.initial_latents + s[:, : self._slow_size].view(B, self.n_latents, d)
        memory = s[:, self._slow_size : self._pos_index].view(B, self.n_layers + 1, self.chunk_size - 1, d)
        position = s[:, self._pos_index].round().long().clamp(0, self.chunk_size - 1)
        return slow, memory, position

    def _pack_state(self, slow: Tensor, memory: Tensor, position: Tensor) -> State:
        """Inverse of :meth:`unpack_state`; ``memory`` is [B, L+1, K, d] (the last slot is dropped)."""
        B = slow.shape[0]
        parts = [
            (slow - self.initial_latents).reshape(B, -1),
            memory[:, :, : self.chunk_size - 1].reshape(B, -1),
            position.to(slow.dtype).unsqueeze(-1),
        ]
        s = torch.cat(parts, dim=-1)
        s = F.pad(s, (0, 2 * self.hidden_size - s.shape[-1]))
        h, c = s.unsqueeze(0).split(self.hidden_size, dim=-1)
        return h, c

    def forward(
        self, x: Tensor, state: State | None = None, episode_starts: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """Run a sequence: x [T, B, input_size] -> (out [T, B, hidden_size], (h, c) [1, B, hidden_size] each).

        Where ``episode_starts`` [T, B] is 1 the packed state is zeroed before that step.
        """
        self._check_input(x, state, episode_starts)
        T, B, _ = x.shape
        K = self.chunk_size
        if state is None:
            state = self.initial_state(B, x.device)
        slow, memory, pos = self.unpack_state(state)
        # Working memory has K slots (slot K-1 lives only during a chunk's last step).
        memory = F.pad(memory, (0, 0, 0, 1))  # [B, L+1, K, d]
        emb = self.embed(x).unbind(0)
        keep = None if episode_starts is None else (episode_starts == 0).unbind(0)
        slots = torch.arange(K, device=x.device)
        outputs = []
        for t in range(T):
            if keep is not None:
                k = keep[t]
                slow = torch.where(k[:, None, None], slow, self.initial_latents)
                memory = memory * k[:, None, None, None].to(memory.dtype)
                pos = torch.where(k, pos, 0)
            here = (slots == pos[:, None]).unsqueeze(-1)  # [B, K, 1]: this step's slot
            visible = slots <= pos[:, None]  # [B, K]: causal mask within the chunk
            z = emb[t] + self.position[pos]
            written = []
            for layer_index, layer in enumerate(self.layers):
                chunk = torch.where(here, z[:, None], memory[:, layer_index])
                written.append(chunk)
                z = layer(z, chunk, visible, slow)
            y = self.norm_out(z)
            written.append(torch.where(here, y[:, None], memory[:, -1]))
            memory = torch.stack(written, dim=1)
            outputs.append(self.out(y))
            ended = pos == K - 1
            if bool(ended.any()):
                slow = torch.where(ended[:, None, None], self._slow_update(slow, memory[:, -1], ended), slow)
                memory = memory * (~ended)[:, None, None, None].to(memory.dtype)
            pos = torch.where(ended, 0, pos + 1)
        return torch.stack(outputs), self._pack_state(slow, memory, pos)

    def _slow_update(self, slow: Tensor, chunk_out: Tensor, ended: Tensor) -> Tensor:
        """Gated cross-attention update of the latents [B, N, d] from the chunk's outputs [B, K, d]."""
        m, probs = self.slow_attn(self.norm_latents(slow), chunk_out)
        m = m + self.slow_ffn(m)
        i, f = torch.sigmoid(self.slow_gate(torch.cat([m, slow], dim=-1))).chunk(2, dim=-1)
        self.last_slow_attention = probs[ended].detach()
        return f * slow + i * torch.tanh(m)

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
