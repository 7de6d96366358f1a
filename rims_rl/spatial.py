"""Spatial input for RIMs: the CNN's feature-map positions become the core's input slots.

RIMs units compete by attending to their input; with ``NatureCNN``'s single flat vector there is one
slot, so attention can only choose "read" or "ignore". ``SpatialCNN`` keeps the positions of the last
feature map (e.g. 7x7 = 49 for Atari), each projected to ``slot_size`` with its (x, y) coordinates,
and the core (``slot_core``: RIMs, or any core that accepts slots) reads them as
``[T, B, n_slots, slot_size]``: each unit can attend to its own place in the image, as in the paper's
Atari and BabyAI setups.

Both ends stay inside sb3-contrib's contract: the extractor returns a flat ``[B, n_slots * slot_size]``
vector (sb3's ``features_dim``), and the slot core reports that flat size as ``input_size`` (what
``_process_sequence`` reshapes by) and splits it into slots itself.

``SpatialCnnRimsPolicy(..., features_extractor_kwargs={"slot_size": 64})`` is a ``CnnRimsPolicy`` with
both; with ``core="lstm"``/``"gru"`` the flat vector goes to the LSTM/GRU (a same-extractor baseline).
"""

from __future__ import annotations

import math
from typing import Any

import torch as th
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from rims_rl.cores.base import RecurrentCore, State
from rims_rl.extractors import one_hot_planes
from rims_rl.policies import POLICIES, RimsActorCriticPolicy

#: NatureCNN's convolutions, as (out_channels, kernel, stride).
NATURE_CONVS: tuple[tuple[int, int, int], ...] = ((32, 8, 4), (64, 4, 2), (64, 3, 1))


MAX_CONV_PARAMETERS = 10_000_000  # NatureCNN's convolutions hold ~78k
MAX_FEATURES = 1 << 20  # positions x slot_size (NatureCNN on 84x84: 49 x 64)


MAX_CODES = 256  # one-hot planes per input channel (MiniGrid's object channel has 11)


def _check_channel_max(channel_max: object, channels: int, one_hot: bool) -> tuple[float, ...]:
    """``channel_max`` as numbers, or ``ValueError`` naming it: it may come from an untrusted checkpoint,
    and a bad value would otherwise surface as an int() traceback, an infinite scale or a silently
    truncated number of one-hot planes."""
    if not isinstance(channel_max, (list, tuple)) or not all(
        isinstance(m, (int, float)) and not isinstance(m, bool) for m in channel_max
    ):
        raise ValueError(f"channel_max must be a list of numbers, one per input channel, got {channel_max!r}")
    if len(channel_max) != channels:
        raise ValueError(f"channel_max has {len(channel_max)} values for {channels} input channels")
    if not all(math.isfinite(m) and m >= 1 for m in channel_max):
        raise ValueError(f"channel_max values must be finite and at least 1, got {list(channel_max)}")
    if one_hot and not all(float(m).is_integer() for m in channel_max):
        raise ValueError(
            f"one_hot needs whole-number channel_max values (the largest code), got {list(channel_max)}"
        )
    return tuple(float(m) for m in channel_max)


def _code_counts(channel_max: tuple[float, ...] | list[float]) -> tuple[int, ...]:
    """One-hot planes per channel, bounded before any tensor is sized from them (untrusted input)."""
    counts = tuple(int(m) + 1 for m in channel_max)
    if any(not 2 <= n <= MAX_CODES for n in counts):
        raise ValueError(f"one_hot needs each channel_max in [1, {MAX_CODES - 1}], got {list(channel_max)}")
    return counts


class SpatialCNN(BaseFeaturesExtractor):
    """Convolutions whose output positions are kept apart: ``[B, n_slots * slot_size]``, slot-major.

    :param convs: (out_channels, kernel, stride) per layer, ReLU after each (default NatureCNN's).
    :param slot_size: size of each position's feature after the shared per-position projection.
    :param coordinates: append each position's (x, y) in [-1, 1] before the projection, so slots
        say where they are (attention over slots is otherwise blind to position).
    :param channel_max: divide each input channel by this maximum first, for inputs that are codes
        rather than 0-255 pixels (MiniGrid: ``MINIGRID_CHANNEL_MAX`` with ``normalize_images=False``).
    :param one_hot: read those codes as one-hot planes instead (``channel_max[c] + 1`` planes per
        channel), as ``MiniGridCNN(one_hot=True)`` does; needs ``channel_max``.
    """

    coords: th.Tensor  # registered buffers
    scale: th.Tensor

    def __init__(
        self,
        observation_space: spaces.Box,
        slot_size: int = 64,
        convs: tuple[tuple[int, int, int], ...] | list[list[int]] = NATURE_CONVS,
        coordinates: bool = True,
        channel_max: tuple[float, ...] | list[float] | None = None,
        one_hot: bool = False,
    ) -> None:
        shape = getattr(observation_space, "shape", None)
        if not isinstance(observation_space, spaces.Box) or shape is None or len(shape) != 3:
            raise ValueError(
                f"SpatialCNN reads one image (C, H, W), got {observation_space}; for Dict observations "
                "(e.g. MiniGrid with the mission) use a CNN extractor that takes them (MiniGridDictExtractor)"
            )
        if not isinstance(one_hot, bool):
            raise ValueError(f"one_hot must be true or false, got {one_hot!r}")
        if one_hot and channel_max is None:
            raise ValueError("one_hot needs channel_max: the largest code of each input channel")
        layers: list[nn.Module] = []
        channels = observation_space.shape[0]
        # Sizes checked before anything is allocated (they may come from an untrusted checkpoint): the
        # convolutions' weights, then the flat feature width that every layer after them is sized from.
        if channel_max is not None:  # channel-first observations: shape[0] is the channel count
            channel_max = _check_channel_max(channel_max, channels, one_hot)
        code_counts = _code_counts(channel_max) if one_hot and channel_max is not None else ()
        if code_counts:
            channels = sum(code_counts)
        widths = [channels] + [out for out, _, _ in convs]
        conv_params = sum(o * i * k * k for (o, k, _), i in zip(convs, widths, strict=False))
        if conv_params > MAX_CONV_PARAMETERS:
            raise ValueError(f"convs describe {conv_params:,} weights; at most {MAX_CONV_PARAMETERS:,}")
        in_shape = (channels, *observation_space.shape[1:])
        for out, kernel, stride in convs:
            layers += [nn.Conv2d(channels, out, kernel, stride), nn.ReLU()]
            channels = out
        cnn = nn.Sequential(*layers)
        with th.no_grad():
            height, width = cnn(th.zeros(1, *in_shape)).shape[2:]
        if height * width * slot_size > MAX_FEATURES:
            raise ValueError(
                f"{height}x{width} positions x slot_size {slot_size} = {height * width * slot_size:,} "
                "features; "
                f"at most {MAX_FEATURES:,} (fewer positions: larger strides; or a smaller slot_size)"
            )
        super().__init__(observation_space, height * width * slot_size)
        self.cnn = cnn
        self.code_counts = code_counts
        self.n_slots = height * width
        self.slot_size = slot_size
        self.coordinates = coordinates
        ys, xs = th.meshgrid(th.linspace(-1, 1, height), th.linspace(-1, 1, width), indexing="ij")
        self.register_buffer("coords", th.stack([xs, ys], dim=-1).view(1, self.n_slots, 2), persistent=False)
        self.project = nn.Sequential(nn.Linear(channels + (2 if coordinates else 0), slot_size), nn.ReLU())
        scale = th.ones(observation_space.shape[0]) if channel_max is None else 1.0 / th.tensor(channel_max)
        self.register_buffer("scale", scale.float().view(1, -1, 1, 1), persistent=False)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        x = observations.float()
        x = one_hot_planes(x, self.code_counts) if self.code_counts else x * self.scale
        maps = self.cnn(x)  # [B, C, H, W]
        slots = maps.flatten(2).transpose(1, 2)  # [B, H*W, C], row-major positions
        if self.coordinates:
            slots = th.cat([slots, self.coords.expand(slots.shape[0], -1, -1)], dim=-1)
        return self.project(slots).flatten(1)


class SlotInput(RecurrentCore):
    """Mixin for a core that ``accepts_slots``: read ``n_slots`` input slots from a flat
    ``[T, B, n_slots * slot_size]`` input (or the same already split, ``[T, B, n_slots, slot_size]``).

    ``input_size`` is the flat size (as sb3-contrib's ``_process_sequence`` expects of a core); the core
    itself is built for slots of ``slot_size``. Combined with a core class by :func:`slot_core`, so the
    parameters keep the core's own names.
    """

    def __init__(self, n_slots: int, slot_size: int, hidden_size: int, **kwargs: Any) -> None:
        super().__init__(slot_size, hidden_size, **kwargs)
        self.n_slots = n_slots
        self.slot_size = slot_size
        self.input_size = n_slots * slot_size

    def _check_input(self, x: th.Tensor, state: State | None, episode_starts: th.Tensor | None) -> None:
        if x.dim() != 4 or tuple(x.shape[2:]) != (self.n_slots, self.slot_size):
            raise ValueError(
                f"x must have shape [T, B, {self.n_slots * self.slot_size}] "
                f"({self.n_slots} slots of {self.slot_size}), got {tuple(x.shape)}"
            )
        super()._check_input(x.flatten(2), state, episode_starts)

    def forward(self, x: th.Tensor, *args: Any, **kwargs: Any) -> tuple[th.Tensor, State]:
        if x.dim() == 3 and x.shape[-1] == self.input_size:
            x = x.reshape(*x.shape[:2], self.n_slots, self.slot_size)
        return super().forward(x, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"n_slots={self.n_slots}, slot_size={self.slot_size}, " + super().extra_repr()


_SLOT_CORES: dict[type[RecurrentCore], type[RecurrentCore]] = {}


def slot_core(cls: type[RecurrentCore]) -> type[RecurrentCore]:
    """``cls`` reading slots from a flat input: ``slot_core(cls)(n_slots, slot_size, hidden_size, **kw)``
    (one class per core class, made once)."""
    if not cls.accepts_slots:
        raise ValueError(f"{cls.__name__} does not accept input slots (accepts_slots=False)")
    if cls not in _SLOT_CORES:
        _SLOT_CORES[cls] = type(f"Slot{cls.__name__}", (SlotInput, cls), {"__module__": __name__})
    return _SLOT_CORES[cls]


class SpatialCnnRimsPolicy(RimsActorCriticPolicy):
    """``CnnRimsPolicy`` whose core reads the CNN's positions as input slots (``SpatialCNN``), for cores
    that declare ``accepts_slots`` (RIMs); other cores read the flat feature vector."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("features_extractor_class", SpatialCNN)
        super().__init__(*args, **kwargs)

    def _build_core(self) -> RecurrentCore:
        extractor = self.pi_features_extractor
        cfg = self._core_config
        if not (cfg.cls.accepts_slots and isinstance(extractor, SpatialCNN)):
            return super()._build_core()
        if cfg.n_layers != 1:
            raise ValueError(
                f"the spatial policy reads slots with one core layer; set n_lstm_layers=1, got {cfg.n_layers}"
            )
        cls = slot_core(cfg.cls)
        return cls(extractor.n_slots, extractor.slot_size, cfg.hidden_size, **cfg.kwargs)


POLICIES["SpatialCnnRimsPolicy"] = SpatialCnnRimsPolicy
RecurrentPPO.policy_aliases["SpatialCnnRimsPolicy"] = SpatialCnnRimsPolicy
