"""``n_lstm_layers`` for cores that have one layer: a stack of copies, as ``nn.LSTM(num_layers=L)`` stacks.

Layer ``l`` reads layer ``l-1``'s output (dropout between layers in training, as ``nn.LSTM``'s ``dropout``);
the state of layer ``l`` is row ``l`` of ``(h, c)`` ``[L, B, state_size]``, the layout sb3-contrib's buffers
have for an ``L``-layer LSTM. Only the first layer reads input slots.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor, nn

from rims_rl.cores.base import RecurrentCore, State


class StackedCore(RecurrentCore):
    """``num_layers`` cores from ``build(input_size)``, each of output width ``hidden_size``."""

    def __init__(
        self,
        build: Callable[[int], RecurrentCore],
        input_size: int,
        hidden_size: int,
        num_layers: int,
        dropout: float = 0.0,
    ) -> None:
        layers = [build(input_size)] + [build(hidden_size) for _ in range(num_layers - 1)]
        super().__init__(input_size, hidden_size, state_size=max(layer.state_size for layer in layers))
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout should be a number in range [0, 1], got {dropout!r}")
        self.layers = nn.ModuleList(layers)
        self.num_layers = num_layers
        self.dropout = nn.Dropout(dropout)
        first = layers[0]
        self.takes_episode_starts = first.takes_episode_starts
        self.accepts_slots = first.accepts_slots
        self.supports_keyed_dropout = first.supports_keyed_dropout

    def forward(
        self, x: Tensor, state: State | None = None, episode_starts: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """Each layer in turn; ``episode_starts`` goes to every layer (each zeroes its own state)."""
        self._check_input(x, state, episode_starts)
        if state is None:
            state = self.initial_state(x.shape[1], x.device)
        hs, cs = [], []
        for i, layer in enumerate(self.cores()):
            size = layer.state_size
            layer_state = (state[0][i : i + 1, ..., :size], state[1][i : i + 1, ..., :size])
            if i > 0:
                x = self.dropout(x)
            if self.takes_episode_starts:
                x, (h, c) = layer(x, layer_state, episode_starts=episode_starts)
            else:
                x, (h, c) = layer(x, layer_state)
            pad = self.state_size - size
            hs.append(nn.functional.pad(h, (0, pad)))
            cs.append(nn.functional.pad(c, (0, pad)))
        return x, (torch.cat(hs), torch.cat(cs))

    def cores(self) -> list[RecurrentCore]:
        """The stacked cores, first layer first."""
        return [cast(RecurrentCore, layer) for layer in self.layers]

    def stats(self) -> dict[str, float]:
        """Each layer's statistics, keyed ``layer<l>/<key>``."""
        return {f"layer{i}/{k}": v for i, layer in enumerate(self.cores()) for k, v in layer.stats().items()}

    def on_rollout_step(self) -> None:
        for layer in self.cores():
            layer.on_rollout_step()

    def install_keyed_dropout(self, salt: int) -> None:
        """Keys per layer: ``salt + 2 l`` (a policy's actor and critic use salts 0 and 1)."""
        for i, layer in enumerate(self.cores()):
            layer.install_keyed_dropout(salt + 2 * i)
