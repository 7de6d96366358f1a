"""A GRU baseline: ``nn.GRU`` with ``nn.LSTM``'s ``(h, c)`` interface (``c`` carried as zeros)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from rims_rl.cores.base import State, TorchRNNCore


class GRUCore(TorchRNNCore, nn.GRU):
    """``nn.GRU(input_size, hidden_size, num_layers, **kwargs)``; ``h`` is the GRU's, ``c`` zeros.

    sb3-contrib's buffers hold a pair ``(h, c)``; the GRU has no cell state, so ``c`` goes through as zeros.
    """

    lstm_kwargs = {k: k for k in ("bias", "batch_first", "dropout", "bidirectional")}

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, **gru_kwargs: Any) -> None:
        nn.GRU.__init__(self, input_size, hidden_size, num_layers=num_layers, **gru_kwargs)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:  # type: ignore[override]
        """x [T, B, input_size], (h, c) [num_layers, B, hidden_size] -> out [T, B, hidden_size], (h, 0)."""
        out, h = nn.GRU.forward(self, x, None if state is None else state[0])
        return out, (h, h.new_zeros(h.shape))
