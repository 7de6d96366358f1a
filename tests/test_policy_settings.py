"""Policy settings with any core: core_kwargs, widths, n_lstm_layers, lstm_kwargs, errors, statistics.

A true drop-in: every core takes what sb3-contrib's MlpLstmPolicy takes, and refuses what it refuses with
the same exception type; ``core="lstm"`` is MlpLstmPolicy, errors included.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.ppo_recurrent.policies import MlpLstmPolicy
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecEnv

from rims_rl.callbacks import CoreStatsCallback
from rims_rl.cores import core_names, get_core
from rims_rl.cores.stack import StackedCore
from rims_rl.policies import MlpRimsPolicy, resolve_core_config

OBS = spaces.Box(-1.0, 1.0, (5,), np.float32)
ACT = spaces.Discrete(3)


def lr(_: float) -> float:
    return 1e-3


@pytest.mark.parametrize("core, kwargs", [("tlb", {"chunk_size": 3}), ("assembly", {"n_modules": 4})])
def test_policy_builds_the_core_with_core_kwargs(core: str, kwargs: dict) -> None:
    policy = MlpRimsPolicy(OBS, ACT, lr, core=core, lstm_hidden_size=32, core_kwargs=kwargs)
    for module in (policy.lstm_actor, policy.lstm_critic):
        assert isinstance(module, get_core(core)) and module.output_size == 32
    params = policy._get_constructor_parameters()
    assert params["core"] == core and params["core_kwargs"] == kwargs
    assert {id(p) for g in policy.optimizer.param_groups for p in g["params"]} == {
        id(p) for p in policy.parameters()
    }


def test_default_widths_come_from_the_core() -> None:
    assert resolve_core_config("lstm", None, None).hidden_size == 256  # sb3-contrib's default
    assert resolve_core_config("rims", None, None).hidden_size == 6 * 32
    assert resolve_core_config("rims", None, {"n_units": 4, "unit_size": 8}).hidden_size == 32
    assert resolve_core_config("assembly", None, None, core_kwargs={"n_modules": 4}).hidden_size == 4 * 32


@pytest.mark.parametrize("width, units, k", [(4, 4, 3), (7, 1, 1), (10, 5, 3), (192, 6, 4)])
def test_rims_picks_units_that_divide_the_width(width: int, units: int, k: int) -> None:
    kwargs = resolve_core_config("rims", width, None).kwargs
    assert (kwargs.get("n_units", 6), kwargs.get("k", 4)) == (units, k)


@pytest.mark.parametrize("core", core_names())
def test_n_lstm_layers_stacks_any_core(core: str) -> None:
    policy = MlpRimsPolicy(OBS, ACT, lr, core=core, lstm_hidden_size=12, n_lstm_layers=3)
    assert policy.lstm_hidden_state_shape[0] == 3 and policy.lstm_actor.num_layers == 3
    if not get_core(core).native_layers:
        assert isinstance(policy.lstm_actor, StackedCore) and len(policy.lstm_actor.layers) == 3
    x = th.randn(4, 2, 5)
    out, (h, c) = policy.lstm_actor(x, policy.lstm_actor.initial_state(2))
    assert out.shape == (4, 2, 12) and h.shape == (3, 2, policy.lstm_hidden_state_shape[2])


def test_lstm_kwargs_dropout_maps_to_dropout_between_stacked_layers() -> None:
    policy = MlpRimsPolicy(OBS, ACT, lr, core="tlb", n_lstm_layers=2, lstm_kwargs={"dropout": 0.25})
    assert policy.lstm_actor.dropout.p == 0.25
    noop = {"bias": True, "batch_first": False, "bidirectional": False}
    MlpRimsPolicy(OBS, ACT, lr, core="rims", lstm_kwargs=noop)  # nn.LSTM's defaults: nothing to map


@pytest.mark.parametrize(
    "lstm_kwargs, name", [({"proj_size": 4}, "proj_size"), ({"bidirectional": True}, "bidirectional")]
)
def test_lstm_kwargs_without_an_equivalent_are_refused_by_name(lstm_kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"{name}=.* has no equivalent in core='rims'"):
        MlpRimsPolicy(OBS, ACT, lr, core="rims", lstm_kwargs=lstm_kwargs)


@pytest.mark.parametrize("core", core_names())
@pytest.mark.parametrize(
    "kwargs",
    [
        {"shared_lstm": True, "enable_critic_lstm": True},
        {"shared_lstm": True, "enable_critic_lstm": False, "share_features_extractor": False},
        {"lstm_hidden_size": 0},
        {"lstm_hidden_size": "64"},
        {"n_lstm_layers": 0},
    ],
)
# sb3-contrib's own MlpLstmPolicy builds zero-width layers (a torch warning) before it refuses width 0
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op:UserWarning")
def test_settings_sb3_contrib_refuses_raise_its_exception_type(core: str, kwargs: dict) -> None:
    """The same exception type as MlpLstmPolicy (an assert, nn.LSTM's TypeError or ValueError), and
    still a one-line ValueError for our callers."""
    with pytest.raises(Exception) as stock:
        MlpLstmPolicy(OBS, ACT, lr, **kwargs)
    with pytest.raises(type(stock.value)) as ours:
        MlpRimsPolicy(OBS, ACT, lr, core=core, **kwargs)
    assert isinstance(ours.value, ValueError) and "\n" not in str(ours.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"core": "transformer"}, "unknown core 'transformer'"),
        ({"core": "tbl"}, "did you mean 'tlb'"),
        ({"core": "lstm", "rims_kwargs": {"k": 2}}, "only used with core='rims'"),
        ({"core": "tlb", "core_kwargs": {"chunk_sise": 4}}, "did you mean 'chunk_size'"),
        ({"core": "rims", "rims_kwargs": {"k": 2}, "core_kwargs": {"k": 2}}, "not both"),
        ({"core": "rims", "rims_kwargs": {"n_units": 6}, "lstm_hidden_size": 100}, "divisible by n_units=6"),
        (
            {"core": "rims", "rims_kwargs": {"n_units": 4, "unit_size": 8}, "lstm_hidden_size": 64},
            "disagrees",
        ),
        (
            {"core": "assembly", "lstm_hidden_size": 30, "core_kwargs": {"n_modules": 4}},
            "divisible by n_modules",
        ),
        ({"core": "assembly", "core_kwargs": []}, "core_kwargs must be a dict"),
        ({"core": "gru", "lstm_kwargs": {"proj_size": 2}}, "no equivalent in core='gru'"),
        ({"core": "tlb", "keyed_dropout": True}, "keyed_dropout needs"),
    ],
)
def test_bad_settings_name_the_setting(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        MlpRimsPolicy(OBS, ACT, lr, **kwargs)
    assert "\n" not in str(err.value)


def test_core_lstm_is_mlp_lstm_policy_for_any_lstm_kwargs() -> None:
    for lstm_kwargs in ({"dropout": 0.3}, {"bias": False}):
        th.manual_seed(0)
        stock = MlpLstmPolicy(OBS, ACT, lr, n_lstm_layers=2, lstm_kwargs=lstm_kwargs)
        th.manual_seed(0)
        ours = MlpRimsPolicy(OBS, ACT, lr, core="lstm", n_lstm_layers=2, lstm_kwargs=lstm_kwargs)
        assert list(stock.state_dict()) == list(ours.state_dict())
        for a, b in zip(stock.state_dict().values(), ours.state_dict().values(), strict=True):
            assert th.equal(a, b)


@pytest.mark.parametrize("core", core_names())
def test_stats_callback_logs_what_the_core_reports(tmp_path, core: str, cue_env: VecEnv) -> None:
    kwargs = {"core": core, "lstm_hidden_size": 12}
    model = RecurrentPPO(
        MlpRimsPolicy, cue_env, n_steps=16, batch_size=32, n_epochs=1, seed=0, policy_kwargs=kwargs
    )
    model.set_logger(configure(str(tmp_path), ["csv"]))
    with th.no_grad():  # what one rollout step does, to learn which keys the core reports
        model.policy.lstm_actor(th.zeros(1, 2, model.policy.features_dim))
    model.policy.lstm_actor.on_rollout_step()
    expected = set(model.policy.lstm_actor.stats())
    model.learn(32, callback=CoreStatsCallback())
    header = (tmp_path / "progress.csv").read_text().splitlines()[0].split(",")
    for prefix in (core, f"{core}_critic"):
        assert {c.split("/", 1)[1] for c in header if c.startswith(prefix + "/")} == expected


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"use_comm": "no"}, "use_comm of core='rims' must be true or false, got 'no'"),
        ({"k": 2.5}, "k of core='rims' must be an integer, got 2.5"),
        ({"k": True}, "k of core='rims' must be an integer, got True"),
        ({"input_dropout": "0.1"}, "input_dropout of core='rims' must be a number"),
    ],
)
def test_core_settings_of_the_wrong_type_are_one_line(settings: dict, needle: str) -> None:
    """Issue 39.4: a setting is checked against its default's type, once, for every core: `no` is not
    true, and a float width never reaches the constructor as a TypeError."""
    with pytest.raises(ValueError, match=re.escape(needle)):
        MlpRimsPolicy(OBS, ACT, lr, core="rims", core_kwargs=settings)
