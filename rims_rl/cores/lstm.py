"""The LSTM baseline: ``nn.LSTM`` itself, declared as a core.

``LSTMCore`` *is* an ``nn.LSTM`` (same parameters, same names, same initialisation, same errors), so a
policy with ``core="lstm"`` computes what sb3-contrib's ``MlpLstmPolicy`` computes and loads its weights.
It takes ``num_layers`` and every ``nn.LSTM`` keyword itself, as sb3-contrib passes ``lstm_kwargs``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from rims_rl.cores.base import TorchRNNCore


class LSTMCore(TorchRNNCore, nn.LSTM):
    """``nn.LSTM(input_size, hidden_size, num_layers, **kwargs)``; state ``(h, c)`` of ``hidden_size``."""

    lstm_kwargs = {k: k for k in ("bias", "batch_first", "dropout", "bidirectional", "proj_size")}

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, **lstm_kwargs: Any) -> None:
        # nn.LSTM's own constructor and checks, not RecurrentCore's: the error contract is nn.LSTM's.
        nn.LSTM.__init__(self, input_size, hidden_size, num_layers=num_layers, **lstm_kwargs)

    forward = nn.LSTM.forward  # x, (h, c) -> out, (h, c)
