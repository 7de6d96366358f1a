"""The command line: bad names and bad hyperparameters fail before anything is written, unusable
checkpoints fail with one ``error:`` line (exit 2), evaluation writes its table/JSON/CSV.

Runs ``train.main(argv)`` in-process (no interpreter start-up per case); one tiny trained run is
shared by the module.
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import TINY_ENV, TINY_FLAGS

ROOT = Path(__file__).resolve().parent.parent

import train  # noqa: E402
from rims_rl.app.checkpoint import read_meta  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 64-step rims_ppo run (config.json, checkpoints, model.zip)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    argv = ["train", "--env", TINY_ENV, "--timesteps", "64", "--run-dir", str(out), "--no-progress"]
    argv += ["--checkpoint-every", "32", *TINY_FLAGS]
    assert train.main(argv) == 0
    return out


def _fails_cleanly(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    code = train.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") or "error:" in err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--agent", "rimz_ppo", "--env", TINY_ENV], ("rims_ppo",)),  # closest agent named
        (["--env", "MiniGrid-Emtpy-5x5-v0"], ("MiniGrid-Empty-5x5-v0",)),
        (["--suite", "minigrid-doorky"], ("minigrid-doorkey",)),
        (["--env", "ALE/Pong-v5", "--set", "env.mode=99"], ("mode 99", "0")),
        (["--env", TINY_ENV, "--set", "policy_kwargs.rims_kwargs.k=9"], ("k",)),  # k > n_units
        (["--env", TINY_ENV, "--timesteps", "-5"], ("timesteps",)),
        (
            ["--env", TINY_ENV, "--n-envs", "2", "--set", "ppo.n_steps=4", "--set", "ppo.batch_size=64"],
            ("batch",),
        ),
        (["--env", TINY_ENV, "--set", "ppo.learning_rat=1e-3"], ("learning_rate",)),
    ],
)
def test_bad_train_arguments_fail_before_anything_is_written(
    flags: list[str], needles: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "run"
    _fails_cleanly(["train", *flags, "--run-dir", str(target), "--no-progress"], capsys, *needles)
    assert not target.exists()


def test_train_writes_a_complete_run_directory(run_dir: Path) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    model = config["model"]
    assert model["agent"] == "rims_ppo" and config["env"]["env_id"] == TINY_ENV and config["seed"] == 0
    assert model["n_timesteps"] == 64 and model["ppo"]["n_steps"] == 16 and model["n_envs"] == 2
    # One home for every value: the run's budget and env count are not repeated beside the preset.
    assert not {"agent", "timesteps", "n_envs", "vec_env", "rollout_size"} & set(config)
    assert config["model"]["policy_kwargs"]["core"] == "rims"
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_32.zip"
    with zipfile.ZipFile(run_dir / "model.zip") as zf:
        meta = json.loads(zf.read("rims_config.json"))
        assert {"data", "policy.pth"} <= set(zf.namelist())
    assert meta["num_timesteps"] == 64 and meta["action_space"]["n"] == 7
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    header = (run_dir / "logs" / "progress.csv").read_text().splitlines()[0]
    assert "rims/usage_entropy" in header  # CoreStatsCallback reaches the logs


def test_evaluate_prints_table_and_writes_json_csv(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    argv = ["evaluate", "--checkpoint", str(run_dir), "--env", TINY_ENV, "--episodes", "2", "--out", str(out)]
    assert train.main(argv) == 0
    printed = capsys.readouterr().out
    assert "mean return" in printed and "95% CI" in printed and TINY_ENV in printed
    (result,) = json.loads((out / f"eval-{TINY_ENV}.json").read_text())
    assert result["episodes"] == 2 and len(result["returns"]) == 2
    assert result["success_rate"] in (0.0, 0.5, 1.0)
    assert result["ci95_low"] <= result["mean_return"] <= result["ci95_high"]
    assert (out / f"eval-{TINY_ENV}.csv").read_text().startswith("env,env_id,episodes,mean_return")


def test_resume_of_a_finished_run_does_nothing(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (run_dir / "model.zip").read_bytes()
    assert train.main(["train", "--resume", str(run_dir), "--no-progress"]) == 0
    assert "already trained" in capsys.readouterr().out
    assert (run_dir / "model.zip").read_bytes() == before


def test_list_names_agents_suites_and_envs(capsys: pytest.CaptureFixture[str]) -> None:
    assert train.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("rims_ppo", "lstm_ppo", "ppo", "minigrid-doorkey", "ALE/Breakout-v5", "classic envs"):
        assert name in out
    assert train.main(["list", "envs"]) == 0
    out = capsys.readouterr().out
    for name in ("atari envs", TINY_ENV, "ALE/Breakout-v5", "popgym-RepeatFirst-v0", "CartPole-v1"):
        assert name in out


def test_unknown_pretrained_alias_lists_aliases(capsys: pytest.CaptureFixture[str]) -> None:
    _fails_cleanly(["evaluate", "--checkpoint", "no-such-model"], capsys, "pretrained aliases")


def test_compare_subcommand_is_wired(capsys: pytest.CaptureFixture[str]) -> None:
    args = train.build_parser().parse_args(["compare", "--agents", "ppo", "--suite", "minigrid-doorkey"])
    assert args.func is train.cmd_compare and args.agents == ["ppo"] and args.seeds == 3


@pytest.mark.parametrize(
    ("agent", "extra"),
    [("tlb_ppo", []), ("assembly_ppo", []), ("rims_ppo", ["--set", "ppo.chunk_length=8"])],
)
def test_other_cores_and_chunked_training_train_save_and_evaluate_on_a_suite(
    agent: str, extra: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each modular core (and chunked minibatches) through the CLI: train, save, load safely, evaluate."""
    run = tmp_path / "run"
    argv = ["train", "--agent", agent, "--suite", "minigrid-multiroom", "--timesteps", "32", "--run-dir"]
    assert train.main([*argv, str(run), "--no-progress", *TINY_FLAGS, *extra]) == 0, capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["agent"] == agent
    algo = "ChunkedRecurrentPPO" if extra else "RecurrentPPO"  # chunk_length selects it, recorded as algo
    assert config["model"]["algo"] == algo and read_meta(run / "model.zip").algo == algo
    code = train.main(
        ["evaluate", "--checkpoint", str(run), "--suite", "minigrid-multiroom", "--episodes", "1"]
    )
    assert code == 0, capsys.readouterr().err
    (result,) = json.loads((run / "eval-minigrid-multiroom.json").read_text())[:1]
    assert result["episodes"] == 1 and result["num_timesteps"] == 32


def test_a_bug_during_training_keeps_its_traceback_and_marks_the_run_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the user's mistakes become one ``error:`` line; a ValueError from inside the core is a bug."""
    from rims_rl.cores.rims import RIMs

    def broken(self: RIMs, *args: object, **kwargs: object) -> None:
        raise ValueError("a bug inside the core")

    monkeypatch.setattr(RIMs, "forward", broken)
    run = tmp_path / "run"
    argv = [
        "train",
        "--env",
        TINY_ENV,
        "--timesteps",
        "32",
        "--run-dir",
        str(run),
        "--no-progress",
        *TINY_FLAGS,
    ]
    with pytest.raises(ValueError, match="a bug inside the core"):
        train.main(argv)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "a bug inside the core" in status["message"]


def test_a_run_directory_in_use_is_refused(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two processes on one run directory would interleave logs and checkpoints: the second is refused."""
    from rims_rl.app import rundir

    with rundir.locked(run_dir):  # another process training or resuming there
        _fails_cleanly(["train", "--resume", str(run_dir), "--no-progress"], capsys, "in use")
    assert train.main(["train", "--resume", str(run_dir), "--no-progress"]) == 0  # released: fine again


def test_names_from_an_untrusted_checkpoint_never_leave_the_output_folder(tmp_path: Path) -> None:
    from rims_rl.checks import safe_name

    for hostile in ("../../../../tmp/x", "/etc/passwd", "..", "a/../../b"):
        name = safe_name(hostile)
        assert "/" not in name and name not in ("", ".", "..")
        assert (tmp_path / name).resolve().parent == tmp_path.resolve()


def test_one_training_run_builds_each_core_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings are checked where they are defined, so no throwaway cores are built to validate them (the
    size check builds one on the meta device, which allocates nothing, and is not counted)."""
    from rims_rl.cores.rims import RIMs

    built = []
    original = RIMs.__init__

    @functools.wraps(original)  # the registry reads the constructor's signature through __wrapped__
    def counting(self: RIMs, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        if not next(self.parameters()).is_meta:
            built.append(1)

    monkeypatch.setattr(RIMs, "__init__", counting)
    argv = [
        "train",
        "--env",
        TINY_ENV,
        "--timesteps",
        "32",
        "--run-dir",
        str(tmp_path / "r"),
        "--no-progress",
    ]
    assert train.main([*argv, *TINY_FLAGS]) == 0
    assert len(built) == 1  # the MiniGrid preset shares one core between actor and critic


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--agent", "lstm_ppo"], ("drop --agent",)),
        (["--timesteps", "999"], ("drop --timesteps",)),
        (["--set", "ppo.n_epochs=2"], ("drop --set",)),
        (["--seed", "3"], ("drop --seed",)),
        (["--seed", "0", "--timesteps", "0"], ("drop --timesteps, --seed",)),  # falsy values count too
    ],
)
def test_resume_refuses_flags_it_would_ignore(
    run_dir: Path, flags: list[str], needles: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    _fails_cleanly(["train", "--resume", str(run_dir), *flags], capsys, *needles)


def test_train_refuses_values_it_used_to_accept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "run"
    base = ["train", "--env", TINY_ENV, "--run-dir", str(target), "--no-progress", *TINY_FLAGS]
    _fails_cleanly([*base, "--eval-episodes", "-3"], capsys, "--eval-episodes")
    _fails_cleanly([*base, "--set", "ppo.learning_rate=Infinity"], capsys, "learning_rate")
    _fails_cleanly([*base, "--set", "n_envs=2.7"], capsys, "n_envs")
    _fails_cleanly([*base, "--set", "policy_kwargs.optimizer_kwargs.eps=abc"], capsys, "eps must be a number")
    _fails_cleanly([*base, "--set", "policy_kwargs.features_extractor_kwargs.bogus=1"], capsys, "bogus")
    import torch

    if not torch.cuda.is_available():
        _fails_cleanly([*base, "--device", "cuda"], capsys, "CUDA is not available")
    assert not target.exists()


def test_the_largest_budget_is_rounded_exactly_and_a_larger_one_refused() -> None:
    from rims_rl.agents.config import MAX_TIMESTEPS
    from rims_rl.app.config import resolve_config
    from rims_rl.app.errors import UserError

    overrides = {"ppo.n_steps": 48, "ppo.batch_size": 16}  # rollouts of 96 steps: 10**10 is no multiple
    requested = MAX_TIMESTEPS - 1
    config = resolve_config("rims_ppo", TINY_ENV, timesteps=requested, n_envs=2, overrides=overrides)
    assert config.timesteps % 96 == 0 and 0 <= config.timesteps - requested < 96
    with pytest.raises(UserError, match="timesteps must be an integer in"):
        resolve_config(
            "rims_ppo", TINY_ENV, timesteps=99999999999999999999999999, n_envs=2, overrides=overrides
        )


def test_resume_with_only_unreadable_checkpoints_refuses_to_start_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    argv = [
        "train",
        "--env",
        TINY_ENV,
        "--timesteps",
        "96",
        "--run-dir",
        str(run),
        "--no-progress",
        *TINY_FLAGS,
    ]
    assert train.main([*argv, "--checkpoint-every", "32"]) == 0
    (run / "model.zip").unlink()
    for checkpoint in (run / "checkpoints").glob("step_*.zip"):
        checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    log = (run / "logs" / "progress.csv").read_text()
    _fails_cleanly(
        ["train", "--resume", str(run), "--no-progress"], capsys, "no checkpoint there can be read"
    )
    assert (run / "logs" / "progress.csv").read_text() == log


def test_evaluate_with_a_misspelt_suite_lists_suites(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _fails_cleanly(["evaluate", "--checkpoint", str(run_dir), "--suite", "minigrid-doorkee"], capsys)
    assert "unknown suite" in err and "minigrid-doorkey" in err


def test_written_files_follow_the_umask(run_dir: Path) -> None:
    import os
    import stat

    mask = os.umask(0)
    os.umask(mask)
    for name in ("config.json", "status.json", "model.zip"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o666 & ~mask, name


def test_every_flag_has_help_text() -> None:
    import argparse

    parser = train.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help text"


SUITE_YAML = """
name: my-empty
description: Empty rooms of other sizes
train: {id: MiniGrid-Empty-5x5-v0}
variants:
  - {name: 6x6, id: MiniGrid-Empty-6x6-v0}
"""


def test_a_suite_file_works_from_the_cli_and_in_a_fresh_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--suite my_suite.yaml`` in train and evaluate; a new process (a compare worker) resolves it too."""
    import subprocess

    suite = tmp_path / "my_suite.yaml"
    suite.write_text(SUITE_YAML)
    run = tmp_path / "run"
    argv = ["train", "--suite", str(suite), "--timesteps", "32", "--run-dir", str(run), "--no-progress"]
    assert train.main([*argv, *TINY_FLAGS]) == 0, capsys.readouterr().err
    assert json.loads((run / "config.json").read_text())["suite"] == str(suite)
    argv = [
        "evaluate",
        "--checkpoint",
        str(run),
        "--suite",
        str(suite),
        "--episodes",
        "1",
        "--out",
        str(tmp_path),
    ]
    assert train.main(argv) == 0, capsys.readouterr().err
    code = f"from envs import get_suite; print([s.name for s in get_suite({str(suite)!r}).specs()])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['train', '6x6']"
    _fails_cleanly(
        ["evaluate", "--checkpoint", str(run), "--suite", str(tmp_path / "nope.yaml")], capsys, "nope"
    )


def test_unusable_output_paths_and_missing_targets_give_one_line(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    base = ["evaluate", "--checkpoint", str(run_dir), "--env", TINY_ENV, "--episodes", "1"]
    _fails_cleanly([*base, "--out", str(blocker / "sub")], capsys, "cannot write to")
    _fails_cleanly(
        [*base, "--out", str(tmp_path / "ok"), "--video", str(blocker / "v")], capsys, "cannot write"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    _fails_cleanly(
        ["evaluate", "--checkpoint", str(run_dir), "--suite", str(bad)], capsys, "cannot be read as YAML"
    )
    argv = ["compare", "--suite", "minigrid-multiroom", "--seeds", "1", "--out", str(blocker / "c")]
    _fails_cleanly(
        [*argv, "--set", "ppo.n_steps=16", "--set", "ppo.batch_size=16"], capsys, "cannot write to"
    )


def test_trusted_loading_still_reads_the_shipped_pretrained_models(tmp_path: Path) -> None:
    """Saved before MiniGridCNN moved to rims_rl.extractors: SB3's own loader must still find it."""
    argv = ["evaluate", "--checkpoint", "doorkey-5x5-lstm_ppo", "--episodes", "1", "--trust-checkpoint"]
    assert train.main([*argv, "--out", str(tmp_path)]) == 0  # its own env, read from our metadata
    (result,) = json.loads((tmp_path / "eval.json").read_text())
    assert result["env_id"] == "MiniGrid-DoorKey-5x5-v0" and result["episodes"] == 1


def test_evaluating_a_pretrained_alias_leaves_the_shipped_folder_as_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its results go to runs/eval/<alias> under the working directory, not into pretrained/."""
    from rims_rl.app.checkpoint import PRETRAINED_DIR

    alias = "doorkey-5x5-lstm_ppo"
    shipped = sorted(p.name for p in (PRETRAINED_DIR / alias).iterdir())
    monkeypatch.chdir(tmp_path)
    assert train.main(["evaluate", "--checkpoint", alias, "--episodes", "1"]) == 0
    assert sorted(p.name for p in (PRETRAINED_DIR / alias).iterdir()) == shipped
    (result,) = json.loads((tmp_path / "runs" / "eval" / alias / "eval.json").read_text())
    assert result["env_id"] == "MiniGrid-DoorKey-5x5-v0" and result["episodes"] == 1
    # a link of the user's to the shipped folder (in an installed package: into site-packages) is the alias
    (tmp_path / "mine").symlink_to(PRETRAINED_DIR / alias)
    (tmp_path / "runs").rename(tmp_path / "before")
    assert train.main(["evaluate", "--checkpoint", str(tmp_path / "mine"), "--episodes", "1"]) == 0
    assert sorted(p.name for p in (PRETRAINED_DIR / alias).iterdir()) == shipped
    assert (tmp_path / "runs" / "eval" / alias / "eval.json").is_file()


def test_runs_go_under_rims_rl_runs_and_status_says_how_far_they_got(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Long runs live outside the checkout (issue 42.1): $RIMS_RL_RUNS moves every default run directory,
    and `status` reads the steps reached, the budget and the last checkpoint without touching the run."""
    root = tmp_path / "long-runs"
    monkeypatch.setenv("RIMS_RL_RUNS", str(root))
    monkeypatch.chdir(tmp_path)
    assert train.main(["train", "--env", TINY_ENV, "--timesteps", "32", "--no-progress", *TINY_FLAGS]) == 0
    (run,) = [p for p in root.iterdir() if p.is_dir()]
    assert not (tmp_path / "runs").exists()
    capsys.readouterr()
    assert train.main(["status"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{run}: finished, ") and "/ " in line and "(100%)" in line and "model.zip" in line
    (run / "status.json").unlink()
    assert train.main(["status", str(root)]) == 0
    assert "no status" in capsys.readouterr().out
    assert train.main(["status", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """The usage is built from the parser's own commands, so none is hidden (issue 40.4)."""
    assert train.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "evaluate", "list", "compare", "tune", "leaderboard", "status"):
        assert f"\n    {command}" in out


def test_a_misspelt_pretrained_alias_gets_a_did_you_mean(capsys: pytest.CaptureFixture[str]) -> None:
    assert train.main(["evaluate", "--checkpoint", "doorkey-5x5-rims_pp", "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert "(did you mean 'doorkey-5x5-rims_ppo'" in err and err.count("\n") == 1


def test_campaign_snapshot_writes_the_curve_status_and_resume_form(tmp_path: Path) -> None:
    """experiments/campaign_snapshot.py: what a session commits of a long run it leaves running."""
    import importlib.util

    run = tmp_path / "campaign" / "runs" / "lstm_ppo-seed0"
    argv = [
        "train",
        "--agent",
        "lstm_ppo",
        "--env",
        TINY_ENV,
        "--timesteps",
        "256",  # 128 steps per env: an episode of the 5x5 room ends by its 100-step limit, so a curve exists
        "--checkpoint-every",
        "64",
    ]
    assert train.main([*argv, "--run-dir", str(run), "--no-progress", *TINY_FLAGS]) == 0
    spec = importlib.util.spec_from_file_location(
        "campaign_snapshot", Path(__file__).resolve().parents[1] / "experiments" / "campaign_snapshot.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "out"
    assert module.main([str(tmp_path / "campaign"), str(out), "--pack"]) == 0
    assert (out / "status.txt").read_text().startswith("campaign/runs/lstm_ppo-seed0: finished, 256 / 256")
    assert (out / "lstm_ppo-seed0.csv").read_text().startswith("timesteps,episode_return\n")
    with zipfile.ZipFile(out / "lstm_ppo-seed0.resume.zip") as zf:
        names = zf.namelist()
    assert "config.json" in names and any(n.startswith("checkpoints/step_") for n in names)
    assert module.main([str(tmp_path / "nothing"), str(out)]) == 2
    # Two sources (the same agent and seed, one setting apart): their runs side by side, named by source.
    shutil.copytree(tmp_path / "campaign", tmp_path / "other")
    both = tmp_path / "both"
    assert module.main([str(tmp_path / "campaign"), str(tmp_path / "other"), str(both)]) == 0
    assert {p.name for p in both.glob("*.csv")} == {"campaign-lstm_ppo-seed0.csv", "other-lstm_ppo-seed0.csv"}
    status = (both / "status.txt").read_text().splitlines()
    runs = [line.split(":")[0] for line in status]
    assert runs == [f"{d}/runs/lstm_ppo-seed0" for d in ("campaign", "other")]
    assert (both / "learning_curves.png").is_file()
    assert module.main([str(tmp_path / "campaign"), str(tmp_path / "nothing"), str(both)]) == 2
    shutil.copytree(tmp_path / "campaign", tmp_path / "elsewhere" / "campaign")  # the same folder name
    assert module.main([str(tmp_path / "campaign"), str(tmp_path / "elsewhere" / "campaign"), str(both)]) == 2


def test_the_entry_point_undoes_a_background_shells_ignored_sigint(monkeypatch: pytest.MonkeyPatch) -> None:
    """A script's `cmd &` starts the process with SIGINT ignored, and Python then raises no
    KeyboardInterrupt: `kill -INT` would stop training (its own handler) but no other phase. The entry
    point puts Python's default back before any command runs."""
    import signal

    from rims_rl import cli

    seen = []
    monkeypatch.setattr(cli, "main", lambda: seen.append(signal.getsignal(signal.SIGINT)) or 0)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(SystemExit) as exit_:
            cli.run()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert exit_.value.code == 0 and seen == [signal.default_int_handler]
