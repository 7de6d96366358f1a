"""Keyed dropout: masks that are a function of a per-step key, so a PPO update can redraw the rollout's.

SB3 collects rollouts in eval mode (no dropout) and trains in train mode (fresh random masks), so with
dropout the PPO ratio differs from 1 on unchanged weights and the clipped objective sees noise as policy
change. With keyed dropout every (env, step) gets a random integer key during the rollout; the dropout
mask of that step is a hash of (key, element index, module salt), applied in the rollout and stored
with the step in the buffer (``rims_rl.ppo``), so training recomputes exactly the rollout's masks.

The key travels as a third element of the actor's recurrent state ``(h, c, keys)``: the policy draws
the key of step t+1 when it computes step t, so the state sb3-contrib's ``collect_rollouts`` hands to
``rollout_buffer.add`` for step t holds step t's key. A missing key (the first step of a learn call,
``predict``) or a negative one means no dropout on that step, in both phases.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch as th
from torch import nn

_MASK32 = 0xFFFFFFFF
#: Keys are drawn in [0, 2**31) so that the integer hash never overflows int64.
KEY_LIMIT = 2**31
NO_KEY = -1


def keyed_uniform(keys: th.Tensor, n_elements: int, salt: int) -> th.Tensor:
    """Uniform numbers in [0, 1), ``[B, n_elements]``, a hash of (key, element index, salt).

    Independent of where a key sits in the batch, so a rollout batch of envs and a training batch of
    chunks draw the same numbers for the same step.
    """
    index = th.arange(n_elements, device=keys.device, dtype=th.int64)
    x = ((keys.unsqueeze(1) * 0x5BD1E995) & _MASK32) + ((index * 0x27D4EB2F) & _MASK32) + (salt & _MASK32)
    x = x & _MASK32
    for multiplier, shift in ((0x7FEB352D, 15), (0x446CA68B, 16)):  # lowbias32-style mixing
        x = x ^ (x >> 16)
        x = (x * multiplier) & _MASK32
        x = x ^ (x >> shift)
    return (x >> 8).to(th.float32) * (1.0 / 2**24)


class KeyedDropout(nn.Dropout):
    """``nn.Dropout`` whose masks come from per-step keys while ``use_keys`` is active.

    :param p: drop probability.
    :param batch_dim: the batch dimension of the tensors this module sees.
    :param salt: distinguishes the modules of one policy (input vs communication, actor vs critic).

    Outside ``use_keys`` it is plain ``nn.Dropout``. Inside, call ``i`` uses ``keys[i]`` (``[T, B]``):
    the core calls each dropout module once per step, whether it runs T steps in one call or T calls.
    """

    def __init__(self, p: float, batch_dim: int, salt: int) -> None:
        super().__init__(p)
        self.batch_dim = batch_dim
        self.salt = salt
        self._keys: th.Tensor | None = None
        self._calls = 0

    @contextmanager
    def use_keys(self, keys: th.Tensor) -> Iterator[None]:
        """Draw the masks of the next ``T = keys.shape[0]`` calls from ``keys`` [T, B]; check the count."""
        self._keys, self._calls = keys, 0
        try:
            yield
            if self._calls not in (0, keys.shape[0]):
                raise RuntimeError(f"keyed dropout: {keys.shape[0]} steps of keys, {self._calls} calls")
        finally:
            self._keys = None

    def forward(self, x: th.Tensor) -> th.Tensor:
        if self._keys is None:
            return super().forward(x)
        if self._calls >= self._keys.shape[0]:
            raise RuntimeError(f"keyed dropout called more than the {self._keys.shape[0]} steps keyed")
        keys = self._keys[self._calls]
        self._calls += 1
        if self.p == 0.0:
            return x
        moved = x.movedim(self.batch_dim, 0)
        if keys.shape != moved.shape[:1]:
            raise RuntimeError(f"keyed dropout: keys {tuple(keys.shape)} for a batch of {moved.shape[0]}")
        per_sample = moved[0].numel()
        keep = keyed_uniform(keys.clamp(min=0), per_sample, self.salt) >= self.p
        scale = keep.to(x.dtype) / (1.0 - self.p)
        scale = th.where((keys < 0).unsqueeze(1), th.ones_like(scale), scale)  # no key: no dropout
        return (moved * scale.view(moved.shape)).movedim(0, self.batch_dim)


def new_keys(batch_size: int, device: th.device | str) -> th.Tensor:
    """Fresh keys for one step of ``batch_size`` envs, ``[1, B]`` (torch's global RNG, so seeds hold)."""
    return th.randint(0, KEY_LIMIT, (1, batch_size), device=device, dtype=th.int64)
