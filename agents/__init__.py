"""Named agents with presets per environment family.

``rims_ppo``, ``lstm_ppo``, ``tlb_ppo`` and ``assembly_ppo`` are RecurrentPPO with the same policy and a
different recurrent core; ``ppo`` is feed-forward PPO.

``get_preset`` gives a typed ``AgentPreset`` (``agents/presets.yml``), ``apply_overrides`` edits it with
dotted keys (``--set ppo.learning_rate=3e-4``) and validates the result once, and ``build_model`` turns it
into an SB3 model. This package imports only the library (``rims_rl``'s policies and extractors) and SB3.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common import torch_layers
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
from stable_baselines3.common.vec_env import VecEnv, VecTransposeImage
from torch import nn

from rims_rl.agents.config import (
    CHUNKED,
    DEFAULT_MEMORY_GIB,
    MAX_MEMORY_GIB,
    MEMORY_BUDGET_VAR,
    AgentPreset,
    PPOSettings,
    check_memory_gib,
    infer_algo,
    memory_budget,
    policy_parameters,
    resolve_schedule,
)
from rims_rl.agents.presets import AGENTS, FAMILIES, families_of, shipped_presets
from rims_rl.checks import hint
from rims_rl.cores import core_settings, get_core
from rims_rl.extractors import minigrid_policy_kwargs
from rims_rl.policies import POLICIES, RimsActorCriticPolicy
from rims_rl.ppo import DEFAULT_CHUNK_LENGTH, ChunkedRecurrentPPO
from rims_rl.spatial import SpatialCNN

__all__ = [
    "AGENTS",
    "ALGORITHMS",
    "CORE_SEP",
    "check_agent",
    "with_core",
    "FAMILIES",
    "AgentPreset",
    "PPOSettings",
    "apply_overrides",
    "ParameterCount",
    "build_model",
    "check_measured_size",
    "check_memory_gib",
    "memory_budget",
    "DEFAULT_MEMORY_GIB",
    "MAX_MEMORY_GIB",
    "MEMORY_BUDGET_VAR",
    "count_parameters",
    "model_observation_space",
    "get_preset",
    "infer_algo",
    "parse_overrides",
    "resolve_schedule",
    "sb3_policy_name",
]

#: The class of each algorithm an ``AgentPreset`` may name (``ALGOS``), by its name.
ALGORITHMS: dict[str, type[BaseAlgorithm]] = {
    "RecurrentPPO": RecurrentPPO,
    CHUNKED: ChunkedRecurrentPPO,
    "PPO": PPO,
}
_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}
# Nested dicts whose keys are free-form (passed through to a class whose signature we do not know).
_FREE_DICTS = {
    "env",
    "policy_kwargs.features_extractor_kwargs",
    "policy_kwargs.optimizer_kwargs",
    "policy_kwargs.lstm_kwargs",
    "policy_kwargs.core_kwargs",  # checked against the core's own settings by the policy constructor
}

#: Keys whose value is a section of settings: an override sets keys inside it, never all of it at once.
_SECTIONS = {
    "ppo",
    "policy_kwargs",
    "env",
    *(f"policy_kwargs.{name}" for name in ("rims_kwargs", "core_kwargs", "features_extractor_kwargs")),
    *(f"policy_kwargs.{name}" for name in ("lstm_kwargs", "optimizer_kwargs")),
}


#: ``AGENT+CORE`` names agent AGENT with the recurrent core CORE (``train --agent A --core CORE``).
CORE_SEP = "+"


def check_agent(agent: str) -> None:
    """``ValueError`` naming the problem unless ``agent`` is a named agent, or ``AGENT+CORE`` with a
    recurrent agent and a registered core."""
    if not isinstance(agent, str):
        raise ValueError(f"agent must be a name, got {agent!r}")
    base, sep, core = agent.partition(CORE_SEP)
    if base not in AGENTS:
        raise ValueError(f"unknown agent {base!r}{hint(base, AGENTS)}; agents: {AGENTS}")
    if sep:
        get_core(core)  # unknown core: the registry's message, closest names first
        if not any(get_preset_block(base, f).recurrent for f in families_of(base)):
            raise ValueError(f"agent {base!r} is feed-forward: --core needs a recurrent agent")


def get_preset_block(agent: str, family: str) -> AgentPreset:
    """The shipped block ``agent/family`` of presets.yml."""
    return shipped_presets()[(agent, family)]


def with_core(preset: AgentPreset, core: str) -> AgentPreset:
    """``preset`` with recurrent core ``core``: its PPO settings, policy and output width, the core's
    own defaults (the old core's settings are dropped; ``--set core.KEY=VALUE`` sets the new one's)."""
    if not preset.recurrent:
        raise ValueError(f"agent {preset.agent!r} is feed-forward: --core needs a recurrent agent")
    get_core(core)
    data = preset.to_dict()
    pk = {k: v for k, v in data["policy_kwargs"].items() if k not in ("rims_kwargs", "core_kwargs")}
    data["policy_kwargs"] = {**pk, "core": core}
    data["agent"] = f"{preset.agent}{CORE_SEP}{core}"
    return AgentPreset.from_dict(data)


def get_preset(agent: str, family: str) -> AgentPreset:
    """The shipped preset of ``agent`` (or ``AGENT+CORE``) on an environment ``family``."""
    check_agent(agent)
    agent, sep, core = agent.partition(CORE_SEP)
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}{hint(family, FAMILIES)}; families: {FAMILIES}")
    if family not in families_of(agent):
        raise ValueError(
            f"agent {agent!r} has no preset for {family} envs (it reads image observations); it has "
            f"presets for: {', '.join(families_of(agent))}"
        )
    preset = get_preset_block(agent, family)
    return with_core(preset, core) if sep else preset


def _valid_keys(node: Mapping[str, Any], section: str, recurrent: bool) -> tuple[str, ...]:
    """Keys allowed under a dotted ``section`` (the schema, not only what the preset holds)."""
    if section == "":
        return tuple(node)
    if section == "ppo":
        return tuple(PPOSettings.__dataclass_fields__)
    if section == "policy_kwargs":
        return policy_parameters(recurrent)
    if section == "policy_kwargs.rims_kwargs":  # core_kwargs of core="rims", the presets' spelling
        return core_settings(get_core("rims"))
    return tuple(node)


def parse_value(text: str) -> Any:
    """A CLI value: JSON (numbers, lists, dicts, null), true/false/none in any case, else the string.

    Python's JSON reader accepts ``Infinity`` and ``NaN``; they are refused later, where each value is
    checked, with the value's name.
    """
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


def _core_key(preset: AgentPreset, key: str) -> str:
    """``core.KEY`` -> where the preset keeps its core's settings (``rims_kwargs`` in the RIMs presets,
    else ``core_kwargs``), after checking KEY against the core's own settings."""
    if not key.startswith("core."):
        return key
    name = preset.policy_kwargs.get("core") if preset.recurrent else None
    if not isinstance(name, str):
        raise ValueError(f"{key!r}: agent {preset.agent!r} has no recurrent core to set")
    setting = key[len("core.") :]
    valid = core_settings(get_core(name))
    if setting not in valid:
        raise ValueError(
            f"unknown core setting {setting!r} for core {name!r}{hint(setting, valid)}; "
            f"valid: {', '.join(valid) or 'none'}"
        )
    section = "rims_kwargs" if "rims_kwargs" in preset.policy_kwargs else "core_kwargs"
    return f"policy_kwargs.{section}.{setting}"


def apply_overrides(preset: AgentPreset, overrides: Mapping[str, Any]) -> AgentPreset:
    """``preset`` with dotted keys set (``{"ppo.learning_rate": 3e-4}``), validated as a whole once.

    String values are parsed like CLI values. Unknown keys raise ``ValueError`` naming close valid keys;
    keys valid for the algorithm or policy but absent from the preset are added. ``core.KEY`` sets the
    recurrent core's own setting KEY.

    ``ppo.chunk_length`` selects the algorithm unless ``algo`` is set too (``infer_algo``): a number
    selects ``ChunkedRecurrentPPO``, null ``RecurrentPPO``. An explicit ``algo=ChunkedRecurrentPPO`` gets
    the default chunk length if none is set; another explicit algo drops the preset's chunk length.
    """
    config = preset.to_dict()
    for key, raw_value in overrides.items():
        value = parse_value(raw_value) if isinstance(raw_value, str) else raw_value
        key = _core_key(preset, key)
        parts = key.split(".")
        node: dict[str, Any] = config
        for depth, part in enumerate(parts):
            section = ".".join(parts[:depth])
            if section not in _FREE_DICTS:
                valid = _valid_keys(node, section, preset.recurrent)
                if part not in valid and part not in node:
                    raise ValueError(
                        f"unknown config key {key!r}: {part!r} is not valid under "
                        f"{section or 'the top level'}{hint(part, valid)}; valid: {', '.join(valid)}"
                    )
            if depth == len(parts) - 1:
                if key in _SECTIONS and isinstance(value, Mapping):
                    raise ValueError(
                        f"config key {key!r} is a section: a mapping would replace all of it (and reset "
                        f"what it does not name); set its keys one by one, e.g. {key}.KEY=VALUE"
                    )
                node[part] = value
                break
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ValueError(f"config key {key!r}: {'.'.join(parts[: depth + 1])!r} is not a section")
            node = child
    ppo = config["ppo"] if isinstance(config.get("ppo"), dict) else {}
    if "algo" not in overrides:
        config["algo"] = infer_algo(config.get("algo"), ppo.get("chunk_length"))
    elif "ppo.chunk_length" not in overrides:  # the preset's chunk length goes with the algorithm asked for
        ppo["chunk_length"] = DEFAULT_CHUNK_LENGTH if config.get("algo") == CHUNKED else None
    return AgentPreset.from_dict(config)


def sb3_policy_name(observation_space: spaces.Space, recurrent: bool = True) -> str:
    """The SB3/sb3-contrib policy string for an observation space (Dict -> MultiInput, image -> Cnn)."""
    prefix = "MultiInput" if isinstance(observation_space, spaces.Dict) else "Cnn"
    return f"{prefix}{'Lstm' if recurrent else ''}Policy"


def _policy_for(preset: AgentPreset, observation_space: spaces.Space) -> Any:
    name = preset.policy
    if name == "auto":
        if isinstance(observation_space, spaces.Dict):
            kind = "MultiInput"
        elif is_image_space(observation_space, normalized_image=True):
            kind = "Cnn"
        else:
            kind = "Mlp"
        name = f"{kind}RimsPolicy" if preset.recurrent else f"{kind}Policy"
    return POLICIES[name] if preset.recurrent else name


def _resolve_policy_kwargs(pk: Mapping[str, Any], observation_space: spaces.Space) -> dict[str, Any]:
    """Class names -> classes (the MiniGrid extractor picks its Dict variant from the space)."""
    out = json.loads(json.dumps(pk))  # a deep, plain copy
    fe = out.get("features_extractor_class")
    if fe in ("MiniGridCNN", "MiniGridDictExtractor"):
        given = dict(out.get("features_extractor_kwargs") or {})
        unknown = sorted(set(given) - {"features_dim", "film", "one_hot"})
        if unknown:  # they would be dropped below: say so instead
            raise ValueError(
                f"unknown features_extractor_kwargs {unknown} for {fe}; it takes features_dim, film, one_hot"
            )
        for flag in ("film", "one_hot"):
            if not isinstance(given.get(flag, False), bool):
                raise ValueError(
                    f"features_extractor_kwargs.{flag} must be true or false, got {given[flag]!r}"
                )
        out.update(
            minigrid_policy_kwargs(
                observation_space,
                features_dim=given.get("features_dim", 64),
                film=given.get("film", False),
                one_hot=given.get("one_hot", False),
            )
        )
    elif fe == "SpatialCNN":
        given = dict(out.get("features_extractor_kwargs") or {})  # unknown keys: _check_extractor_kwargs
        if (given.get("one_hot") or given.get("channel_max") is not None) and out.get(
            "normalize_images", True
        ):  # SB3 would divide the codes by 255 first: every code rounds to 0, or is scaled twice
            raise ValueError(
                "features_extractor_kwargs.channel_max/one_hot read integer codes, not 0-255 pixels: "
                "set policy_kwargs.normalize_images=false"
            )
        out["features_extractor_class"] = SpatialCNN
    elif isinstance(fe, str):
        out["features_extractor_class"] = getattr(torch_layers, fe)
    act = out.get("activation_fn")
    if isinstance(act, str):
        out["activation_fn"] = _ACTIVATIONS[act.lower()]
    return out


def _check_extractor_kwargs(
    algo: type[BaseAlgorithm], policy: str | type, policy_kwargs: Mapping[str, Any]
) -> None:
    """``ValueError`` naming ``features_extractor_kwargs`` the extractor does not take (e.g. ``one_hot`` on
    a NatureCNN), instead of a ``TypeError`` traceback from deep inside the policy constructor; such keys
    may come from an untrusted checkpoint's metadata."""
    given = policy_kwargs.get("features_extractor_kwargs") or {}
    if not given:
        return
    if not isinstance(given, Mapping):
        raise ValueError(f"features_extractor_kwargs must be a mapping, got {given!r}")
    cls = policy_kwargs.get("features_extractor_class")
    if cls is None:  # the policy's own default: NatureCNN, FlattenExtractor or CombinedExtractor
        policy_cls: Any = algo.policy_aliases.get(policy, policy) if isinstance(policy, str) else policy
        param = inspect.signature(policy_cls).parameters.get("features_extractor_class")
        cls = None if param is None else param.default
    if not isinstance(cls, type):
        return
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    takes = [n for n in params if n != "observation_space"]
    unknown = sorted(set(given) - set(takes))
    if unknown:
        raise ValueError(
            f"unknown features_extractor_kwargs {unknown} for {cls.__name__}; it takes "
            f"{', '.join(takes) or 'none'} (one_hot: MiniGridCNN, MiniGridDictExtractor, SpatialCNN; "
            "film: MiniGridDictExtractor)"
        )


def build_model(
    preset: AgentPreset,
    env: VecEnv,
    *,
    seed: int | None = None,
    device: str = "auto",
    tensorboard_log: str | None = None,
    verbose: int = 0,
    policy: str | type | None = None,
) -> BaseAlgorithm:
    """Build the RecurrentPPO/PPO model ``preset`` describes on ``env``.

    The policy constructor checks its own arguments (``ValueError``/``TypeError`` naming them).
    ``policy`` replaces the preset's policy class, e.g. sb3-contrib's stock ``"CnnLstmPolicy"`` to
    compare against it with every other setting equal; ``core``/``rims_kwargs`` are then dropped
    unless it is one of our RIMs policies.
    """
    policy_kwargs = _resolve_policy_kwargs(preset.policy_kwargs, env.observation_space)
    if policy is None:
        policy = _policy_for(preset, env.observation_space)
    elif (
        not (isinstance(policy, type) and issubclass(policy, RimsActorCriticPolicy))
        and policy not in POLICIES
    ):
        policy_kwargs.pop("core", None)
        policy_kwargs.pop("rims_kwargs", None)
    _check_extractor_kwargs(ALGORITHMS[preset.algo], policy, policy_kwargs)
    check_measured_size(preset, env)
    batch = preset.ppo.n_steps * env.num_envs
    if preset.ppo.batch_size > batch:
        raise ValueError(
            f"ppo.batch_size={preset.ppo.batch_size} exceeds the rollout size n_steps*n_envs={batch}"
        )
    model = ALGORITHMS[preset.algo](
        policy,
        env,
        policy_kwargs=policy_kwargs,
        seed=seed,
        device=device,
        tensorboard_log=tensorboard_log,
        verbose=verbose,
        **preset.ppo.algo_kwargs(),
    )
    if preset.channels_last:
        use_channels_last(model.policy)
    return model


class ParameterCount(NamedTuple):
    """A model's size: its recurrent cores' parameters (actor and critic), all the policy's, and the
    recurrent state one env carries (floats, every layer, actor and critic, ``h`` and ``c``)."""

    core: int
    total: int
    state: int = 0


def model_observation_space(observation_space: spaces.Space) -> spaces.Space:
    """The observation space the policy sees: SB3 transposes channel-last images (``VecTransposeImage``)."""
    if isinstance(observation_space, spaces.Dict):
        return spaces.Dict({k: model_observation_space(v) for k, v in observation_space.spaces.items()})
    if (
        isinstance(observation_space, spaces.Box)
        and is_image_space(observation_space)
        and not is_image_space_channels_first(observation_space)
    ):
        return VecTransposeImage.transpose_space(observation_space)
    return observation_space


def count_parameters(
    preset: AgentPreset, observation_space: spaces.Space, action_space: spaces.Space
) -> ParameterCount:
    """The size of the policy ``preset`` describes on an env's (untransposed) spaces, measured without
    allocating it.

    The policy is built on torch's ``meta`` device (shapes, no storage), so a size is known before any
    memory is spent: a config from an untrusted file asking for a 75 GiB model costs nothing to measure.
    """
    observation_space = model_observation_space(observation_space)
    policy_kwargs = _resolve_policy_kwargs(preset.policy_kwargs, observation_space)
    policy = _policy_for(preset, observation_space)
    algo = ALGORITHMS[preset.algo]
    policy_cls: Any = algo.policy_aliases.get(policy, policy) if isinstance(policy, str) else policy
    # sb3 moves sub-networks to ``policy.device`` while building; on the meta device that must be meta too.
    on_meta = type(policy_cls.__name__, (policy_cls,), {"device": property(lambda _: torch.device("meta"))})
    with torch.device("meta"):
        model = on_meta(observation_space, action_space, lambda _: 0.0, **policy_kwargs)
    core = sum(
        p.numel() for name, p in model.named_parameters() if name.startswith(("lstm_actor.", "lstm_critic."))
    )
    shape = getattr(model, "lstm_hidden_state_shape", (0, 0, 0))  # (layers, 1, state size); none for PPO
    state = 2 * 2 * shape[0] * shape[2]  # (h, c) for the actor and the critic, as the rollout buffer keeps
    return ParameterCount(core, sum(p.numel() for p in model.parameters()), state)


def check_measured_size(preset: AgentPreset, env: VecEnv, budget: int | None = None) -> ParameterCount:
    """``ValueError`` when what the model ``preset`` builds on ``env`` takes, with its training state and
    rollout buffer, more than ``budget`` bytes (default ``memory_budget()``, 1 GiB): measured on the meta
    device (``count_parameters``), not guessed from the settings, before anything is allocated. Every
    way in (``--set``, a checkpoint, a tuned file, a run's config, a foreign checkpoint) builds through
    here."""
    budget = memory_budget() if budget is None else budget
    size = count_parameters(preset, env.observation_space, env.action_space)
    obs = sum(
        int(np.prod(s.shape or ())) for s in _leaf_spaces(model_observation_space(env.observation_space))
    )
    weights = size.total * 16  # float32 weights, gradients and Adam's two moments
    rollout = preset.ppo.n_steps * env.num_envs * (obs + size.state + 8) * 4  # float32, + action, value, ...
    if weights + rollout > budget:
        raise ValueError(
            f"this run would take {_bytes(weights + rollout)}: {size.total / 1e6:,.1f}M parameters "
            f"({_bytes(weights)} with gradients and Adam) and a rollout buffer of {_bytes(rollout)} "
            f"(n_steps={preset.ppo.n_steps} x n_envs={env.num_envs} x {obs + size.state} floats); the "
            f"budget is {_bytes(budget)}: use smaller core or network sizes, lower ppo.n_steps or n_envs, "
            "or raise the budget with --memory-gib"
        )
    return size


def _bytes(n: int) -> str:
    return f"{n / 2**30:,.2f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def _leaf_spaces(space: spaces.Space) -> list[spaces.Space]:
    if isinstance(space, spaces.Dict):
        return [leaf for sub in space.spaces.values() for leaf in _leaf_spaces(sub)]
    return [space]


def use_channels_last(policy: nn.Module) -> None:
    """Run ``policy``'s convolutions in channels-last (NHWC) memory: the same function, faster oneDNN/cuDNN
    kernels. The conv weights are converted in place (the optimizer keeps the same parameters, and a
    checkpoint loads into them: ``copy_`` keeps their layout); each convolution converts its input, which
    costs less than leaving the reorder to the kernel (NatureCNN fwd+bwd, batch 128, one CPU thread: 1.20x
    faster with both converted, 1.11x with the weights only)."""
    for module in policy.modules():
        if isinstance(module, nn.Conv2d):
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)
            module.register_forward_pre_hook(_nhwc_input)


def _nhwc_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
