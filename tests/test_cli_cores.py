"""``--core NAME`` on the command line: any registered core, the example plug-in included, with an agent's
PPO settings and output width; ``--set core.KEY=VALUE`` sets the core's own options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_ENV, TINY_FLAGS
from plugin_core import NAME as PLUGIN

import train


def test_train_and_evaluate_with_a_plugin_core(tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = ["train", "--agent", "lstm_ppo", "--core", PLUGIN, "--set", "core.leak=0.3", "--env", TINY_ENV]
    argv += ["--timesteps", "32", "--run-dir", str(run), "--no-progress", "--eval-episodes", "0", *TINY_FLAGS]
    assert train.main(argv) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["agent"] == f"lstm_ppo+{PLUGIN}"
    pk = config["model"]["policy_kwargs"]
    assert pk["core"] == PLUGIN and pk["core_kwargs"] == {"leak": 0.3}
    assert pk["lstm_hidden_size"] == 192  # lstm_ppo's output width on MiniGrid
    out = tmp_path / "eval"
    assert train.main(["evaluate", "--checkpoint", str(run), "--episodes", "1", "--out", str(out)]) == 0


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--agent", "lstm_ppo", "--core", "lekay"], f"did you mean '{PLUGIN}'"),
        (["--agent", "ppo", "--core", PLUGIN], "feed-forward"),
        (["--agent", "lstm_ppo", "--core", PLUGIN, "--set", "core.lek=1"], "did you mean 'leak'"),
        (["--agent", "rims_ppo", "--set", "core.kk=3"], "did you mean 'k'"),
    ],
)
def test_bad_core_flags_fail_in_one_line(
    flags: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert train.main(["train", *flags, "--env", TINY_ENV, "--run-dir", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and "Traceback" not in err, err
    assert not run.exists()


def test_set_core_key_reaches_the_rims_settings_of_a_rims_agent(tmp_path: Path) -> None:
    from rims_rl.app.config import resolve_config

    config = resolve_config("rims_ppo", TINY_ENV, overrides=["core.k=3"])
    assert config.model.policy_kwargs["rims_kwargs"]["k"] == 3


def test_compare_runs_a_plugin_core_in_its_worker_processes(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    argv = [
        "compare",
        "--env",
        TINY_ENV,
        "--agents",
        "lstm_ppo",
        "--core",
        PLUGIN,
        "--seeds",
        "1",
        "--timesteps",
        "32",
    ]
    argv += ["--eval-episodes", "1", "--workers", "2", "--out", str(out), *TINY_FLAGS]
    assert train.main(argv) == 0
    assert (out / "records" / f"lstm_ppo+{PLUGIN}-seed0.json").is_file()
