"""The copying task (Hochreiter & Schmidhuber; RIMs paper Table 1): remember a sequence across blanks.

A sequence of ``n_copy`` symbols from an alphabet of ``n_symbols`` is shown, then ``n_blank`` blank
steps, then a delimiter; the model must output the symbols over the last ``n_copy`` steps. Training
with 50 blanks and testing with 200 measures whether memory generalises to longer delays.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from rims_rl.cores.base import RecurrentCore
from rims_rl.cores.registry import get_core


def copying_batch(
    batch_size: int,
    n_blank: int,
    n_copy: int = 10,
    n_symbols: int = 8,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """Inputs [T, B] and targets [T, B] as token ids, T = 2 * n_copy + n_blank.

    Token ids: 0..n_symbols-1 are symbols, n_symbols is blank, n_symbols + 1 the delimiter.
    Targets are blank everywhere except the last ``n_copy`` steps, which hold the shown symbols.
    """
    blank, delim = n_symbols, n_symbols + 1
    T = 2 * n_copy + n_blank
    symbols = torch.randint(0, n_symbols, (n_copy, batch_size), generator=generator)
    inputs = torch.full((T, batch_size), blank, dtype=torch.long)
    inputs[:n_copy] = symbols
    inputs[n_copy + n_blank - 1] = delim
    targets = torch.full((T, batch_size), blank, dtype=torch.long)
    targets[-n_copy:] = symbols
    return inputs.to(device), targets.to(device)


class CopyingModel(nn.Module):
    """One-hot tokens -> recurrent core (any registered one) -> logits over symbols + blank."""

    def __init__(self, core: nn.Module, n_symbols: int = 8) -> None:
        super().__init__()
        self.n_tokens = n_symbols + 2
        if core.input_size != self.n_tokens:
            raise ValueError(
                f"core.input_size must be n_symbols + 2 = {self.n_tokens}, got {core.input_size}"
            )
        self.core = core
        # torch types an unknown Module attribute as Tensor | Module (its __getattr__); cores set an int.
        self.head = nn.Linear(cast(int, core.output_size), n_symbols + 1)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens [T, B] (long) -> logits [T, B, n_symbols + 1]."""
        x = nn.functional.one_hot(tokens, self.n_tokens).float()
        out, _ = self.core(x)
        return self.head(out)


def make_core(kind: str, input_size: int, hidden_size: int, **core_kwargs: Any) -> RecurrentCore:
    """The registered core ``kind`` of output width ``hidden_size``; ``core_kwargs`` as a policy's
    ``core_kwargs`` (width defaults resolved by the core, e.g. RIMs' ``unit_size``)."""
    cls = get_core(kind)
    return cls(input_size, hidden_size, **cls.resolve_kwargs(hidden_size, core_kwargs))
