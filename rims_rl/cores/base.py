"""The contract every recurrent core keeps: ``nn.LSTM``'s interface as sb3-contrib uses it, plus what the
project needs to know about a core, declared by the core itself.

**Construction.** ``Core(input_size, hidden_size, **kwargs)``. ``hidden_size`` is the width of the output,
which the policy's heads read; the constructor checks its own arguments once and raises ``ValueError``
naming the one to change.

**Call.** ``out, (h, c) = core(x, state=None, episode_starts=None)``, time-major::

    x:               [T, B, input_size]   ([T, B, n_slots, input_size] where ``accepts_slots``)
    state = (h, c):  each [num_layers, B, state_size]; ``None`` means zeros
    episode_starts:  [T, B]; where 1 the state is zeroed before that step (only if ``takes_episode_starts``)
    out:             [T, B, hidden_size]

The state is what sb3-contrib stores between steps. ``RecurrentPPO`` sizes its rollout buffers and zero
states from the core's ``num_layers`` and ``hidden_size`` *attributes* (nn.LSTM's name for the width of
``h`` and ``c``), ``predict`` from the policy's ``lstm_hidden_state_shape``, and the policy's heads read
``lstm_output_dim``. So a core has two widths: ``output_size`` (the constructor's ``hidden_size``, what
``out`` carries) and ``state_size`` (what ``h`` and ``c`` carry), and its ``hidden_size`` attribute is
``state_size``, as sb3-contrib reads it. The state is the core's own business: it need not be as wide as
the output (the TLB's is wider). An all-zero state must mean "start of an episode".

**Declarations** (class attributes; subclasses override what differs):

- ``takes_episode_starts``: the core zeroes its state where ``episode_starts`` is 1 anywhere in a sequence
  (one call per training sequence). If False, the policy zeroes the state before the first step; when an
  episode starts later in a sequence it runs the episode segments in one or two calls where the core is a
  torch LSTM/GRU (``rims_rl.policies._run_segments``), else falls back to a step loop. It may be a
  property read per call (the GRU core: True where its C++ loop runs, ``rims_rl.cores.gru_ext``).
- ``accepts_slots``: ``x`` may carry several input slots (RIMs' input attention reads them).
- ``supports_keyed_dropout``: the core implements :meth:`install_keyed_dropout`.
- ``native_layers``: the constructor takes ``num_layers`` and stacks layers itself (``nn.LSTM``, ``nn.GRU``);
  otherwise ``n_lstm_layers > 1`` stacks copies of the core (``rims_rl.cores.stack``).
- ``lstm_kwargs``: ``nn.LSTM`` keyword -> this core's keyword of the same meaning, so sb3-contrib's
  ``lstm_kwargs`` map onto the core; keywords the core has no equivalent for are refused by name.

**Hooks**: :meth:`default_hidden_size` and :meth:`resolve_kwargs` (defaults that depend on the width),
:meth:`stats` and :meth:`on_rollout_step` (TensorBoard), :meth:`initial_state`.

A core joins the project by an entry point in the group ``rims_rl.cores`` (``rims_rl.cores.registry``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from rims_rl.checks import check_positive

State = tuple[Tensor, Tensor]


class RecurrentCore(nn.Module):
    """Base of the cores: the contract in the module docstring, the zero state and the shape checks.

    Args:
        input_size: features per step (per input slot where ``accepts_slots``).
        hidden_size: width of the output (kept as ``output_size``; the ``hidden_size`` attribute is the
            state width, as on ``nn.LSTM``, for sb3-contrib).
        state_size: width of each of ``h`` and ``c``; ``None``: ``hidden_size``.
    """

    # Declarations (see the module docstring); plain attributes so that a stack of cores can take them
    # from the core it stacks.
    takes_episode_starts: bool = True
    accepts_slots: bool = False
    supports_keyed_dropout: bool = False
    native_layers: bool = False
    #: nn.LSTM keyword -> this core's keyword; every core maps ``dropout`` through stacking
    #: (``rims_rl.cores.stack``) and accepts nn.LSTM's defaults of the keywords it has no use for.
    lstm_kwargs: ClassVar[Mapping[str, str]] = {}
    #: Keywords ``resolve_kwargs`` takes besides the constructor's (e.g. RIMs' ``unit_size``).
    width_kwargs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, input_size: int, hidden_size: int, state_size: int | None = None) -> None:
        super().__init__()
        check_positive("input_size", input_size)
        check_positive("hidden_size", hidden_size)
        if state_size is not None:
            check_positive("state_size", state_size)
        self.input_size = input_size
        self.output_size = hidden_size
        self.state_size = hidden_size if state_size is None else state_size
        # nn.LSTM's attributes as sb3-contrib reads them: hidden_size sizes its state buffers.
        self.hidden_size = self.state_size
        self.num_layers = 1
        self.batch_first = False
        self.bidirectional = False

    @classmethod
    def default_hidden_size(cls, kwargs: Mapping[str, Any]) -> int:
        """Output width when the policy is given none (sb3-contrib's LSTM default, 256)."""
        return 256

    @classmethod
    def resolve_kwargs(cls, hidden_size: int, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The constructor's keyword arguments for output width ``hidden_size``.

        A core whose structure needs a divisor of the width picks a valid default here, and names the
        setting to change where the user's own setting does not fit. The values themselves are checked by
        the constructor.
        """
        return dict(kwargs)

    def initial_state(self, batch_size: int, device: torch.device | None = None) -> State:
        """Zero state, shaped like ``nn.LSTM``'s (h0, c0) with ``state_size`` features."""
        dtype = next(self.parameters()).dtype
        z = torch.zeros(self.num_layers, batch_size, self.state_size, device=device, dtype=dtype)
        return z, z.clone()

    def stats(self) -> dict[str, float]:
        """TensorBoard scalars at the end of a rollout (logged as ``<core name>/<key>``); none by default."""
        return {}

    def on_rollout_step(self) -> None:
        """Called after each rollout step (the core just ran on it), for statistics that count steps."""

    def install_keyed_dropout(self, salt: int) -> None:
        """Draw attention-dropout masks from per-step keys (``rims_rl.dropout``); ``salt`` tells the cores of
        one policy apart. Only cores that declare ``supports_keyed_dropout``."""
        raise NotImplementedError(f"{type(self).__name__} has no keyed dropout")

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
            want = (self.num_layers, B, self.state_size)
            for name, s in zip(("h0", "c0"), state, strict=True):
                if tuple(s.shape) != want:
                    raise ValueError(
                        f"{name} must have shape [num_layers={want[0]}, B={B}, state_size={want[2]}], "
                        f"got {tuple(s.shape)}"
                    )
        if episode_starts is not None and tuple(episode_starts.shape) != (T, B):
            raise ValueError(
                f"episode_starts must have shape [T={T}, B={B}], got {tuple(episode_starts.shape)}"
            )


class TorchRNNCore(RecurrentCore):
    """Base of the cores that *are* a torch RNN (``class LSTMCore(TorchRNNCore, nn.LSTM)``): torch's own
    constructor, checks, parameter names and ``num_layers``; one width for the output and the state."""

    takes_episode_starts = False  # the policy zeroes the state at episode starts (sb3-contrib's way)
    native_layers = True

    @property
    def state_size(self) -> int:  # type: ignore[override]
        """Width of ``h`` and ``c``: torch's ``hidden_size``."""
        return self.hidden_size

    @property
    def output_size(self) -> int:  # type: ignore[override]
        """Width of the output: torch's ``hidden_size``."""
        return self.hidden_size
