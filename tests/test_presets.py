"""Every preset value that cites a source equals the source, or is listed here as a departure, with why.

The source values are written out below (facts read from the cited files), so the test needs no network:
- RL Baselines3 Zoo, hyperparams/ppo_lstm.yml, blocks 'atari' and 'CartPoleNoVel-v1'
  (DLR-RM/rl-baselines3-zoo, commit 038ab16); keys the zoo leaves unset take SB3's PPO defaults.
- lcswillems/rl-starter-files, scripts/train.py argparse defaults for PPO (commit 5e309dc), the trainer of
  the torch-ac MiniGrid setting the minigrid presets cite.
- POPGym (proroklab/popgym, PyPI popgym 1.0.7), popgym/baselines/ppo.py: the paper's RLlib PPO config
  (its defaults: 4 workers x 16 envs, bptt_cutoff 1024, 8 minibatches of 1024 steps, 15M steps).
A departure that stops departing fails too, so the list stays true.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from stable_baselines3 import PPO

from rims_rl.agents import AGENTS, families_of, get_preset

_SB3 = {k: p.default for k, p in inspect.signature(PPO.__init__).parameters.items()}
SB3_DEFAULTS = {k: _SB3[k] for k in ("gamma", "gae_lambda", "max_grad_norm", "clip_range_vf", "target_kl")}

SOURCES: dict[str, dict[str, Any]] = {
    "atari": {
        **SB3_DEFAULTS,
        "n_envs": 8,
        "n_steps": 128,
        "n_epochs": 4,
        "batch_size": 256,
        "n_timesteps": 10_000_000,
        "learning_rate": "lin_2.5e-4",
        "clip_range": "lin_0.1",
        "vf_coef": 0.5,
        "ent_coef": 0.01,
        "env.frame_stack": 4,
        "env.terminal_on_life_loss": False,
    },
    "classic": {
        **SB3_DEFAULTS,
        "n_envs": 8,
        "n_timesteps": 100_000,
        "n_steps": 32,
        "batch_size": 256,
        "gae_lambda": 0.8,
        "gamma": 0.98,
        "n_epochs": 20,
        "ent_coef": 0.0,
        "learning_rate": "lin_1e-3",
        "clip_range": "lin_0.2",
    },
    "minigrid": {
        "n_envs": 16,  # --procs
        "n_timesteps": 10_000_000,  # --frames
        "n_steps": 128,  # --frames-per-proc for PPO
        "n_epochs": 4,
        "batch_size": 256,
        "gamma": 0.99,  # --discount
        "learning_rate": 0.001,
        "gae_lambda": 0.95,
        "ent_coef": 0.01,
        "vf_coef": 0.5,
        "max_grad_norm": 0.5,
        "clip_range": 0.2,  # --clip-eps
        "target_kl": None,  # torch-ac has no KL stop
        "policy_kwargs.optimizer_kwargs.eps": 1e-8,  # --optim-eps
    },
    "popgym": {
        "n_envs": 64,  # num_workers 4 x num_envs_per_worker 16
        "n_steps": 1024,  # rollout_fragment_length = bptt_cutoff
        "batch_size": 8192,  # sgd_minibatch_size = num_minibatch 8 x bptt_cutoff
        "n_timesteps": 15_000_000,  # POPGYM_STEPS
        "gamma": 0.99,
        "vf_coef": 1.0,  # vf_loss_coeff
        "policy_kwargs.net_arch": {"pi": [128, 128], "vf": [128, 128]},  # actor/critic: 2 x Linear(., 128)
    },
}

#: (family, key) -> why the preset departs from its source.
DEPARTURES: dict[tuple[str, str], str] = {
    ("minigrid", "n_timesteps"): "1M steps by default: our CPU budget; the source trains 10M frames",
    ("minigrid", "target_kl"): "0.02: rims_ppo collapsed after converging without it (one update, KL ~0.5)",
    ("minigrid", "policy_kwargs.optimizer_kwargs.eps"): "SB3's Adam eps (1e-5) is kept for every agent",
    ("popgym", "n_envs"): "8 envs: a 2-core CPU, not 4 workers x 16",
    ("popgym", "n_steps"): "128 steps per env (whole 1-deck episodes fit); 1024 x 64 per rollout is too big",
    ("popgym", "batch_size"): "sb3-contrib RecurrentPPO's 128: minibatches of 8192 would be one per rollout",
    ("popgym", "n_timesteps"): "the learnability search's budget (docs/results/learnability.md), not 15M",
}


#: What a value left unset in a preset means (the library's default it falls back to).
EFFECTIVE_DEFAULTS: dict[str, Any] = {"policy_kwargs.optimizer_kwargs.eps": 1e-5}  # SB3 policies' Adam eps


def _value(preset: dict[str, Any], key: str) -> Any:
    """A preset value by the source's name: PPO keys under ``ppo``, dotted keys as paths; unset values
    are their effective defaults, so a departure is a real difference, not a missing key."""
    if "." in key:
        node: Any = preset
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return EFFECTIVE_DEFAULTS.get(key) if node is None else node
    return preset[key] if key in preset else preset["ppo"][key]


@pytest.mark.parametrize(
    ("agent", "family"), [(a, f) for a in AGENTS for f in sorted(SOURCES) if f in families_of(a)]
)
def test_preset_values_equal_their_source_or_are_listed_departures(agent: str, family: str) -> None:
    preset = get_preset(agent, family).to_dict()
    for key, expected in SOURCES[family].items():
        actual = _value(preset, key)
        if (family, key) in DEPARTURES:
            assert actual != expected, f"{family}.{key} no longer departs from its source: drop it"
        else:
            assert actual == expected, f"{agent}/{family}: {key}={actual!r}, source says {expected!r}"


def test_each_family_cites_its_source() -> None:
    cited = {
        "atari": "ppo_lstm.yml 'atari'",
        "classic": "'CartPoleNoVel-v1'",
        "minigrid": "rl-starter-files",
        "popgym": "popgym/baselines/ppo.py",
    }
    for family, phrase in cited.items():
        for agent in (a for a in AGENTS if family in families_of(a)):
            assert phrase in get_preset(agent, family).source
