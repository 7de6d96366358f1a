"""Feature extractors sized for MiniGrid's 7x7x3 symbolic view (NatureCNN needs >= 36x36 pixels).

MiniGrid "images" hold small integer codes (object <= 10, colour <= 5, door state <= 2), not 0-255
pixels, so we scale each channel by its fixed maximum and tell SB3 not to divide by 255
(``normalize_images=False``): use ``minigrid_policy_kwargs()`` when building the policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

#: Per-channel maxima of MiniGrid image codes (object type, colour, state): the largest values of
#: minigrid's OBJECT_TO_IDX, COLOR_TO_IDX and STATE_TO_IDX (a test checks them against minigrid), written
#: out so that the library does not import the env package.
MINIGRID_CHANNEL_MAX: tuple[float, ...] = (10.0, 5.0, 2.0)


def one_hot_planes(codes: th.Tensor, code_counts: Sequence[int]) -> th.Tensor:
    """``[B, C, H, W]`` integer codes -> ``[B, sum(code_counts), H, W]`` one-hot planes, channel by
    channel (codes outside ``[0, count)`` are clamped into it)."""
    if codes.shape[1] != len(code_counts):
        raise ValueError(f"{codes.shape[1]} channels for {len(code_counts)} code counts")
    ints = codes.round().long()
    planes = [
        nn.functional.one_hot(ints[:, c].clamp(0, n - 1), n).permute(0, 3, 1, 2)
        for c, n in enumerate(code_counts)
    ]
    return th.cat(planes, dim=1).float()


class MiniGridCNN(BaseFeaturesExtractor):
    """conv2x2(16) -> maxpool -> conv2x2(32) -> conv2x2(64) -> linear(features_dim).

    Inputs are scaled to [0, 1] per channel, or, with ``one_hot=True``, each channel's integer code becomes
    its own one-hot planes (11 + 6 + 3 = 20 for MiniGrid): a scaled colour code puts "red" between
    "green" and "blue", so a unit that must fire for one colour needs two thresholds, while a one-hot
    plane makes every (colour, type) conjunction a single 2x2 filter (BabyAI embeds the codes likewise).
    A code above its channel's maximum lands in the last plane (MiniGrid's own codes never do).
    Accepts channel-last (as MiniGrid emits) or channel-first (after SB3's ``VecTransposeImage``).
    """

    scale: th.Tensor  # registered buffer

    def __init__(
        self,
        observation_space: spaces.Box,
        features_dim: int = 64,
        channel_max: tuple[float, ...] = MINIGRID_CHANNEL_MAX,
        one_hot: bool = False,
    ) -> None:
        super().__init__(observation_space, features_dim)
        shape = observation_space.shape
        n_ch = len(channel_max)
        if shape is None or len(shape) != 3 or n_ch not in (shape[0], shape[-1]):
            raise ValueError(f"MiniGridCNN expects an (H, W, {n_ch}) or ({n_ch}, H, W) image, got {shape}")
        if not isinstance(one_hot, bool):
            raise ValueError(f"one_hot must be true or false, got {one_hot!r}")
        # SB3 transposes (7,7,3) -> (3,7,7); an untransposed cube like (3,3,3) stays channel-last.
        self.channels_first = shape[0] == n_ch and shape[-1] != n_ch
        height, width = (shape[1], shape[2]) if self.channels_first else (shape[0], shape[1])
        if min(height, width) < 7:
            raise ValueError(f"MiniGridCNN needs a view of at least 7x7, got {height}x{width}")
        self.register_buffer("scale", 1.0 / th.tensor(channel_max, dtype=th.float32).view(1, n_ch, 1, 1))
        self.one_hot = one_hot
        self.code_counts = tuple(int(m) + 1 for m in channel_max)
        in_ch = sum(self.code_counts) if one_hot else n_ch
        self.cnn = nn.Sequential(
            nn.Conv2d(in_ch, 16, 2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 2),
            nn.ReLU(),
            nn.Conv2d(32, 64, 2),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.conv_channels = tuple(m.out_channels for m in self.cnn if isinstance(m, nn.Conv2d))
        with th.no_grad():
            n_flat = self.cnn(th.zeros(1, in_ch, height, width)).shape[1]
        self.linear = nn.Sequential(nn.Linear(n_flat, features_dim), nn.ReLU())

    def _planes(self, observations: th.Tensor) -> th.Tensor:
        """(B, C, H, W) network input: scaled codes, or one-hot planes per channel."""
        x = observations.float()
        if not self.channels_first:
            x = x.permute(0, 3, 1, 2)
        return one_hot_planes(x, self.code_counts) if self.one_hot else x * self.scale

    def encode(self, observations: th.Tensor, film: Sequence[tuple[th.Tensor, th.Tensor]] = ()) -> th.Tensor:
        """Features; ``film`` holds one (gamma, beta) of shape (B, channels) per convolution, applied to
        its output before the ReLU (FiLM, Perez et al. 2018): how a mission conditions what is seen."""
        if film and len(film) != len(self.conv_channels):
            raise ValueError(f"film needs {len(self.conv_channels)} (gamma, beta) pairs, got {len(film)}")
        x = self._planes(observations)
        layer = 0
        for module in self.cnn:
            x = module(x)
            if film and isinstance(module, nn.Conv2d):
                gamma, beta = film[layer]
                x = gamma[:, :, None, None] * x + beta[:, :, None, None]
                layer += 1
        return self.linear(x)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.encode(observations)


class MiniGridDictExtractor(BaseFeaturesExtractor):
    """``MiniGridCNN`` on ``obs["image"]``, concatenated with the one-hot ``obs["mission"]`` vector.

    With ``film=True`` the mission also scales and shifts every convolution's channels, so the features
    can say "the named object is here" rather than leaving the policy to intersect "a red thing is here"
    with "red was named" (the conjunction plain concatenation did not learn on our distractor room).
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        cnn_features_dim: int = 64,
        film: bool = False,
        one_hot: bool = False,
    ) -> None:
        image_space, mission_space = observation_space["image"], observation_space["mission"]
        assert isinstance(image_space, spaces.Box) and isinstance(mission_space, spaces.Box)
        if not isinstance(film, bool):
            raise ValueError(f"film must be true or false, got {film!r}")
        mission_dim = int(mission_space.shape[0])
        super().__init__(observation_space, cnn_features_dim + mission_dim)
        self.cnn = MiniGridCNN(image_space, cnn_features_dim, one_hot=one_hot)
        layers = [nn.Linear(mission_dim, 2 * c) for c in self.cnn.conv_channels] if film else []
        for layer in layers:  # start as the identity: gamma 1, beta 0
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.film = nn.ModuleList(layers) if film else None

    def forward(self, observations: dict[str, th.Tensor]) -> th.Tensor:
        mission = observations["mission"].float()
        film: list[tuple[th.Tensor, th.Tensor]] = []
        if self.film is not None:
            for layer in self.film:
                delta_gamma, beta = layer(mission).chunk(2, dim=1)
                film.append((1.0 + delta_gamma, beta))
        return th.cat([self.cnn.encode(observations["image"], film), mission], dim=1)


def minigrid_policy_kwargs(
    observation_space: spaces.Space | None = None,
    features_dim: int = 64,
    film: bool = False,
    one_hot: bool = False,
) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` for MiniGrid: our extractor (Dict-aware) and ``normalize_images=False``.

    ``film`` needs a mission to condition on: refused for image-only observations.
    """
    if isinstance(observation_space, spaces.Dict):
        kwargs: dict[str, Any] = {"cnn_features_dim": features_dim}
        kwargs.update({k: True for k, on in (("film", film), ("one_hot", one_hot)) if on})
        return {
            "features_extractor_class": MiniGridDictExtractor,
            "features_extractor_kwargs": kwargs,
            "normalize_images": False,
        }
    if film:
        raise ValueError(
            "features_extractor_kwargs.film conditions the CNN on the mission, but this env has no mission "
            "in its observations: drop film, or use a task whose mission varies (Fetch, GoToObject, RimsRL/)"
        )
    kwargs = {"features_dim": features_dim, **({"one_hot": True} if one_hot else {})}
    return {
        "features_extractor_class": MiniGridCNN,
        "features_extractor_kwargs": kwargs,
        "normalize_images": False,
    }
