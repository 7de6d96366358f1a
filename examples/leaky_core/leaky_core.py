"""A leaky-integrator RNN as a rims-rl core: h' = (1 - a) h + a tanh(W x + U h + b), out = h'."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rims_rl.cores import RecurrentCore, State


class LeakyCore(RecurrentCore):
    """One layer; ``leak`` is the step size ``a`` in (0, 1]. State: ``h`` = the rates, ``c`` unused."""

    def __init__(self, input_size: int, hidden_size: int, leak: float = 0.5) -> None:
        super().__init__(input_size, hidden_size)  # checks the sizes; state_size = hidden_size
        if not 0.0 < leak <= 1.0:
            raise ValueError(f"leak must be in (0, 1], got {leak!r}")
        self.leak = leak
        self.inp = nn.Linear(input_size, hidden_size)
        self.rec = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(
        self, x: Tensor, state: State | None = None, episode_starts: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """x [T, B, input_size] -> out [T, B, hidden_size], (h, c) [1, B, hidden_size] each."""
        self._check_input(x, state, episode_starts)
        h = x.new_zeros(x.shape[1], self.hidden_size) if state is None else state[0][0]
        drive, outs = self.inp(x), []
        for t in range(x.shape[0]):
            if episode_starts is not None:  # zero the state where an episode starts
                h = h * (1.0 - episode_starts[t].to(x.dtype)).unsqueeze(-1)
            h = (1.0 - self.leak) * h + self.leak * torch.tanh(drive[t] + self.rec(h))
            outs.append(h)
        h_t = h.unsqueeze(0)
        return torch.stack(outs), (h_t, torch.zeros_like(h_t))

    def stats(self) -> dict[str, float]:
        """TensorBoard: the largest singular value of U (how strongly the state feeds back)."""
        return {"recurrent_norm": float(torch.linalg.matrix_norm(self.rec.weight.detach(), ord=2))}
