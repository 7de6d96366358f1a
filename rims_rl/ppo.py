"""``RecurrentPPO`` with torch-ac style minibatches: random fixed-length chunks from every env.

sb3-contrib's recurrent buffer cuts the env-major rollout at one random point and yields consecutive
slices, so a minibatch of 256 steps holds the whole trajectories of two or three envs, and every epoch
sees nearly the same minibatches. ``ChunkedRecurrentPPO`` cuts each env's rollout into chunks of
``chunk_length`` steps, each starting from the recurrent state the buffer stored at its first step, and
draws minibatches of chunks from all envs at random each epoch (torch-ac's ``recurrence``).

Only the buffer's sampling differs; ``RecurrentPPO.train`` is unchanged. Chunks are not cut at episode
starts: an episode that starts inside a chunk is handled by ``episode_starts`` in the policy's
``_process_sequence`` (which zeroes the state before that step: in the core where it takes
``episode_starts``, by running the episode segments in one or two calls for the LSTM/GRU cores, else in
sb3-contrib's per-step loop). A rollout length that is not a multiple of ``chunk_length`` leaves one
shorter chunk per env, padded with zeros and masked out (``mask`` 0) exactly as sb3-contrib pads its
sequences.

The buffer also stores the dropout key of every step when the policy emits them (``keyed_dropout``,
see ``rims_rl.dropout``) and hands them back as a third element of the actor state, ``[T, n_seq]``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np
import torch as th
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer
from sb3_contrib.common.recurrent.type_aliases import (
    RecurrentDictRolloutBufferSamples,
    RecurrentRolloutBufferSamples,
    RNNStates,
)
from stable_baselines3.common.buffers import RolloutBuffer

from rims_rl.checks import check_positive
from rims_rl.dropout import NO_KEY

#: Steps per chunk when ``ChunkedRecurrentPPO`` is asked for without a ``chunk_length``.
DEFAULT_CHUNK_LENGTH = 32

#: Per-step arrays of the buffer, stored ``[n_steps, n_envs, ...]``, sampled env-major.
_STEP_ARRAYS = ("actions", "values", "log_probs", "advantages", "returns", "episode_starts", "dropout_keys")
#: Stored recurrent states, ``[n_steps, n_layers, n_envs, hidden]``.
_STATE_ARRAYS = ("hidden_states_pi", "cell_states_pi", "hidden_states_vf", "cell_states_vf")


class ChunkLayout(NamedTuple):
    """Where chunks lie in the env-major flattened buffer (flat index ``env * n_steps + step``)."""

    first: np.ndarray  # [n_chunks] flat index of each chunk's first step
    length: np.ndarray  # [n_chunks] number of real steps (== chunk_length except a last, shorter chunk)


def chunk_layout(n_steps: int, n_envs: int, chunk_length: int) -> ChunkLayout:
    """Chunks of ``chunk_length`` steps covering each env's rollout once, env by env."""
    starts = np.arange(0, n_steps, chunk_length)
    first = (np.arange(n_envs)[:, None] * n_steps + starts[None, :]).ravel()
    length = np.tile(np.minimum(chunk_length, n_steps - starts), n_envs)
    return ChunkLayout(first, length)


def check_chunk_length(chunk_length: Any, batch_size: int | None = None, prefix: str = "") -> int:
    """``chunk_length`` if it is a positive integer that divides ``batch_size`` (when given), else
    ``ValueError``: the one check of it, for the buffer, the algorithm and the agent settings (whose names
    carry the ``prefix``, e.g. ``ppo.``)."""
    check_positive(f"{prefix}chunk_length", chunk_length)
    if batch_size is not None and batch_size % chunk_length != 0:
        raise ValueError(
            f"{prefix}batch_size={batch_size} must be a multiple of {prefix}chunk_length={chunk_length}"
        )
    return int(chunk_length)


class _ChunkFields(NamedTuple):
    """The fields of sb3-contrib's recurrent samples after ``observations``, in their order."""

    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    lstm_states: RNNStates
    episode_starts: th.Tensor
    mask: th.Tensor


_SamplesT = TypeVar("_SamplesT", RecurrentRolloutBufferSamples, RecurrentDictRolloutBufferSamples)


class _ChunkSampling(RolloutBuffer, Generic[_SamplesT]):
    """Mixin for sb3-contrib's recurrent buffers: ``get`` yields minibatches of random chunks.

    Must come before the buffer class in the bases; the buffer supplies storage, ``add`` and
    ``compute_returns_and_advantage`` unchanged. Its base is ``RolloutBuffer``, the common base of both
    recurrent buffers, so the MRO of the concrete buffers is the same as with a plain mixin. The
    observation-specific steps (flattening, the samples type) are left to the two concrete buffers.
    """

    chunk_length: int
    dropout_keys: np.ndarray
    # The stored recurrent states, created by the recurrent buffer's ``reset``.
    hidden_states_pi: np.ndarray
    cell_states_pi: np.ndarray
    hidden_states_vf: np.ndarray
    cell_states_vf: np.ndarray

    def __init__(self, *args: Any, chunk_length: int = DEFAULT_CHUNK_LENGTH, **kwargs: Any) -> None:
        check_chunk_length(chunk_length)
        self.chunk_length = chunk_length
        super().__init__(*args, **kwargs)

    def reset(self) -> None:
        super().reset()
        self.dropout_keys = np.full((self.buffer_size, self.n_envs), NO_KEY, dtype=np.int64)

    # sb3-contrib's recurrent buffers' own ``add`` signature: it narrows ``RolloutBuffer.add`` with the
    # required keyword ``lstm_states``.
    def add(self, *args: Any, lstm_states: RNNStates, **kwargs: Any) -> None:  # type: ignore[override]
        """Store the step as sb3-contrib does, plus its dropout keys if the actor state carries them."""
        if len(lstm_states.pi) > 2:
            self.dropout_keys[self.pos] = lstm_states.pi[2].reshape(-1).cpu().numpy()
        # At run time super() is the recurrent buffer after the mixin in the MRO, whose ``add`` takes
        # ``lstm_states``; mypy resolves it to the static base ``RolloutBuffer``.
        super().add(*args, lstm_states=lstm_states, **kwargs)  # type: ignore[call-arg]

    def _to_env_major(self) -> None:
        """``[n_steps, n_envs, ...]`` -> ``[n_envs * n_steps, ...]`` once per rollout (states too)."""
        for name in _STATE_ARRAYS:  # [n_steps, n_layers, n_envs, h] -> [n_envs * n_steps, n_layers, h]
            setattr(self, name, self.swap_and_flatten(getattr(self, name).swapaxes(1, 2)))
        for name in _STEP_ARRAYS:
            setattr(self, name, self.swap_and_flatten(getattr(self, name)))
        self._observations_to_env_major()

    def _observations_to_env_major(self) -> None:
        raise NotImplementedError

    def _samples(self, take: Callable[[np.ndarray], th.Tensor], fields: _ChunkFields) -> _SamplesT:
        """The samples type of the buffer: its observations, through ``take``, then ``fields``."""
        raise NotImplementedError

    # sb3-contrib's recurrent buffers yield their own samples types, not ``RolloutBufferSamples``.
    def get(self, batch_size: int | None = None) -> Generator[_SamplesT, None, None]:  # type: ignore[override]
        """Minibatches of ``batch_size // chunk_length`` chunks (all chunks if ``None``), shuffled."""
        assert self.full, "Rollout buffer must be full before sampling from it"
        if not self.generator_ready:
            self._to_env_major()
            self.generator_ready = True
        layout = chunk_layout(self.buffer_size, self.n_envs, self.chunk_length)
        n_chunks = len(layout.first)
        per_batch = n_chunks if batch_size is None else max(1, batch_size // self.chunk_length)
        order = np.random.permutation(n_chunks)
        for i in range(0, n_chunks, per_batch):
            chosen = order[i : i + per_batch]
            yield self._chunk_samples(layout.first[chosen], layout.length[chosen])

    def _chunk_samples(self, first: np.ndarray, length: np.ndarray) -> _SamplesT:
        """Samples of the chunks starting at flat indices ``first``, as ``[n_seq * chunk_length, ...]``."""
        offsets = np.arange(self.chunk_length)
        real = offsets[None, :] < length[:, None]  # [n_seq, L]
        flat = np.where(real, first[:, None] + offsets[None, :], first[:, None]).ravel()
        real = real.ravel()

        def take(array: np.ndarray) -> th.Tensor:
            out = array[flat]
            out[~real] = 0  # padding as sb3-contrib's pad_sequence: zeros, masked out of the loss
            return self.to_torch(out)

        def initial(array: np.ndarray) -> th.Tensor:  # [n_seq, n_layers, h] -> [n_layers, n_seq, h]
            return self.to_torch(array[first].swapaxes(0, 1)).contiguous()

        pi_state: tuple[th.Tensor, ...] = (initial(self.hidden_states_pi), initial(self.cell_states_pi))
        if (self.dropout_keys >= 0).any():  # [n_seq * L, 1] -> [L, n_seq], as the core's steps
            pi_state += (take(self.dropout_keys).view(len(first), self.chunk_length).T.contiguous(),)
        fields = _ChunkFields(
            actions=take(self.actions),
            old_values=take(self.values).flatten(),
            old_log_prob=take(self.log_probs).flatten(),
            advantages=take(self.advantages).flatten(),
            returns=take(self.returns).flatten(),
            lstm_states=RNNStates(pi_state, (initial(self.hidden_states_vf), initial(self.cell_states_vf))),
            episode_starts=take(self.episode_starts).flatten(),
            mask=self.to_torch(real.astype(np.float32)),
        )
        return self._samples(take, fields)


class ChunkedRecurrentRolloutBuffer(_ChunkSampling[RecurrentRolloutBufferSamples], RecurrentRolloutBuffer):
    """``RecurrentRolloutBuffer`` sampling random ``chunk_length``-step chunks from all envs."""

    def _observations_to_env_major(self) -> None:
        self.observations = self.swap_and_flatten(self.observations)

    def _samples(
        self, take: Callable[[np.ndarray], th.Tensor], fields: _ChunkFields
    ) -> RecurrentRolloutBufferSamples:
        return RecurrentRolloutBufferSamples(take(self.observations), *fields)


# sb3's DictRolloutBuffer overrides RolloutBuffer's ``add`` and ``get`` with its own signatures (under its
# own ``type: ignore[override]``), so the mixin's (sb3-contrib's) cannot match both.
class ChunkedRecurrentDictRolloutBuffer(  # type: ignore[misc]
    _ChunkSampling[RecurrentDictRolloutBufferSamples], RecurrentDictRolloutBuffer
):
    """``RecurrentDictRolloutBuffer`` sampling random ``chunk_length``-step chunks from all envs."""

    def _observations_to_env_major(self) -> None:
        self.observations = {k: self.swap_and_flatten(v) for k, v in self.observations.items()}

    def _samples(
        self, take: Callable[[np.ndarray], th.Tensor], fields: _ChunkFields
    ) -> RecurrentDictRolloutBufferSamples:
        return RecurrentDictRolloutBufferSamples({k: take(v) for k, v in self.observations.items()}, *fields)


class ChunkedRecurrentPPO(RecurrentPPO):
    """``RecurrentPPO`` whose minibatches are random ``chunk_length``-step chunks from all envs.

    ``batch_size`` stays a number of steps and must be a multiple of ``chunk_length`` (a minibatch holds
    ``batch_size // chunk_length`` chunks). Every other argument is ``RecurrentPPO``'s.
    """

    def __init__(
        self, policy: Any, env: Any, chunk_length: int = DEFAULT_CHUNK_LENGTH, **kwargs: Any
    ) -> None:
        self.chunk_length = chunk_length  # read by _setup_model, which RecurrentPPO.__init__ calls
        super().__init__(policy, env, **kwargs)

    def _setup_model(self) -> None:
        check_chunk_length(self.chunk_length, self.batch_size)
        super()._setup_model()
        stock = self.rollout_buffer
        assert isinstance(stock, (RecurrentRolloutBuffer, RecurrentDictRolloutBuffer))
        buffer_cls = (
            ChunkedRecurrentDictRolloutBuffer
            if isinstance(stock, RecurrentDictRolloutBuffer)
            else ChunkedRecurrentRolloutBuffer
        )
        self.rollout_buffer = buffer_cls(
            stock.buffer_size,
            stock.observation_space,
            stock.action_space,
            stock.hidden_state_shape,
            stock.device,
            gae_lambda=stock.gae_lambda,
            gamma=stock.gamma,
            n_envs=stock.n_envs,
            chunk_length=self.chunk_length,
        )
