"""One code version per cell (issue 38.4): today's code trains the leaderboard's 2026-12-02 runs as the
code of that day did, bit for bit, on their first rollout and first PPO update.

The DoorKey and MultiRoom cells mix runs of lstm_ppo, rims_ppo and rims_spatial_ppo made on 2026-12-02
(docs/results/doorkey-tuned-10seeds, multiroom-tuned-10seeds, multiroom-dropout-10seeds) with runs of
the other agents made after the core refactor. tests/data/fingerprints-2026-12-02.json holds the
fingerprints (``experiments/fingerprint.py``) that the 2026-12-02 code (commit 64dac30, checked out
apart) gave for seed 0 of each of those agents with the settings its record stores; each test recomputes
one with today's code and asserts equality: the parameters before and after the update, the rollout
buffer's arrays (sha256) and the update's logged losses (exact).

Two changes since are deliberate and are switched off here. RIMs' small batches run a re-derived time
loop in C++ (``rims_rl/cores/rims_derived.py``, ``rims_ext.py``; equal to the fused loop to rounding,
``tests/test_core_bptt.py``). And chunked minibatches of a torch LSTM/GRU core
now run their episode segments in one or two calls (``rims_rl.policies._run_segments``, issue 43)
instead of sb3-contrib's per-step loop, which the 2026-12-02 code used. The two agree to float rounding,
not bit for bit (``tests/test_segments.py`` checks outputs, states and gradients), so these tests take
the step loop, and the chain is: the 2026-12-02 code = today's with the step loop (bitwise, here) =
today's segment path (to rounding, there). ``test_the_segment_path_is_the_only_difference`` shows the
switch matters only where the fixture's run has starts inside its chunks.

Bit-for-bit equality holds only with the same libraries (torch's kernels), so a test is skipped where the
installed versions differ from the fixture's. Each run takes 5-10 s on one thread; the default run checks
one per agent, the rest are slow (``-m slow``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch as th
from fingerprint import fingerprint, job_of_record, library_versions

from rims_rl import policies
from rims_rl.cores import rims_ext

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = json.loads((Path(__file__).parent / "data" / "fingerprints-2026-12-02.json").read_text())
RUNS: list[dict[str, Any]] = FIXTURE["runs"]
#: One run per agent in the default test run (one per suite too), the others under -m slow.
FAST = {
    ("minigrid-doorkey", "rims_ppo", "doorkey-tuned-10seeds"),
    ("minigrid-multiroom", "lstm_ppo", "multiroom-tuned-10seeds"),
    ("minigrid-multiroom", "rims_spatial_ppo", "multiroom-tuned-10seeds"),
}
#: What must be equal: everything the run computed (not where, when or how fast).
COMPARED = ("params_init", "rollout", "params", "train", "timesteps", "n_envs", "n_steps")


def _key(run: dict[str, Any]) -> tuple[str, str, str]:
    return (run["job"]["suite"], run["job"]["agent"], run["record"].split("/")[2])


def _id(run: dict[str, Any]) -> str:
    return "-".join(_key(run)[1:])


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    threads = th.get_num_threads()
    yield
    th.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _step_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """sb3-contrib's per-step loop for starts inside sequences, and RIMs' fused loop instead of the
    C++ re-derived one, as the 2026-12-02 code ran them."""
    monkeypatch.setattr(policies, "_takes_packed", lambda core: False)
    monkeypatch.setattr(rims_ext, "usable", lambda x: False)


def _check(run: dict[str, Any]) -> None:
    if library_versions() != FIXTURE["versions"]:
        pytest.skip(
            f"libraries differ from the fixture's {FIXTURE['versions']}: bitwise equality not expected"
        )
    job = job_of_record(ROOT / run["record"])
    assert job == run["job"], "the record no longer asks for the run that was fingerprinted"
    got = fingerprint(**job, threads=FIXTURE["threads"])
    want = run["fingerprint"]
    for part in COMPARED:
        assert got[part] == want[part], f"{part} differs from the 2026-12-02 code's ({run['command']})"


@pytest.mark.parametrize("run", [r for r in RUNS if _key(r) in FAST], ids=_id)
def test_todays_code_trains_the_2026_12_02_runs_bit_for_bit(run: dict[str, Any]) -> None:
    _check(run)


@pytest.mark.slow
@pytest.mark.parametrize("run", [r for r in RUNS if _key(r) not in FAST], ids=_id)
def test_todays_code_trains_the_2026_12_02_runs_bit_for_bit_all(
    run: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    if "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip("a minute in all; run with -m slow")
    _check(run)


def test_the_fixture_covers_every_2026_12_02_agent_of_the_doorkey_and_multiroom_cells() -> None:
    assert FIXTURE["code"]["commit"].startswith("64dac30")
    assert {_key(r) for r in RUNS} == {
        *(
            (s, a, f"{c}-tuned-10seeds")
            for s, c in (("minigrid-doorkey", "doorkey"), ("minigrid-multiroom", "multiroom"))
            for a in ("lstm_ppo", "rims_ppo", "rims_spatial_ppo")
        ),
        ("minigrid-multiroom", "rims_ppo", "multiroom-dropout-10seeds"),
    }
    assert FAST <= {_key(r) for r in RUNS}


def test_the_segment_path_is_the_only_difference(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the segment path back on, the chunked LSTM run of the fixture differs only after its update
    (same start, same rollout): the loop and the segments differ in rounding inside the update alone."""
    if library_versions() != FIXTURE["versions"]:
        pytest.skip("libraries differ from the fixture's")
    monkeypatch.undo()  # the segment path, as training runs today
    run = next(r for r in RUNS if _key(r) == ("minigrid-multiroom", "lstm_ppo", "multiroom-tuned-10seeds"))
    got = fingerprint(**job_of_record(ROOT / run["record"]), threads=FIXTURE["threads"])
    want = run["fingerprint"]
    assert got["params_init"] == want["params_init"] and got["rollout"] == want["rollout"]
    assert got["params"] != want["params"]
