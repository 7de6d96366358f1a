"""What every recurrent core shares: ``nn.LSTM``'s interface as sb3-contrib uses it.

sb3-contrib's buffers and policies read ``input_size``, ``hidden_size`` and ``num_layers`` from the core,
call it time-major with a state ``(h, c)`` of ``[1, B, hidden_size]`` each, and keep that state between
steps. ``RecurrentCore`` holds those attributes, the zero state and the checks of a call's shapes, so each
core (RIMs, TLB, the stable assembly) owns only its math.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

State = tuple[Tensor, Tensor]


def check_positive(name: str, value: object) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is a positive integer (``bool`` is not one)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class RecurrentCore(nn.Module):
    """Base of the cores: one layer, time-major, ``(h, c)`` state, optional ``episode_starts``.

    Args:
        input_size: features per step (per input slot where ``accepts_slots``).
        hidden_size: size of the output and of each of ``h`` and ``c``.
    """

    #: Whether ``x`` may also be ``[T, B, n_slots, input_size]`` (several input slots).
    accepts_slots: bool = False

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        check_positive("input_size", input_size)
        check_positive("hidden_size", hidden_size)
        # nn.LSTM-compatible attributes (sb3-contrib sizes its buffers from these).
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = 1
        self.batch_first = False
        self.bidirectional = False

    def initial_state(self, batch_size: int, device: torch.device | None = None) -> State:
        """Zero state, shaped like ``nn.LSTM``'s (h0, c0)."""
        dtype = next(self.parameters()).dtype
        z = torch.zeros(1, batch_size, self.hidden_size, device=device, dtype=dtype)
        return z, z.clone()

    def _check_input(self, x: Tensor, state: State | None, episode_starts: Tensor | None) -> None:
        """``ValueError`` naming the first argument whose shape does not fit the call."""
        dims = (3, 4) if self.accepts_slots else (3,)
        if x.dim() not in dims or x.shape[-1] != self.input_size:
            slots = f" or [T, B, n_inputs, input_size={self.input_size}]" if self.accepts_slots else ""
            raise ValueError(
                f"x must have shape [T, B, input_size={self.input_size}]{slots}, got {tuple(x.shape)}"
            )
        T, B = x.shape[0], x.shape[1]
        if state is not None:
            if len(state) != 2:
                raise ValueError(f"state must be a pair (h0, c0), got {len(state)} tensors")
            for name, s in zip(("h0", "c0"), state, strict=True):
                if tuple(s.shape) != (1, B, self.hidden_size):
                    raise ValueError(
                        f"{name} must have shape [1, B={B}, hidden_size={self.hidden_size}], "
                        f"got {tuple(s.shape)}"
                    )
        if episode_starts is not None and tuple(episode_starts.shape) != (T, B):
            raise ValueError(
                f"episode_starts must have shape [T={T}, B={B}], got {tuple(episode_starts.shape)}"
            )
