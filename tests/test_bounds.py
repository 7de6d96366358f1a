"""Run-size settings are bounded wherever they come from, and counts are checked before lists are built
(issue 39.1: a typo or a hostile file must get one line, not a hang or a memory error)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rims_rl.app.compare import CompareRequest, run_compare
from rims_rl.app.config import RunConfig, resolve_config
from rims_rl.app.errors import UserError
from rims_rl.app.tune import configurations, parse_grid

SUITE = "popgym-repeat-previous"


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("ppo.n_epochs", 10**12, "ppo.n_epochs must be an integer in"),
        ("ppo.n_steps", 2**40, "ppo.n_steps must be an integer in"),
        ("ppo.n_epochs", 4.0, "ppo.n_epochs must be an integer"),
    ],
)
def test_ppo_settings_from_a_run_config_are_bounded(key: str, value: object, needle: str) -> None:
    """A config.json that compare resumes or train --resume reads: the same rule as --set."""
    data = resolve_config("lstm_ppo", suite=SUITE).to_dict()
    section, name = key.split(".")
    data["model"][section][name] = value
    with pytest.raises(ValueError, match=needle):
        RunConfig.from_dict(data)
    with pytest.raises(UserError, match=needle):
        resolve_config("lstm_ppo", suite=SUITE, overrides={key: value})


def test_n_envs_and_timesteps_are_bounded_before_any_env_is_built() -> None:
    start = time.perf_counter()
    with pytest.raises(UserError, match="n_envs must be an integer in"):
        resolve_config("lstm_ppo", suite=SUITE, n_envs=300_000)
    with pytest.raises(UserError, match="timesteps must be an integer in"):
        resolve_config("lstm_ppo", suite=SUITE, timesteps=10**13)
    data = resolve_config("lstm_ppo", suite=SUITE).to_dict()
    data["model"]["n_envs"] = 300_000
    with pytest.raises(ValueError, match="n_envs must be an integer in"):
        RunConfig.from_dict(data)
    assert time.perf_counter() - start < 5.0


def test_a_huge_tuning_grid_is_refused_before_its_product_is_built() -> None:
    grid = parse_grid([f"k{i}=" + ",".join(map(str, range(100))) for i in range(6)])  # 10**12 configs
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"makes 1,000,000,000,000 configurations .* at most 1000"):
        configurations(grid)
    assert time.perf_counter() - start < 1.0
    assert len(configurations(parse_grid(["a=1,2", "b=3,4,5"]))) == 6


@pytest.mark.parametrize("seeds", [10**9, range(10**9)])
def test_a_huge_seed_count_is_refused_before_the_list_is_built(seeds: object, tmp_path: object) -> None:
    start = time.perf_counter()
    request = CompareRequest(agents=["lstm_ppo"], suite=SUITE, seeds=seeds, out=str(tmp_path))  # type: ignore[arg-type]
    with pytest.raises(UserError, match="seeds"):
        run_compare(request)
    assert time.perf_counter() - start < 5.0


def test_a_linked_run_directory_lock_or_log_folder_is_refused(tmp_path: Path) -> None:
    """Writes never follow a link out of the run directory (issue 39.2): the directory itself, its tb/,
    logs/ and checkpoints/ folders, and a dangling .lock link are refused before anything is written."""
    from rims_rl.app import rundir

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = tmp_path / "run"
    (tmp_path / "linked-run").symlink_to(elsewhere)
    with pytest.raises(UserError, match="is a symbolic link"), rundir.locked(tmp_path / "linked-run"):
        pass
    for sub in ("tb", "logs", "checkpoints"):
        run.mkdir(exist_ok=True)
        (run / sub).symlink_to(elsewhere)
        with pytest.raises(UserError, match="is a symbolic link"), rundir.locked(run):
            pass
        (run / sub).unlink()
    (run / ".lock").symlink_to(elsewhere / "planted")
    with pytest.raises(UserError, match="is a symbolic link"), rundir.locked(run):
        pass
    assert list(elsewhere.iterdir()) == []
    (run / ".lock").unlink()
    with rundir.locked(run):
        assert (run / ".lock").is_file()


def test_a_hostile_resume_form_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    """`unpack` reads an untrusted zip: only a resume form's own member names, nothing outside the run."""
    import zipfile

    from rims_rl.app.pack import unpack_run

    for members in (
        {"../evil.txt": b"x"},
        {"config.json": b"{}", "checkpoints/../../evil.zip": b"x"},
        {"a.py": b""},
    ):
        form = tmp_path / "form.zip"
        with zipfile.ZipFile(form, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        with pytest.raises(UserError, match="not a member of a resume form"):
            unpack_run(form, tmp_path / "run")
    with zipfile.ZipFile(form, "w") as zf:
        zf.writestr("config.json", b"{}")
        zf.writestr("checkpoints/step_32.zip", b"not a zip")
    with pytest.raises(UserError, match="does not hold a usable run"):
        unpack_run(form, tmp_path / "run")
    assert not (tmp_path / "evil.txt").exists() and not any((tmp_path / "run").rglob("*.*"))
    with pytest.raises(UserError, match="not a resume form"):
        unpack_run(tmp_path / "form.zip.missing", tmp_path / "run2")


@pytest.mark.parametrize("where", ["observations", "rewards", "dict"])
def test_non_finite_observations_stop_the_run_with_a_clear_error(tmp_path: Path, where: str) -> None:
    """Issue 39.4: an env that gives infinite observations (or rewards) stops the run as diverged, naming
    the env's settings, instead of training on them and reporting finished: checked once per rollout."""
    import json
    from types import SimpleNamespace

    import numpy as np

    from rims_rl.app.runs import RunCallback, TrainingDiverged

    obs = np.zeros((4, 2, 3), dtype=np.float32)
    rewards = np.zeros((4, 2), dtype=np.float32)
    callback = RunCallback(tmp_path, resolve_config("lstm_ppo", suite=SUITE), every=10**6)
    callback.model = SimpleNamespace(  # type: ignore[assignment]
        rollout_buffer=SimpleNamespace(
            observations={"image": obs} if where == "dict" else obs, rewards=rewards
        ),
        num_timesteps=64,
    )
    callback._on_rollout_end()  # finite: nothing happens
    if where == "rewards":
        rewards[1, 0] = np.inf
    else:
        obs[1, 0, 0] = np.inf
    with pytest.raises(
        TrainingDiverged, match=f"non-finite {'rewards' if where == 'rewards' else 'observations'}"
    ):
        callback._on_rollout_end()
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "diverged"


@pytest.mark.parametrize(
    ("agents", "seeds", "needle"),
    [
        (["lstm_ppo", "lstm_ppo"], 1, "lstm_ppo more than once"),
        (["lstm_ppo"], [0, 0], "a seed more than once"),
    ],
)
def test_an_agent_or_seed_named_twice_is_refused(
    tmp_path: Path, agents: list, seeds: object, needle: str
) -> None:
    """Issue 39.4: `compare --agents lstm_ppo lstm_ppo` counted one run twice in every statistic."""
    request = CompareRequest(agents=agents, suite=SUITE, seeds=seeds, out=str(tmp_path / "c"))  # type: ignore[arg-type]
    with pytest.raises(UserError, match=needle):
        run_compare(request)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("bad", ["0", "-2", "nan", "inf", "5000"])
def test_a_bad_memory_budget_is_one_line(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    from rims_rl.cli import main

    assert main(["train", "--suite", SUITE, "--timesteps", "16", f"--memory-gib={bad}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --memory-gib must be a number of GiB in (0, 4096]"), err
    assert "\n" not in err


def test_memory_gib_decides_what_train_builds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A budget below the preset's few MiB refuses it in one line before any run directory is made;
    the flag reaches the check through the environment, as compare's worker processes see it."""
    from rims_rl.agents import MEMORY_BUDGET_VAR
    from rims_rl.cli import main

    monkeypatch.setenv(MEMORY_BUDGET_VAR, "1")  # restored (unset) after the test, whatever main sets
    run_dir = tmp_path / "run"
    args = ["train", "--agent", "lstm_ppo", "--suite", SUITE, "--timesteps", "16", "--no-progress"]
    assert main([*args, "--memory-gib", "0.0001", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "the budget is 0.1 MiB" in err and "--memory-gib" in err and "\n" not in err, err
    assert not run_dir.exists()
    import os

    assert os.environ[MEMORY_BUDGET_VAR] == "0.0001"
