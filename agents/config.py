"""Typed agent settings: the PPO arguments and the whole agent preset, checked once where they are defined.

``PPOSettings`` and ``AgentPreset`` are frozen dataclasses that validate themselves in ``__post_init__``,
so a value that reaches training has been checked exactly once, wherever it came from (a preset file, a
``--set`` override, a checkpoint's JSON). Their JSON form (``to_dict``/``from_dict``) is the one that run
directories and checkpoints have always stored, so old checkpoints load unchanged. Policy arguments stay
a dict (they are the policy constructor's keyword arguments); their names are checked against the
constructor here and their values by the constructor itself (``build_model``), as torch modules do.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import LinearSchedule

from rims_rl.checks import check_int, check_number, check_positive_number, hint, is_int
from rims_rl.policies import RimsActorCriticPolicy
from rims_rl.ppo import check_chunk_length

_SCHEDULE_RE = re.compile(r"^lin_([0-9.eE+-]+)$")
#: The training algorithms, by class name: sb3-contrib's RecurrentPPO (minibatches of whole padded
#: sequences), ours on random chunks of ``ppo.chunk_length`` steps (``rims_rl.ppo``), SB3's feed-forward PPO.
CHUNKED = "ChunkedRecurrentPPO"
RECURRENT_ALGOS: tuple[str, ...] = ("RecurrentPPO", CHUNKED)
ALGOS: tuple[str, ...] = (*RECURRENT_ALGOS, "PPO")
FF_POLICIES: tuple[str, ...] = ("MlpPolicy", "CnnPolicy", "MultiInputPolicy")
RECURRENT_POLICIES: tuple[str, ...] = (
    "MlpRimsPolicy",
    "CnnRimsPolicy",
    "MultiInputRimsPolicy",
    "SpatialCnnRimsPolicy",
)
EXTRACTORS: tuple[str, ...] = (
    "FlattenExtractor",
    "NatureCNN",
    "CombinedExtractor",
    "MiniGridCNN",
    "MiniGridDictExtractor",
    "SpatialCNN",
)
ACTIVATIONS: tuple[str, ...] = ("tanh", "relu", "elu", "gelu", "leaky_relu")
VEC_ENVS: tuple[str, ...] = ("dummy", "subproc", "ale")
#: Bounds of ``check_model_size``: far beyond this project's models (a 256-unit LSTM, 64-wide heads).
MAX_LAYER_SIZE = 4096
MAX_LAYERS = 16
#: Bounds of the run-size settings, whatever file or flag they come from: far beyond this project's runs
#: (16 envs, 128-1024 steps, 4-20 epochs, 10M timesteps), low enough that a typo cannot hang a machine.
MAX_N_ENVS = 1024
MAX_N_STEPS = 1 << 16
MAX_N_EPOCHS = 1000
MAX_TIMESTEPS = 10**10
#: What one run may take by default (``check_measured_size``): its parameters with their gradients and
#: Adam's two moments (16 bytes each) plus PPO's rollout buffer, measured before anything is allocated.
#: Every preset takes under 0.2 GiB (Atari's are the largest, 0.13-0.16). ``--memory-gib`` (train, evaluate,
#: compare, tune) or the environment variable ``MEMORY_BUDGET_VAR`` raises it, up to ``MAX_MEMORY_GIB``.
DEFAULT_MEMORY_GIB = 1.0
MAX_MEMORY_GIB = 4096.0
MEMORY_BUDGET_VAR = "RIMS_RL_MEMORY_GIB"
#: ``nn.LSTM`` arguments a config may pass through ``lstm_kwargs`` (``check_lstm_kwargs``).
LSTM_KWARGS: tuple[str, ...] = ("dropout", "bias")
#: policy_kwargs that only a recurrent policy takes.
RECURRENT_KWARGS: tuple[str, ...] = (
    "core",
    "rims_kwargs",
    "lstm_hidden_size",
    "n_lstm_layers",
    "shared_lstm",
    "enable_critic_lstm",
    "lstm_kwargs",
    "core_kwargs",
    "critic_grad_through_core",
    "keyed_dropout",
)


def infer_algo(algo: Any, chunk_length: Any) -> Any:
    """The algorithm ``ppo.chunk_length`` selects where no algorithm was named explicitly: the one place
    the chunked algorithm is inferred.

    ``algo`` is what a preset said without choosing between the recurrent algorithms: a shipped preset's
    ``RecurrentPPO`` edited by ``--set ppo.chunk_length``, or a config.json or checkpoint written before
    ``algo`` named the chunked algorithm (``RecurrentPPO`` with a ``chunk_length``), or nothing (None). A
    recurrent or missing algo becomes ``ChunkedRecurrentPPO`` when ``chunk_length`` is set and
    ``RecurrentPPO`` when it is not (a missing one stays missing); any other value is returned as it is,
    for ``AgentPreset`` to check.
    """
    if algo is None and chunk_length is None:
        return None
    if algo is None or algo in RECURRENT_ALGOS:
        return CHUNKED if chunk_length is not None else "RecurrentPPO"
    return algo


def resolve_schedule(value: Any, name: str = "value") -> float | Callable[[float], float]:
    """``"lin_2.5e-4"`` -> linear decay from 2.5e-4 to 0 over training; positive finite numbers pass."""
    if isinstance(value, str):
        match = _SCHEDULE_RE.match(value.strip())
        if not match:
            raise ValueError(f"{name}={value!r}: expected a number or 'lin_<start>' (e.g. 'lin_2.5e-4')")
        start = float(match.group(1))
        if not math.isfinite(start) or start <= 0:
            raise ValueError(f"{name}={value!r}: the schedule must start at a finite value above 0")
        return LinearSchedule(start, 0.0, 1.0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number or 'lin_<start>', got {value!r}")
    return check_positive_number(name, value)


def _from_mapping(cls: type, data: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Keyword arguments for ``cls`` from ``data``, refusing unknown keys with the valid ones."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be a mapping, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ValueError(f"unknown {what} key {key!r}{hint(key, names)}; valid: {', '.join(names)}")
    return dict(data)


@dataclass(frozen=True)
class PPOSettings:
    """The PPO/RecurrentPPO arguments a preset sets (SB3's names and meanings; schedules as strings)."""

    learning_rate: float | str = 3e-4
    """Adam step size, or ``"lin_<start>"`` for a linear decay to 0 over training (rl-zoo's notation)."""
    n_steps: int = 128
    """Environment steps per env in each rollout."""
    batch_size: int = 128
    """Samples per minibatch (RecurrentPPO: whole padded sequences are cut from the rollout)."""
    n_epochs: int = 10
    """Passes over each rollout."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE bias/variance trade-off."""
    clip_range: float | str = 0.2
    """PPO's ratio clip, or ``"lin_<start>"``."""
    clip_range_vf: float | str | None = None
    """Value-function clip (``None``: no value clipping)."""
    normalize_advantage: bool = True
    """Normalise advantages per minibatch (SB3's default)."""
    ent_coef: float = 0.0
    """Entropy bonus weight."""
    vf_coef: float = 0.5
    """Value-loss weight."""
    max_grad_norm: float = 0.5
    """Gradient-norm clip."""
    target_kl: float | None = None
    """Stop an update's epochs once the approximate KL exceeds this (``None``: never)."""
    chunk_length: int | None = None
    """Algo ``ChunkedRecurrentPPO`` only: minibatches of random chunks of this many steps from all envs,
    each from its stored state (torch-ac's recurrence); ``None`` for the other algorithms. Setting it with
    ``--set`` selects that algorithm (``infer_algo``)."""

    def __post_init__(self) -> None:
        resolve_schedule(self.learning_rate, "ppo.learning_rate")
        resolve_schedule(self.clip_range, "ppo.clip_range")
        if self.clip_range_vf is not None:
            resolve_schedule(self.clip_range_vf, "ppo.clip_range_vf")
        check_int("ppo.n_steps", self.n_steps, 1, MAX_N_STEPS)
        check_int("ppo.batch_size", self.batch_size, 2)
        check_int("ppo.n_epochs", self.n_epochs, 1, MAX_N_EPOCHS)
        check_number("ppo.gamma", self.gamma, 0.0, 1.0)
        check_number("ppo.gae_lambda", self.gae_lambda, 0.0, 1.0)
        check_number("ppo.ent_coef", self.ent_coef, 0.0)
        check_number("ppo.vf_coef", self.vf_coef, 0.0)
        check_number("ppo.max_grad_norm", self.max_grad_norm, 0.0)
        if self.target_kl is not None:
            check_number("ppo.target_kl", self.target_kl, 0.0)
        if self.chunk_length is not None:
            check_chunk_length(self.chunk_length, self.batch_size, prefix="ppo.")
        if not isinstance(self.normalize_advantage, bool):
            raise ValueError(
                f"ppo.normalize_advantage must be true or false, got {self.normalize_advantage!r}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PPOSettings:
        """From a preset's ``ppo`` block; unknown keys are refused with the valid ones."""
        return cls(**_from_mapping(cls, data, "ppo"))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (schedules stay strings)."""
        return dataclasses.asdict(self)

    def algo_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for SB3's ``PPO``/``RecurrentPPO`` (schedules resolved to callables)."""
        kwargs = self.to_dict()
        if self.chunk_length is None:
            del kwargs["chunk_length"]  # stock RecurrentPPO/PPO do not take it
        kwargs["learning_rate"] = resolve_schedule(self.learning_rate, "ppo.learning_rate")
        kwargs["clip_range"] = resolve_schedule(self.clip_range, "ppo.clip_range")
        if self.clip_range_vf is not None:
            kwargs["clip_range_vf"] = resolve_schedule(self.clip_range_vf, "ppo.clip_range_vf")
        return kwargs


@dataclass(frozen=True)
class AgentPreset:
    """Everything that defines an agent on an environment family, as plain data (JSON in and out).

    ``n_envs`` and ``n_timesteps`` are the preset's defaults until a run sets them; a run config holds
    its preset with the run's values, so each value has one home.
    """

    agent: str
    """The agent's name (``rims_ppo``, ``lstm_ppo``, ``ppo``, ``tlb_ppo``, ``assembly_ppo``)."""
    family: str
    """The environment family the preset is for (``atari``, ``minigrid``, ``classic``)."""
    algo: str
    """One of ``ALGOS``: ``RecurrentPPO``, ``ChunkedRecurrentPPO`` (needs ``ppo.chunk_length``) or ``PPO``."""
    policy: str
    """Policy class name, or ``auto`` to pick Mlp/Cnn/MultiInput from the observation space."""
    n_envs: int
    """Parallel environments."""
    n_timesteps: int
    """Training budget in environment steps."""
    ppo: PPOSettings
    """The algorithm's arguments."""
    policy_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments of the policy constructor (class names as strings)."""
    env: Mapping[str, Any] = field(default_factory=dict)
    """Wrapper settings the agent is trained with (e.g. Atari frame stacking), merged under the env's own."""
    vec_env: str | None = None
    """Vectorisation: ``None`` (in-process for MiniGrid, subprocesses for Atari) or one of VEC_ENVS."""
    channels_last: bool = False
    """Convolution weights in channels-last (NHWC) memory: the same model to float rounding, about a
    fifth more Atari steps/s on a CPU with oneDNN (1.19x lstm_ppo on Pong, docs/atari.md); no effect
    without convolutions. ``policy.parameters_to_vector()`` (SB3's flat view for ARS/CEM-style search,
    unused by PPO) needs contiguous weights and fails on these: set it false there."""
    source: str = ""
    """Where the values come from."""

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {ALGOS}, got {self.algo!r}")
        recurrent = self.algo in RECURRENT_ALGOS
        chunks = self.ppo.chunk_length
        if self.algo == CHUNKED and chunks is None:
            raise ValueError(f"algo {CHUNKED} needs ppo.chunk_length (steps per chunk, e.g. 32)")
        if chunks is not None and not recurrent:
            raise ValueError(
                f"ppo.chunk_length applies to recurrent agents (algo {CHUNKED}), not {self.algo}"
            )
        if chunks is not None and self.algo != CHUNKED:
            raise ValueError(
                f"ppo.chunk_length={chunks} trains with algo {CHUNKED}, but algo is {self.algo}: leave algo "
                f"out (chunk_length selects it), set algo={CHUNKED}, or set ppo.chunk_length=null"
            )
        valid = ("auto", *(RECURRENT_POLICIES if recurrent else FF_POLICIES))
        if self.policy not in valid:
            raise ValueError(f"policy for {self.algo} must be one of {valid}, got {self.policy!r}")
        check_int("n_envs", self.n_envs, 1, MAX_N_ENVS)
        # room for a budget of MAX_TIMESTEPS rounded up to whole rollouts (resolve_config)
        check_int("n_timesteps", self.n_timesteps, 1, MAX_TIMESTEPS + MAX_N_STEPS * MAX_N_ENVS)
        if self.vec_env is not None and self.vec_env not in VEC_ENVS:
            raise ValueError(f"vec_env must be null or one of {VEC_ENVS}, got {self.vec_env!r}")
        if not isinstance(self.channels_last, bool):
            raise ValueError(f"channels_last must be true or false, got {self.channels_last!r}")
        for name in ("policy_kwargs", "env"):
            if not isinstance(getattr(self, name), Mapping):
                raise ValueError(f"{name} must be a mapping, got {getattr(self, name)!r}")
        buffer = self.ppo.n_steps * self.n_envs
        if self.ppo.normalize_advantage and buffer < 2:
            raise ValueError("n_steps * n_envs must be > 1 when normalize_advantage=True (SB3 requirement)")
        if self.ppo.batch_size > buffer:
            raise ValueError(
                f"ppo.batch_size={self.ppo.batch_size} exceeds the rollout size n_steps*n_envs={buffer}"
            )
        self._check_policy_kwargs(recurrent)

    def _check_policy_kwargs(self, recurrent: bool) -> None:
        """Names against the policy constructor, and the types of what we resolve or pass through; the
        constructor checks the values (a config may come from an untrusted file)."""
        pk = self.policy_kwargs
        allowed = policy_parameters(recurrent)
        for key in pk:
            if key not in allowed and not (not recurrent and key in RECURRENT_KWARGS):
                raise ValueError(f"unknown policy_kwargs key {key!r}{hint(key, allowed)}")
        if "optimizer_class" in pk:
            raise ValueError(
                "policy_kwargs.optimizer_class cannot be set from a config (Adam, as SB3's default)"
            )
        if not recurrent:
            bad = sorted(set(RECURRENT_KWARGS) & set(pk))
            if bad:
                raise ValueError(f"policy_kwargs {bad} need algo='RecurrentPPO' (a recurrent policy)")
        if pk.get("shared_lstm") and pk.get("enable_critic_lstm", True):
            raise ValueError("policy_kwargs: choose one of shared_lstm and enable_critic_lstm")
        fe = pk.get("features_extractor_class")
        if fe is not None and fe not in EXTRACTORS:
            raise ValueError(f"unknown features_extractor_class {fe!r}{hint(str(fe), EXTRACTORS)}")
        act = pk.get("activation_fn")
        if act is not None and (not isinstance(act, str) or act.lower() not in ACTIVATIONS):
            raise ValueError(f"unknown activation_fn {act!r}; one of {ACTIVATIONS}")
        mappings = (
            "features_extractor_kwargs",
            "optimizer_kwargs",
            "lstm_kwargs",
            "rims_kwargs",
            "core_kwargs",
        )
        for name in mappings:
            if pk.get(name) is not None and not isinstance(pk[name], Mapping):
                raise ValueError(f"policy_kwargs.{name} must be a mapping, got {pk[name]!r}")
        check_lstm_kwargs(pk.get("lstm_kwargs"))
        bools = (
            "shared_lstm",
            "enable_critic_lstm",
            "normalize_images",
            "ortho_init",
            "critic_grad_through_core",
        )
        for name in (*bools, "keyed_dropout"):
            if name in pk and not isinstance(pk[name], bool):
                raise ValueError(f"policy_kwargs.{name} must be true or false, got {pk[name]!r}")
        for key, value in (pk.get("optimizer_kwargs") or {}).items():
            numbers = value if isinstance(value, list | tuple) else [value]
            if not all(isinstance(v, int | float) for v in numbers):  # bool is an int: amsgrad=true is fine
                raise ValueError(
                    f"policy_kwargs.optimizer_kwargs.{key} must be a number (or numbers), got {value!r}"
                )
        check_model_size(pk)

    @property
    def recurrent(self) -> bool:
        """True for the recurrent algorithms (RecurrentPPO, ChunkedRecurrentPPO)."""
        return self.algo in RECURRENT_ALGOS

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AgentPreset:
        """From the JSON form; unknown keys and bad values raise ``ValueError`` naming them."""
        kwargs = _from_mapping(cls, data, "preset")
        for name in ("agent", "family", "algo", "policy", "n_envs", "n_timesteps", "ppo"):
            if name not in kwargs:
                raise ValueError(f"preset lacks {name!r}")
        kwargs["ppo"] = PPOSettings.from_dict(kwargs["ppo"])
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the layout run directories and checkpoints store under ``model``)."""
        return {
            "agent": self.agent,
            "family": self.family,
            "algo": self.algo,
            "policy": self.policy,
            "n_envs": self.n_envs,
            "vec_env": self.vec_env,
            "channels_last": self.channels_last,
            "n_timesteps": self.n_timesteps,
            "env": _plain(self.env),
            "policy_kwargs": _plain(self.policy_kwargs),
            "ppo": self.ppo.to_dict(),
            "source": self.source,
        }

    def check_minibatches(self) -> None:
        """``ValueError`` unless ``batch_size`` divides the rollout (checked for new runs only: older runs
        were allowed a truncated last minibatch, and their stored configs must still load)."""
        buffer = self.ppo.n_steps * self.n_envs
        if buffer % self.ppo.batch_size:
            raise ValueError(
                f"ppo.batch_size={self.ppo.batch_size} must divide the rollout size n_steps*n_envs={buffer} "
                f"(else each epoch ends with a minibatch of {buffer % self.ppo.batch_size} samples)"
            )

    def replace(self, **changes: Any) -> AgentPreset:
        """A copy with fields changed, validated again."""
        return dataclasses.replace(self, **changes)


@functools.cache
def policy_parameters(recurrent: bool) -> tuple[str, ...]:
    """Keyword arguments of the policy constructor (ours for RecurrentPPO, SB3's for PPO)."""
    cls = RimsActorCriticPolicy if recurrent else ActorCriticPolicy
    skip = {"self", "observation_space", "action_space", "lr_schedule", "args", "kwargs"}
    return tuple(p for p in inspect.signature(cls.__init__).parameters if p not in skip)


def check_model_size(policy_kwargs: Mapping[str, Any]) -> None:
    """``ValueError`` unless the sizes in ``policy_kwargs`` are bounded, checked before any model is built.

    A config or a foreign checkpoint may come from an untrusted file: ``net_arch=[4]*100000`` or
    ``features_dim=10**7`` would hang or fill the memory while the model is built. Each layer size is at
    most ``MAX_LAYER_SIZE``, each layer list at most ``MAX_LAYERS`` long, every integer inside the nested
    kwargs (core, extractor, LSTM) at most ``MAX_LAYER_SIZE``: far beyond this project's models, and bounded
    so that building the policy on the meta device to measure it (``check_measured_size``) is quick.
    """
    pk = policy_kwargs

    def size(name: str, value: Any, high: int = MAX_LAYER_SIZE) -> int:
        return check_int(f"policy_kwargs.{name}", value, 1, high)

    arch = pk.get("net_arch")
    lists: list[Any] = []
    if arch is not None:
        lists = list(arch.values()) if isinstance(arch, Mapping) else [arch]
        shape_ok = all(isinstance(x, list | tuple) for x in lists) and (
            not isinstance(arch, Mapping) or set(arch) <= {"pi", "vf"}
        )
        if not shape_ok:
            raise ValueError(
                "policy_kwargs.net_arch must be a list of layer sizes or {'pi': [...], 'vf': [...]}, "
                f"got {_short(arch)}"
            )
        for layers in lists:
            if len(layers) > MAX_LAYERS:
                raise ValueError(f"policy_kwargs.net_arch has {len(layers)} layers; at most {MAX_LAYERS}")
            for n in layers:
                size("net_arch", n)
    for name in ("features_extractor_kwargs", "rims_kwargs", "core_kwargs", "lstm_kwargs"):
        for path, value in _integers(pk.get(name), name):
            if value > MAX_LAYER_SIZE:
                raise ValueError(f"policy_kwargs.{path} must be at most {MAX_LAYER_SIZE}, got {value!r}")
    fe_kwargs = pk.get("features_extractor_kwargs")
    if isinstance(fe_kwargs, Mapping) and "features_dim" in fe_kwargs:
        size("features_extractor_kwargs.features_dim", fe_kwargs["features_dim"])
    if pk.get("lstm_hidden_size") is not None:
        size("lstm_hidden_size", pk["lstm_hidden_size"])
    size("n_lstm_layers", pk.get("n_lstm_layers", 1), high=MAX_LAYERS)


def memory_budget() -> int:
    """The bytes one run may take (``check_measured_size``): ``DEFAULT_MEMORY_GIB``, or what
    ``MEMORY_BUDGET_VAR`` says (``--memory-gib`` sets it, so that worker processes see it too)."""
    text = os.environ.get(MEMORY_BUDGET_VAR)
    if text is None or not text.strip():
        return int(DEFAULT_MEMORY_GIB * 2**30)
    return int(check_memory_gib(text, MEMORY_BUDGET_VAR) * 2**30)


def check_memory_gib(value: Any, name: str = "--memory-gib") -> float:
    """A memory budget in GiB: a finite number in (0, ``MAX_MEMORY_GIB``]; ``ValueError`` otherwise."""
    try:
        gib = float(value)
    except (TypeError, ValueError):
        gib = math.nan
    if not 0 < gib <= MAX_MEMORY_GIB:  # NaN fails both comparisons
        raise ValueError(f"{name} must be a number of GiB in (0, {MAX_MEMORY_GIB:g}], got {_short(value)}")
    return gib


def check_lstm_kwargs(lstm_kwargs: Any) -> None:
    """``ValueError`` for ``nn.LSTM`` arguments other than ``LSTM_KWARGS``: the policy sets the sizes and
    layers itself, and ``batch_first``, ``bidirectional`` or ``proj_size`` would build a model whose
    states do not fit the rollout (a RuntimeError in the middle of an episode)."""
    if lstm_kwargs is None:
        return
    if not isinstance(lstm_kwargs, Mapping):
        raise ValueError(f"policy_kwargs.lstm_kwargs must be a mapping, got {_short(lstm_kwargs)}")
    for key, value in lstm_kwargs.items():
        if key not in LSTM_KWARGS:
            raise ValueError(f"policy_kwargs.lstm_kwargs.{key} cannot be set; only {', '.join(LSTM_KWARGS)}")
        if key == "bias" and not isinstance(value, bool):
            raise ValueError(f"policy_kwargs.lstm_kwargs.bias must be true or false, got {value!r}")
        if key == "dropout":
            check_number("policy_kwargs.lstm_kwargs.dropout", value, 0.0, 1.0)


def _integers(value: Any, path: str) -> list[tuple[str, int]]:
    """Every integer inside nested mappings and lists, with its dotted path (bools excluded)."""
    if is_int(value):
        return [(path, value)]
    if isinstance(value, Mapping):
        return [found for k, v in value.items() for found in _integers(v, f"{path}.{k}")]
    if isinstance(value, list | tuple):
        if len(value) > MAX_LAYERS:
            raise ValueError(f"policy_kwargs.{path} has {len(value)} entries; at most {MAX_LAYERS}")
        return [found for v in value for found in _integers(v, path)]
    return []


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _plain(value: Any) -> Any:
    """Deep copy of nested mappings/lists as plain dicts/lists (JSON-ready, no shared references)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
