"""Learning test: a cue must be recalled several steps later; memory agents solve it, feed-forward PPO cannot.

The CI variant (delay 4, 8192-step budget, stops at 95% training success) takes about 30 s on 2 CPU
cores. The slow variant uses a longer delay and several seeds.
"""

from __future__ import annotations

import pytest
import torch as th
from memory_task import run_memory_task  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """Small networks run faster single-threaded, and the CI machine is shared."""
    threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(threads)


def test_memory_agents_solve_cue_recall_and_feed_forward_does_not() -> None:
    results = {agent: run_memory_task(agent, budget=8192) for agent in ("rims_ppo", "lstm_ppo", "ppo")}
    for agent in ("rims_ppo", "lstm_ppo"):
        assert results[agent].reached, results[agent]
        assert results[agent].success >= 0.9, results[agent]
    assert not results["ppo"].reached
    assert results["ppo"].success <= 0.65, results["ppo"]  # chance is 0.5


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("agent", ["rims_ppo", "lstm_ppo"])
def test_memory_agents_long_delay(agent: str, seed: int, request: pytest.FixtureRequest) -> None:
    if "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip("minutes of training; run with -m slow")
    result = run_memory_task(agent, budget=60_000, delay=10, seed=seed)
    assert result.reached and result.success >= 0.9, result
