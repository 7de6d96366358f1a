"""Named agents (``rims_ppo``, ``lstm_ppo``, feed-forward ``ppo``) with presets per environment family.

A config is a JSON-serialisable dict (see ``get_preset``); ``apply_overrides`` edits it with dotted
keys, ``validate_config`` rejects bad values before training, ``build_model`` turns it into an SB3
model. Schedules are strings (``"lin_2.5e-4"``) and classes are names, so configs can be saved as JSON
next to a run and rebuilt exactly.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import json
import re
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import VecEnv
from torch import nn

from agents.presets import AGENTS, FAMILIES, RIMS_DEFAULTS, build_preset
from rims_rl.policies import POLICIES, RIMS_KWARGS, RimsActorCriticPolicy, resolve_core_config

__all__ = [
    "AGENTS",
    "FAMILIES",
    "RIMS_DEFAULTS",
    "apply_overrides",
    "build_model",
    "get_preset",
    "parse_overrides",
    "resolve_schedule",
    "validate_config",
]

_ALGOS: dict[str, type[BaseAlgorithm]] = {"RecurrentPPO": RecurrentPPO, "PPO": PPO}
_FF_POLICIES = ("MlpPolicy", "CnnPolicy", "MultiInputPolicy")
_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}
_EXTRACTORS = ("FlattenExtractor", "NatureCNN", "CombinedExtractor", "MiniGridCNN", "MiniGridDictExtractor")
# Arguments that build_model sets itself, not through the "ppo" section.
_ALGO_RESERVED = {
    "self",
    "policy",
    "env",
    "policy_kwargs",
    "seed",
    "device",
    "tensorboard_log",
    "verbose",
    "_init_setup_model",
}
# Nested dicts whose keys are free-form (passed through to a class we do not know the signature of).
_FREE_DICTS = {
    "env",
    "policy_kwargs.features_extractor_kwargs",
    "policy_kwargs.optimizer_kwargs",
    "policy_kwargs.lstm_kwargs",
}
_SCHEDULE_RE = re.compile(r"^lin_([0-9.eE+-]+)$")


def get_preset(agent: str, family: str) -> dict[str, Any]:
    """The full hyperparameters of ``agent`` on an environment ``family`` (a fresh, editable dict)."""
    if agent not in AGENTS:
        raise ValueError(f"unknown agent {agent!r}{_hint(agent, AGENTS)}; agents: {AGENTS}")
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}{_hint(family, FAMILIES)}; families: {FAMILIES}")
    return build_preset(agent, family)


def _hint(name: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def _params(fn: Callable[..., Any], drop: set[str]) -> tuple[str, ...]:
    return tuple(p for p in inspect.signature(fn).parameters if p not in drop and p not in ("args", "kwargs"))


def _valid_keys(config: dict[str, Any], section: str) -> tuple[str, ...]:
    """Keys allowed under a dotted ``section`` of ``config`` (schema, not just what the preset holds)."""
    recurrent = config.get("algo", "RecurrentPPO") == "RecurrentPPO"
    if section == "":
        return tuple(config)
    if section == "ppo":
        return _params(_ALGOS["RecurrentPPO" if recurrent else "PPO"].__init__, _ALGO_RESERVED)
    if section == "policy_kwargs":
        cls = RimsActorCriticPolicy if recurrent else ActorCriticPolicy
        return _params(cls.__init__, {"self", "observation_space", "action_space", "lr_schedule"})
    if section == "policy_kwargs.rims_kwargs":
        return RIMS_KWARGS
    raise KeyError(section)


def parse_value(text: str) -> Any:
    """A CLI value: JSON (numbers, lists, dicts, null), true/false/none in any case, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["ppo.learning_rate=3e-4", "policy_kwargs.rims_kwargs.k=5"]`` -> dotted-key dict of values."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} must look like 'section.key=value'")
        out[key.strip()] = parse_value(value)
    return out


def apply_overrides(preset: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``preset`` with dotted keys set (``{"ppo.learning_rate": 3e-4}``); string values are parsed.

    Keys may also be ``"key=value"`` strings with value ``None``. Unknown keys raise ``ValueError``
    naming close valid keys; keys valid for the algorithm or policy but absent from the preset are added.
    """
    config = copy.deepcopy(preset)
    for raw_key, raw_value in overrides.items():
        key, value = raw_key, raw_value
        if "=" in raw_key and raw_value is None:
            key, value = next(iter(parse_overrides([raw_key]).items()))
        elif isinstance(raw_value, str):
            value = parse_value(raw_value)
        parts = key.split(".")
        node = config
        for depth, part in enumerate(parts):
            section = ".".join(parts[:depth])
            last = depth == len(parts) - 1
            if section not in _FREE_DICTS:  # free-form dicts take any key
                try:
                    valid: tuple[str, ...] = _valid_keys(config, section)
                except KeyError:
                    valid = tuple(node)
                if part not in valid and part not in node:
                    raise ValueError(
                        f"unknown config key {key!r}: {part!r} is not valid under "
                        f"{section or 'the top level'}{_hint(part, valid)}; valid: {', '.join(valid)}"
                    )
            if last:
                node[part] = value
            else:
                child = node.get(part)
                if child is None:
                    child = node[part] = {}
                if not isinstance(child, dict):
                    raise ValueError(f"config key {key!r}: {'.'.join(parts[: depth + 1])!r} is not a section")
                node = child
    return config


def resolve_schedule(value: Any, name: str = "value") -> float | Callable[[float], float]:
    """``"lin_2.5e-4"`` -> linear decay from 2.5e-4 to 0 over training; numbers pass through."""
    if isinstance(value, str):
        match = _SCHEDULE_RE.match(value.strip())
        if not match:
            raise ValueError(f"{name}={value!r}: expected a number or 'lin_<start>' (e.g. 'lin_2.5e-4')")
        start = float(match.group(1))
        if start <= 0:
            raise ValueError(f"{name}={value!r}: the schedule must start above 0")
        return LinearSchedule(start, 0.0, 1.0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number or 'lin_<start>', got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return float(value)


def _check_int(ppo: dict[str, Any], name: str, minimum: int) -> None:
    value = ppo.get(name)
    if value is None and name == "batch_size":
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"ppo.{name} must be an integer >= {minimum}, got {value!r}")


def _check_float(ppo: dict[str, Any], name: str, low: float, high: float | None = None) -> None:
    if name not in ppo or ppo[name] is None and name == "max_grad_norm":
        return
    value = ppo[name]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"ppo.{name} must be a number {bound}, got {value!r}")


def validate_config(config: dict[str, Any], n_envs: int) -> None:
    """Raise ``ValueError`` for hyperparameters that would fail (or silently misbehave) in training.

    Warns, like SB3, when ``n_steps * n_envs`` is not a multiple of ``batch_size`` (a truncated minibatch).
    """
    for key in ("algo", "policy", "policy_kwargs", "ppo"):
        if key not in config:
            raise ValueError(f"config lacks {key!r}")
    algo = config["algo"]
    if algo not in _ALGOS:
        raise ValueError(f"algo must be one of {tuple(_ALGOS)}, got {algo!r}")
    valid_policies = ("auto", *(POLICIES if algo == "RecurrentPPO" else _FF_POLICIES))
    if config["policy"] not in valid_policies:
        raise ValueError(f"policy for {algo} must be one of {valid_policies}, got {config['policy']!r}")
    if not isinstance(n_envs, int) or n_envs < 1:
        raise ValueError(f"n_envs must be a positive integer, got {n_envs!r}")
    ppo = config["ppo"]
    unknown = set(ppo) - set(_valid_keys(config, "ppo"))
    if unknown:
        name = sorted(unknown)[0]
        raise ValueError(f"unknown ppo key {name!r}{_hint(name, _valid_keys(config, 'ppo'))}")
    resolve_schedule(ppo.get("learning_rate", 3e-4), "ppo.learning_rate")
    resolve_schedule(ppo.get("clip_range", 0.2), "ppo.clip_range")
    if ppo.get("clip_range_vf") is not None:
        resolve_schedule(ppo["clip_range_vf"], "ppo.clip_range_vf")
    _check_int(ppo, "n_steps", 1)
    _check_int(ppo, "batch_size", 2)
    _check_int(ppo, "n_epochs", 1)
    _check_float(ppo, "gamma", 0.0, 1.0)
    _check_float(ppo, "gae_lambda", 0.0, 1.0)
    _check_float(ppo, "ent_coef", 0.0)
    _check_float(ppo, "vf_coef", 0.0)
    _check_float(ppo, "max_grad_norm", 0.0)
    if ppo.get("target_kl") is not None:
        _check_float(ppo, "target_kl", 0.0)
    buffer = ppo["n_steps"] * n_envs
    if ppo.get("normalize_advantage", True) and buffer < 2:
        raise ValueError("n_steps * n_envs must be > 1 when normalize_advantage=True (SB3 requirement)")
    batch = ppo.get("batch_size")
    if batch is not None:
        if batch > buffer:
            raise ValueError(f"ppo.batch_size={batch} exceeds the rollout size n_steps*n_envs={buffer}")
        if buffer % batch:
            warnings.warn(
                f"n_steps*n_envs={buffer} is not a multiple of batch_size={batch}: each epoch ends with a "
                f"minibatch of {buffer % batch} samples",
                stacklevel=2,
            )
    pk = config["policy_kwargs"]
    if algo == "RecurrentPPO":
        resolve_core_config(
            pk.get("core", "rims"),
            pk.get("lstm_hidden_size"),
            pk.get("rims_kwargs"),
            pk.get("n_lstm_layers", 1),
        )
        if pk.get("shared_lstm") and pk.get("enable_critic_lstm", True):
            raise ValueError("policy_kwargs: choose one of shared_lstm and enable_critic_lstm")
    else:
        extra = {
            "core",
            "rims_kwargs",
            "lstm_hidden_size",
            "n_lstm_layers",
            "shared_lstm",
            "enable_critic_lstm",
        }
        bad = extra & set(pk)
        if bad:
            raise ValueError(f"policy_kwargs {sorted(bad)} need algo='RecurrentPPO' (a recurrent policy)")
    fe = pk.get("features_extractor_class")
    if isinstance(fe, str) and fe not in _EXTRACTORS:
        raise ValueError(f"unknown features_extractor_class {fe!r}{_hint(fe, _EXTRACTORS)}")
    act = pk.get("activation_fn")
    if isinstance(act, str) and act.lower() not in _ACTIVATIONS:
        raise ValueError(f"unknown activation_fn {act!r}; one of {tuple(_ACTIVATIONS)}")


def _policy_for(config: dict[str, Any], observation_space: spaces.Space) -> Any:
    name = config["policy"]
    if name == "auto":
        if isinstance(observation_space, spaces.Dict):
            kind = "MultiInput"
        elif is_image_space(observation_space, normalized_image=True):
            kind = "Cnn"
        else:
            kind = "Mlp"
        name = f"{kind}RimsPolicy" if config["algo"] == "RecurrentPPO" else f"{kind}Policy"
    return POLICIES[name] if config["algo"] == "RecurrentPPO" else name


def _resolve_policy_kwargs(pk: dict[str, Any], observation_space: spaces.Space) -> dict[str, Any]:
    pk = copy.deepcopy(pk)
    fe = pk.get("features_extractor_class")
    if fe in ("MiniGridCNN", "MiniGridDictExtractor"):
        from envs.minigrid_features import minigrid_policy_kwargs

        dim = (pk.get("features_extractor_kwargs") or {}).get("features_dim", 64)
        pk.update(minigrid_policy_kwargs(observation_space, features_dim=dim))
    elif isinstance(fe, str):
        from stable_baselines3.common import torch_layers

        pk["features_extractor_class"] = getattr(torch_layers, fe)
    act = pk.get("activation_fn")
    if isinstance(act, str):
        pk["activation_fn"] = _ACTIVATIONS[act.lower()]
    return pk


def build_model(
    config: dict[str, Any],
    env: VecEnv,
    *,
    seed: int | None = None,
    device: str = "auto",
    tensorboard_log: str | None = None,
    verbose: int = 0,
    policy: str | type | None = None,
) -> BaseAlgorithm:
    """Build the RecurrentPPO/PPO model a resolved config describes (validated first).

    ``policy`` replaces the config's policy class, e.g. sb3-contrib's stock ``"CnnLstmPolicy"`` to
    compare against it with every other setting equal; ``core``/``rims_kwargs`` are then dropped
    unless it is one of our RIMs policies.
    """
    validate_config(config, env.num_envs)
    policy_kwargs = _resolve_policy_kwargs(config["policy_kwargs"], env.observation_space)
    if policy is None:
        policy = _policy_for(config, env.observation_space)
    elif (
        not (isinstance(policy, type) and issubclass(policy, RimsActorCriticPolicy))
        and policy not in POLICIES
    ):
        policy_kwargs.pop("core", None)
        policy_kwargs.pop("rims_kwargs", None)
    ppo = dict(config["ppo"])
    ppo["learning_rate"] = resolve_schedule(ppo.get("learning_rate", 3e-4), "ppo.learning_rate")
    ppo["clip_range"] = resolve_schedule(ppo.get("clip_range", 0.2), "ppo.clip_range")
    if ppo.get("clip_range_vf") is not None:
        ppo["clip_range_vf"] = resolve_schedule(ppo["clip_range_vf"], "ppo.clip_range_vf")
    algo = _ALGOS[config["algo"]]
    return algo(
        policy,
        env,
        policy_kwargs=policy_kwargs,
        seed=seed,
        device=device,
        tensorboard_log=tensorboard_log,
        verbose=verbose,
        **ppo,
    )
