"""A GRU baseline: ``nn.GRU`` with ``nn.LSTM``'s ``(h, c)`` interface (``c`` carried as zeros).

On CPU the core runs a fused C++ time loop with a hand-written backward (``rims_rl.cores.gru_ext``)
that computes what ``nn.GRU`` computes from the same parameters, and takes ``episode_starts`` so a
training sequence with episode starts inside is one call: torch has no fused CPU kernel for ``nn.GRU``
(its step-by-step cell made the core ~2.7x slower than ``nn.LSTM``). Elsewhere (CUDA, other dtypes,
bidirectional or batch-first GRUs, dropout between layers in training, no compiler, ``fused_loop =
False``) it is ``nn.GRU`` itself, and the policy cuts sequences at their starts
(``rims_rl.policies._run_segments``).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from rims_rl.cores import gru_ext
from rims_rl.cores.base import State, TorchRNNCore


class GRUCore(TorchRNNCore, nn.GRU):
    """``nn.GRU(input_size, hidden_size, num_layers, **kwargs)``; ``h`` is the GRU's, ``c`` zeros.

    sb3-contrib's buffers hold a pair ``(h, c)``; the GRU has no cell state, so ``c`` goes through as zeros.
    ``fused_loop`` (an attribute, not saved in checkpoints): ``False`` runs ``nn.GRU`` even where the C++
    loop could, for comparisons.
    """

    lstm_kwargs = {k: k for k in ("bias", "batch_first", "dropout", "bidirectional")}
    #: A class default as well, so a module pickled before the C++ loop existed unpickles with it on.
    fused_loop: bool = True

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, **gru_kwargs: Any) -> None:
        nn.GRU.__init__(self, input_size, hidden_size, num_layers=num_layers, **gru_kwargs)
        self.fused_loop = True

    @property
    def takes_episode_starts(self) -> bool:  # type: ignore[override]
        """Where the C++ loop runs, the core zeroes its state at episode starts itself (one call per
        sequence); elsewhere the policy does (sb3-contrib's way, ``_run_segments``)."""
        return self._fused(None, None)

    def _fused(self, x: Tensor | None, h0: Tensor | None) -> bool:
        """Whether the C++ loop takes this call (checked shapes; otherwise ``nn.GRU`` runs, or raises)."""
        if not self.fused_loop or self.bidirectional or self.batch_first:
            return False
        if self.num_layers > 1 and self.dropout > 0 and self.training:
            return False  # nn.GRU's dropout masks between layers are its own draws
        w = cast(Tensor, self.weight_ih_l0)  # torch types module attributes as Tensor | Module
        if x is not None:
            if not isinstance(x, Tensor):  # a PackedSequence (``_run_segments``)
                return False
            if x.device != w.device or x.dtype != w.dtype or x.dim() != 3:
                return False
            if x.shape[0] == 0 or x.shape[2] != self.input_size:
                return False
            if h0 is not None and (
                h0.device != w.device
                or h0.dtype != w.dtype
                or tuple(h0.shape) != (self.num_layers, x.shape[1], self.hidden_size)
            ):
                return False
        return gru_ext.usable(w)

    def forward(  # type: ignore[override]
        self, x: Tensor, state: State | None = None, episode_starts: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """x [T, B, input_size], (h, c) [num_layers, B, hidden_size], episode_starts [T, B] (the state
        is zeroed before a step where it is 1) -> out [T, B, hidden_size], (h, 0)."""
        if episode_starts is not None:  # nn.GRU never took them: our checks, ValueError naming the argument
            self._check_input(x, state, episode_starts)
        h0 = None if state is None else state[0]
        if self._fused(x, h0):
            out, h = self._fused_forward(x, h0, episode_starts)
        elif episode_starts is not None:  # nn.GRU a step at a time, as sb3-contrib's loop
            if h0 is None:
                h0 = x.new_zeros(self.num_layers, x.shape[1], self.hidden_size)
            outs, h = [], h0
            for t in range(x.shape[0]):
                keep = (1.0 - episode_starts[t]).to(x.dtype).view(1, -1, 1)
                out_t, h = nn.GRU.forward(self, x[t : t + 1], keep * h)
                outs.append(out_t)
            out = torch.cat(outs)
        else:
            out, h = nn.GRU.forward(self, x, h0)
        return out, (h, h.new_zeros(h.shape))

    def _fused_forward(
        self, x: Tensor, h0: Tensor | None, episode_starts: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """The C++ loop layer by layer (dropout between layers only outside training: ``_fused``)."""
        keep = None if episode_starts is None else 1.0 - episode_starts.to(x.dtype)
        finals = []
        for layer in range(self.num_layers):
            h_l = x.new_zeros(x.shape[1], self.hidden_size) if h0 is None else h0[layer]
            b_ih = getattr(self, f"bias_ih_l{layer}") if self.bias else None
            b_hh = getattr(self, f"bias_hh_l{layer}") if self.bias else None
            w_ih, w_hh = getattr(self, f"weight_ih_l{layer}"), getattr(self, f"weight_hh_l{layer}")
            x, h_t = gru_ext.gru_layer(x, h_l, w_ih, w_hh, b_ih, b_hh, keep)
            finals.append(h_t)
        return x, torch.stack(finals)
