"""Property tests of the settings doors (issue 39.6): any value, at any key a config file, a checkpoint or
``--set`` can carry, is either taken or refused in one line, fast, and a model is never built to find out
its size. Hypothesis draws the values from the settings' own types and bounds and from just outside them.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rims_rl.agents import check_measured_size
from rims_rl.agents.config import MAX_N_ENVS, MAX_N_EPOCHS, MAX_N_STEPS, MAX_TIMESTEPS
from rims_rl.app.config import RunConfig, resolve_config
from rims_rl.app.errors import UserError
from rims_rl.envs import make_vec_env_for

SUITE = "popgym-repeat-previous"

#: Each key with the bound it has, so the draws cluster at the edges where bugs live.
INT_KEYS: dict[str, int] = {
    "ppo.n_steps": MAX_N_STEPS,
    "ppo.n_epochs": MAX_N_EPOCHS,
    "ppo.batch_size": MAX_N_STEPS,
    "policy_kwargs.lstm_hidden_size": 4096,
    "policy_kwargs.n_lstm_layers": 16,
    "policy_kwargs.rims_kwargs.n_units": 4096,
    "policy_kwargs.rims_kwargs.k": 4096,
    "policy_kwargs.rims_kwargs.unit_size": 4096,
    "policy_kwargs.rims_kwargs.input_heads": 4096,
}
OTHER_KEYS = (
    "ppo.learning_rate",
    "ppo.gamma",
    "ppo.clip_range",
    "policy_kwargs.rims_kwargs.use_comm",
    "policy_kwargs.rims_kwargs.input_dropout",
)


def _edge_ints(bound: int) -> st.SearchStrategy[int]:
    return st.one_of(
        st.sampled_from([0, 1, 2, bound - 1, bound, bound + 1, -1, 2**31, 2**63, 10**30]),
        st.integers(min_value=-(2**70), max_value=2**70),
    )


ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["no", "yes", "1e12", "lin_1e-3", "inf", "nan"]),
    st.lists(st.integers(), max_size=3),
)


@pytest.fixture(scope="module")
def env() -> Any:
    env = make_vec_env_for(resolve_config("rims_ppo", suite=SUITE).env_spec(), n_envs=1, vec_cls="dummy")
    yield env
    env.close()


def _one_line_or_taken(key: str, value: Any, env: Any) -> None:
    start = time.perf_counter()
    try:
        config = resolve_config("rims_ppo", suite=SUITE, overrides={key: value})
    except UserError as err:
        assert "\n" not in str(err), str(err)
    else:
        try:
            check_measured_size(config.model, env)  # the meta device: a 75 GiB model costs nothing here
        except ValueError as err:
            assert "\n" not in str(err), str(err)
        data = config.to_dict()  # the run config a file would carry reads back the same
        assert RunConfig.from_dict(data).to_dict() == data
    assert time.perf_counter() - start < 10.0, (key, value)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_an_integer_setting_is_taken_or_refused_in_one_line(data: st.DataObject, env: Any) -> None:
    key = data.draw(st.sampled_from(sorted(INT_KEYS)))
    _one_line_or_taken(key, data.draw(_edge_ints(INT_KEYS[key])), env)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(sorted(INT_KEYS) + list(OTHER_KEYS)), value=ANY_VALUE)
def test_any_value_at_any_setting_is_taken_or_refused_in_one_line(key: str, value: Any, env: Any) -> None:
    _one_line_or_taken(key, value, env)


@settings(max_examples=40, deadline=None)
@given(
    n_envs=_edge_ints(MAX_N_ENVS),
    timesteps=_edge_ints(MAX_TIMESTEPS),
    seed=_edge_ints(2**32),
)
def test_run_sizes_from_a_run_config_are_taken_or_refused_in_one_line(
    n_envs: int, timesteps: int, seed: int
) -> None:
    """The run config a resumed compare reads (untrusted): its sizes by the same rule as the CLI's."""
    data = resolve_config("lstm_ppo", suite=SUITE).to_dict()
    data["model"]["n_envs"], data["timesteps_requested"], data["seed"] = n_envs, timesteps, seed
    start = time.perf_counter()
    try:
        RunConfig.from_dict(data)
    except ValueError as err:
        assert "\n" not in str(err)
    assert time.perf_counter() - start < 5.0
