"""The run config: what one training run is, as a typed record stored as ``config.json``.

A ``RunConfig`` holds the agent's ``AgentPreset`` with the run's own values applied (``n_envs``, the
budget, ``--set`` overrides), the env, the seed and the device, each value once. ``resolve_config`` builds
it from what the user typed and checks every value before anything is built or written; its errors are
``UserError``. ``RunConfig.from_dict`` also reads the older layouts (top-level ``timesteps``/``n_envs``
beside the preset; ``algo: RecurrentPPO`` with a ``ppo.chunk_length``, from before ``algo`` named the
chunked algorithm), so checkpoints written before this record existed still load.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from rims_rl.agents import AgentPreset, apply_overrides, get_preset, infer_algo, parse_overrides
from rims_rl.agents.config import DEFAULT_MEMORY_GIB as DEFAULT_MEMORY_GIB  # re-exported for the CLI
from rims_rl.agents.config import MAX_TIMESTEPS, check_memory_gib
from rims_rl.agents.config import MEMORY_BUDGET_VAR as MEMORY_BUDGET_VAR
from rims_rl.app.errors import UserError, user_input
from rims_rl.checks import check_int, check_positive
from rims_rl.envs import EnvFamily, EnvSpec, get_suite
from rims_rl.envs.make import as_spec, check_spec_kwargs

DEFAULT_N_CHECKPOINTS = 10  # checkpoints per run when checkpoint_every is not given
DEVICES = ("auto", "cpu", "cuda")

#: numpy's seeds are 32-bit; a larger one would fail inside the first env reset.
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class EnvRef:
    """The env a run trains on: a suite's train spec or a bare id, with the spec's own kwargs."""

    name: str
    """Label of the env in results (a suite's spec name, or the id)."""
    env_id: str
    """Gymnasium id."""
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    """The spec's own keyword arguments (the preset's ``env`` settings are merged under them)."""
    family: EnvFamily | None = field(default=None, compare=False, repr=False)
    """The id's env family when already resolved (not stored: ``config.json`` names the id, and a config
    read back resolves it again when it builds its spec)."""


@dataclass(frozen=True)
class RunConfig:
    """One training run, fully resolved; ``to_dict`` is ``config.json``."""

    model: AgentPreset
    """The agent preset with the run's n_envs, budget (``n_timesteps``) and overrides applied."""
    env: EnvRef
    """What it trains on."""
    seed: int
    """Seed of the envs, the policy initialisation and sampling."""
    timesteps_requested: int
    """The budget asked for; ``model.n_timesteps`` is it rounded up to whole rollouts."""
    checkpoint_every: int
    """Environment steps between checkpoints."""
    suite: str | None = None
    """The suite whose train env this is, if any."""
    device: str = "auto"
    """Torch device: auto, cpu, cuda or cuda:N."""
    overrides: Mapping[str, Any] = field(default_factory=dict)
    """The ``--set`` overrides as given (already applied to ``model``; kept to tell runs apart)."""
    observation_space: Mapping[str, Any] | None = None
    """The training env's observation space (``describe_space``), set when the run starts."""
    action_space: Mapping[str, Any] | None = None
    """The training env's action space, likewise."""
    created: str | None = None
    """When the run directory was created."""
    command: Sequence[str] = ()
    """The command line that created the run."""
    versions: Mapping[str, str] = field(default_factory=dict)
    """Versions of Python and the libraries that trained it."""

    @property
    def agent(self) -> str:
        """The agent's name."""
        return self.model.agent

    @property
    def n_envs(self) -> int:
        """Parallel training envs."""
        return self.model.n_envs

    @property
    def timesteps(self) -> int:
        """The training budget in env steps (a whole number of rollouts)."""
        return self.model.n_timesteps

    @property
    def rollout_size(self) -> int:
        """Env steps per rollout, ``n_steps * n_envs``."""
        return self.model.ppo.n_steps * self.model.n_envs

    def env_spec(self) -> EnvSpec:
        """The training env as an ``EnvSpec``: the preset's env settings under the spec's own kwargs."""
        kwargs = {**self.model.env, **self.env.kwargs}
        if self.env.family is None:
            return EnvSpec(self.env.name, self.env.env_id, kwargs)
        return EnvSpec(self.env.name, self.env.env_id, kwargs, family=self.env.family)

    def with_device(self, device: str) -> RunConfig:
        """The same run on another device (a resumed run may move)."""
        with user_input():
            _check_device(device, here=True)
        return replace(self, device=device)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written as ``config.json`` and inside checkpoints."""
        return {
            "env": {"name": self.env.name, "env_id": self.env.env_id, "kwargs": dict(self.env.kwargs)},
            "suite": self.suite,
            "seed": self.seed,
            "timesteps_requested": self.timesteps_requested,
            "checkpoint_every": self.checkpoint_every,
            "device": self.device,
            "overrides": dict(self.overrides),
            "model": self.model.to_dict(),
            "observation_space": self.observation_space,
            "action_space": self.action_space,
            "created": self.created,
            "command": list(self.command),
            "versions": dict(self.versions),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """From ``config.json`` (untrusted: every field is checked); ``ValueError`` names a bad one."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a run config must be a JSON object, got {type(data).__name__}")
        model = data.get("model")
        env = data.get("env")
        if not isinstance(model, Mapping) or not isinstance(env, Mapping):
            raise ValueError("a run config needs 'model' and 'env' objects")
        model = dict(model)
        if "timesteps" in data:  # the layout before RunConfig: run values beside the preset's defaults
            model.update(n_timesteps=data["timesteps"], n_envs=data.get("n_envs", model.get("n_envs")))
            model["vec_env"] = data.get("vec_env", model.get("vec_env"))
        if model.get("algo") in (None, "RecurrentPPO"):  # before algo named the chunked algorithm
            ppo = model.get("ppo")
            chunks = ppo.get("chunk_length") if isinstance(ppo, Mapping) else None
            model = {**model, "algo": infer_algo(model.get("algo"), chunks)} if chunks is not None else model
        preset = AgentPreset.from_dict(model)
        name, env_id, kwargs = env.get("name"), env.get("env_id"), env.get("kwargs", {})
        if not isinstance(name, str) or not isinstance(env_id, str) or not isinstance(kwargs, Mapping):
            raise ValueError(f"env must hold a name, an env_id and kwargs, got {dict(env)!r}")
        seed = data.get("seed", 0)
        requested = data.get("timesteps_requested", preset.n_timesteps)
        every = data.get("checkpoint_every", preset.n_timesteps)
        for what, value, low, high in (
            ("seed", seed, 0, MAX_SEED),
            ("timesteps_requested", requested, 1, MAX_TIMESTEPS),
            ("checkpoint_every", every, 1, MAX_TIMESTEPS),
        ):
            check_int(what, value, low, high)
        suite, device = data.get("suite"), data.get("device", "auto")
        if suite is not None and not isinstance(suite, str):
            raise ValueError(f"suite must be a name or null, got {suite!r}")
        _check_device(device)
        overrides, command, versions = (
            data.get("overrides") or {},
            data.get("command") or (),
            data.get("versions") or {},
        )
        if not isinstance(overrides, Mapping) or not all(isinstance(k, str) for k in overrides):
            raise ValueError(f"overrides must be a mapping of --set keys, got {overrides!r}")
        if not isinstance(command, list | tuple) or not all(isinstance(a, str) for a in command):
            raise ValueError(f"command must be a list of strings, got {command!r}")
        if not isinstance(versions, Mapping):
            raise ValueError(f"versions must be a mapping, got {versions!r}")
        return cls(
            model=preset,
            env=EnvRef(name, env_id, dict(kwargs)),
            seed=seed,
            timesteps_requested=requested,
            checkpoint_every=every,
            suite=suite,
            device=device,
            overrides=dict(overrides),
            observation_space=data.get("observation_space"),
            action_space=data.get("action_space"),
            created=data.get("created"),
            command=tuple(command),
            versions=dict(versions),
        )


def _check_device(device: Any, here: bool = False) -> None:
    """A valid device name; with ``here``, also one this machine has (a stored config may name another)."""
    if not isinstance(device, str) or (device not in DEVICES and not device.startswith("cuda:")):
        raise ValueError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {device!r}")
    if here and device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here; use cpu or auto")


def resolve_env(env_id: str | None, suite: str | None) -> tuple[EnvSpec, str | None]:
    """The ``EnvSpec`` to train on (an id, or a suite's train spec) and the suite name, validated."""
    if (env_id is None) == (suite is None):
        raise UserError("give exactly one of --env ID and --suite NAME")
    with user_input():
        if suite is not None:
            return get_suite(suite).train, suite
        spec = as_spec(env_id)  # type: ignore[arg-type]  # validates the id, listing close valid ids
        check_spec_kwargs(spec)
        return spec, None


def resolve_config(
    agent: str,
    env_id: str | None = None,
    *,
    suite: str | None = None,
    timesteps: int | None = None,
    seed: int = 0,
    n_envs: int | None = None,
    device: str = "auto",
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    checkpoint_every: int | None = None,
) -> RunConfig:
    """The run config for what the user asked, every value checked; ``UserError`` before anything is built.

    ``timesteps`` is rounded up to a whole number of rollouts (``n_steps * n_envs``) so that a run, and
    a resumed run, ends exactly on its budget.
    """
    spec, suite_name = resolve_env(env_id, suite)
    with user_input():
        preset = get_preset(agent, spec.family.preset_family)
        given: dict[str, Any] = {}
        if overrides:
            given = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(list(overrides))
            preset = apply_overrides(preset, given)
        if n_envs is not None:
            preset = preset.replace(n_envs=n_envs)
        preset.check_minibatches()
        _check_device(device, here=True)
        check_int("seed", seed, 0, MAX_SEED)
        requested = preset.n_timesteps if timesteps is None else timesteps
        check_int("timesteps", requested, 1, MAX_TIMESTEPS)
        rollout = preset.ppo.n_steps * preset.n_envs
        preset = preset.replace(n_timesteps=-(-requested // rollout) * rollout)  # integer ceil: exact
        if checkpoint_every is None:
            checkpoint_every = -(-preset.n_timesteps // (DEFAULT_N_CHECKPOINTS * rollout)) * rollout
        check_positive("checkpoint_every", checkpoint_every)
        config = RunConfig(
            model=preset,
            env=EnvRef(spec.name, spec.env_id, dict(spec.kwargs), family=spec.family),
            seed=seed,
            timesteps_requested=requested,
            checkpoint_every=checkpoint_every,
            suite=suite_name,
            device=device,
            overrides=given,
        )
        check_spec_kwargs(config.env_spec())  # e.g. --set env.mode=99 on Atari
    return config


def set_memory_budget(gib: float | None) -> None:
    """``--memory-gib``: the budget every model of this command is measured against
    (``agents.check_measured_size``), through the environment so that worker processes and Ray tasks
    see it too; ``None`` keeps the default (``DEFAULT_MEMORY_GIB``) or the environment's."""
    if gib is None:
        return
    with user_input():
        os.environ[MEMORY_BUDGET_VAR] = repr(check_memory_gib(gib))

