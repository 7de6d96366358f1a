"""Feature extractors sized for MiniGrid's 7x7x3 symbolic view (NatureCNN needs >= 36x36 pixels).

MiniGrid "images" hold small integer codes (object <= 10, colour <= 5, door state <= 2), not 0-255
pixels, so we scale each channel by its fixed maximum and tell SB3 not to divide by 255
(``normalize_images=False``): use ``minigrid_policy_kwargs()`` when building the policy.
"""

from __future__ import annotations

from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

#: Per-channel maxima of MiniGrid image codes (object type, colour, state): the largest values of
#: minigrid's OBJECT_TO_IDX, COLOR_TO_IDX and STATE_TO_IDX (a test checks them against minigrid), written
#: out so that the library does not import the env package.
MINIGRID_CHANNEL_MAX: tuple[float, ...] = (10.0, 5.0, 2.0)


class MiniGridCNN(BaseFeaturesExtractor):
    """conv2x2(16) -> maxpool -> conv2x2(32) -> conv2x2(64) -> linear(features_dim), inputs scaled to [0, 1].

    Accepts channel-last (as MiniGrid emits) or channel-first (after SB3's ``VecTransposeImage``).
    """

    scale: th.Tensor  # registered buffer

    def __init__(
        self,
        observation_space: spaces.Box,
        features_dim: int = 64,
        channel_max: tuple[float, ...] = MINIGRID_CHANNEL_MAX,
    ) -> None:
        super().__init__(observation_space, features_dim)
        shape = observation_space.shape
        n_ch = len(channel_max)
        if shape is None or len(shape) != 3 or n_ch not in (shape[0], shape[-1]):
            raise ValueError(f"MiniGridCNN expects an (H, W, {n_ch}) or ({n_ch}, H, W) image, got {shape}")
        # SB3 transposes (7,7,3) -> (3,7,7); an untransposed cube like (3,3,3) stays channel-last.
        self.channels_first = shape[0] == n_ch and shape[-1] != n_ch
        height, width = (shape[1], shape[2]) if self.channels_first else (shape[0], shape[1])
        if min(height, width) < 7:
            raise ValueError(f"MiniGridCNN needs a view of at least 7x7, got {height}x{width}")
        self.register_buffer("scale", 1.0 / th.tensor(channel_max, dtype=th.float32).view(1, n_ch, 1, 1))
        self.cnn = nn.Sequential(
            nn.Conv2d(n_ch, 16, 2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 2),
            nn.ReLU(),
            nn.Conv2d(32, 64, 2),
            nn.ReLU(),
            nn.Flatten(),
        )
        with th.no_grad():
            n_flat = self.cnn(th.zeros(1, n_ch, height, width)).shape[1]
        self.linear = nn.Sequential(nn.Linear(n_flat, features_dim), nn.ReLU())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        x = observations.float()
        if not self.channels_first:
            x = x.permute(0, 3, 1, 2)
        return self.linear(self.cnn(x * self.scale))


class MiniGridDictExtractor(BaseFeaturesExtractor):
    """``MiniGridCNN`` on ``obs["image"]``, concatenated with the one-hot ``obs["mission"]`` vector."""

    def __init__(self, observation_space: spaces.Dict, cnn_features_dim: int = 64) -> None:
        image_space, mission_space = observation_space["image"], observation_space["mission"]
        assert isinstance(image_space, spaces.Box) and isinstance(mission_space, spaces.Box)
        mission_dim = int(mission_space.shape[0])
        super().__init__(observation_space, cnn_features_dim + mission_dim)
        self.cnn = MiniGridCNN(image_space, cnn_features_dim)

    def forward(self, observations: dict[str, th.Tensor]) -> th.Tensor:
        return th.cat([self.cnn(observations["image"]), observations["mission"].float()], dim=1)


def minigrid_policy_kwargs(
    observation_space: spaces.Space | None = None, features_dim: int = 64
) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` for MiniGrid: our extractor (Dict-aware) and ``normalize_images=False``."""
    if isinstance(observation_space, spaces.Dict):
        return {
            "features_extractor_class": MiniGridDictExtractor,
            "features_extractor_kwargs": {"cnn_features_dim": features_dim},
            "normalize_images": False,
        }
    return {
        "features_extractor_class": MiniGridCNN,
        "features_extractor_kwargs": {"features_dim": features_dim},
        "normalize_images": False,
    }
