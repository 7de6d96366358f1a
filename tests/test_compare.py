"""Comparison reports from synthetic results (no training), and `compare` end to end on a tiny budget."""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TINY_PPO
from test_leaderboard import _record as _leaderboard_record

from rims_rl.app import compare
from rims_rl.app.compare import CompareRequest, CompareResult, run_compare
from rims_rl.app.config import resolve_config
from rims_rl.app.curves import read_learning_curve
from rims_rl.app.evaluation import EvalResult
from rims_rl.app.jobs import Backend
from rims_rl.app.records import read_record
from rims_rl.app.report import write_report
from rims_rl.app.summary import OOD_LABEL, improvement_rows, summary_rows
from rims_rl.envs import EnvSpec, Suite, get_suite

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _records() -> list[dict]:
    """4 seeds x 2 agents x (train env + 2 variants), with hand-checkable returns."""
    returns = {
        # agent -> env -> per-seed mean returns
        "rims_ppo": {"train": [0.1, 0.2, 0.3, 0.4], "6x6": [0.5, 0.5, 0.7, 0.9], "8x8": [0.0, 0.2, 0.2, 0.8]},
        "lstm_ppo": {"train": [0.0, 0.0, 0.0, 1.0], "6x6": [0.1, 0.2, 0.3, 0.4], "8x8": [0.0, 0.0, 0.0, 0.0]},
    }
    ids = {
        "train": "MiniGrid-DoorKey-5x5-v0",
        "6x6": "MiniGrid-DoorKey-6x6-v0",
        "8x8": "MiniGrid-DoorKey-8x8-v0",
    }
    recs = []
    for agent, envs in returns.items():
        for env, per_seed in envs.items():
            for seed, ret in enumerate(per_seed):
                recs.append(
                    {
                        "agent": agent,
                        "seed": seed,
                        "env": env,
                        "env_id": ids[env],
                        "is_train": env == "train",
                        "mean_return": ret,
                        "std_return": 0.0,
                        "success_rate": 1.0 if ret > 0.25 else 0.0,
                        "n_episodes": 2,
                        "returns": [ret, ret],
                        "timesteps": 128,
                        "run_dir": f"runs/{agent}-seed{seed}",
                    }
                )
    return recs


def _curves() -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    steps = np.array([0.0, 64.0, 128.0])
    return {
        "rims_ppo": [(steps, np.array([0.0, 0.1, 0.2]) + s) for s in (0.0, 0.1)],
        "lstm_ppo": [(steps, np.array([0.0, 0.05, 0.1]) + s) for s in (0.0, 0.1)],
    }


def test_summarize_numbers() -> None:
    rows = {(r["agent"], r["env"]): r for r in summary_rows(_records(), reps=500)}
    r = rows[("rims_ppo", "train")]
    assert r["n_runs"] == 4 and r["is_train"]
    assert r["iqm"] == pytest.approx(0.25)  # middle two of (0.1, 0.2, 0.3, 0.4)
    assert r["mean"] == pytest.approx(0.25)
    assert r["success"] == pytest.approx(0.5)
    r = rows[("lstm_ppo", "train")]
    assert r["iqm"] == pytest.approx(0.0) and r["mean"] == pytest.approx(0.25)  # IQM drops the outlier
    assert rows[("rims_ppo", "6x6")]["iqm"] == pytest.approx(0.6)
    assert rows[("lstm_ppo", "8x8")]["iqm_lo"] == rows[("lstm_ppo", "8x8")]["iqm_hi"] == 0.0
    ood = rows[("rims_ppo", OOD_LABEL)]  # each run's mean over 6x6 and 8x8: 0.25, 0.35, 0.45, 0.85
    assert ood["n_runs"] == 4
    assert ood["iqm"] == pytest.approx(0.40)
    assert ood["success"] == pytest.approx(np.mean([0.5, 0.5, 0.5, 1.0]))
    for row in rows.values():
        assert row["iqm_lo"] <= row["iqm"] <= row["iqm_hi"]


def test_duplicating_variants_does_not_narrow_any_ood_interval() -> None:
    """The variants share their runs: a suite listing each variant twice holds no more evidence."""
    records = _records()
    doubled = records + [{**r, "env": f"{r['env']}-again"} for r in records if not r["is_train"]]

    def ood_rows(recs: list[dict]) -> list[dict]:
        summary = [r for r in summary_rows(recs, reps=500) if r["env"] == OOD_LABEL]
        better = [
            r for r in improvement_rows(recs, "rims_ppo", "lstm_ppo", reps=500) if r["env"] == OOD_LABEL
        ]
        return summary + better

    for once, twice in zip(ood_rows(records), ood_rows(doubled), strict=True):
        key = "iqm" if "iqm" in once else "p"
        assert twice[f"{key}_hi"] - twice[f"{key}_lo"] >= once[f"{key}_hi"] - once[f"{key}_lo"] - 1e-12
        assert twice[key] == pytest.approx(once[key])
    assert len(ood_rows(records)) == 3


def test_write_report_from_synthetic_results(tmp_path: Path) -> None:
    cmd = "python train.py compare --suite minigrid-doorkey --seeds 4"
    paths = write_report(
        tmp_path, _records(), _curves(), command=cmd, meta={"seeds": 4}, reps=500, machine={"cpu_count": "2"}
    )
    text = (tmp_path / "report.md").read_text()
    lines = text.splitlines()
    assert lines[0].startswith("# ") and cmd in lines[:8]
    assert "| Env | Agent | Runs | IQM [95% CI] | Mean [95% CI] | Median | Success rate [95% CI] |" in text
    row = next(ln for ln in lines if ln.startswith("| train (MiniGrid-DoorKey-5x5-v0) | rims_ppo |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "4"
    assert cells[3].startswith("0.25 [") and cells[4].startswith("0.25 [")
    assert cells[5] == "0.25"  # median of (0.1, 0.2, 0.3, 0.4)
    assert cells[6].startswith("0.50 [")
    lstm = next(ln for ln in lines if ln.startswith("| train (MiniGrid-DoorKey-5x5-v0) | lstm_ppo |"))
    assert "| 0.00 [" in lstm
    assert "| 6x6 | rims_ppo | 4 | 0.60 [" in text
    assert "P(rims_ppo > lstm_ppo)" in text
    assert "| 6x6 | 1.00 [1.00, 1.00] |" in text  # every rims run beats every lstm run on 6x6
    assert "| train (MiniGrid-DoorKey-5x5-v0) | 0.75 [" in text  # (0.1..0.4) vs (0, 0, 0, 1): 12 of 16 pairs
    assert "- cpu_count: 2" in text
    for name in ("learning_curves.png", "ood_bars.png"):
        assert f"]({name})" in text
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    assert set(paths) >= {"report", "results_json", "results_csv", "learning_curves", "ood_bars"}

    data = json.loads((tmp_path / "results.json").read_text())
    assert data["command"] == cmd and len(data["records"]) == 24
    assert {(s["agent"], s["env"]) for s in data["summary"]} >= {("rims_ppo", "8x8"), ("lstm_ppo", "train")}
    with (tmp_path / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24 and float(rows[0]["mean_return"]) == pytest.approx(0.1)


def test_every_agent_is_compared_with_the_lstm_baseline(tmp_path: Path) -> None:
    """Three agents: P(x > lstm_ppo) for each other agent, whatever the order; without lstm_ppo, the
    first two agents."""
    spatial = [
        {**r, "agent": "rims_spatial_ppo", "mean_return": 1.0} for r in _records() if r["agent"] == "rims_ppo"
    ]
    recs = [*spatial, *_records()]  # lstm_ppo is neither first nor second
    text = write_report(tmp_path / "a", recs, reps=200, machine={})["report"].read_text()
    assert "P(rims_spatial_ppo > lstm_ppo)" in text and "P(rims_ppo > lstm_ppo)" in text
    assert "P(rims_spatial_ppo > rims_ppo)" not in text
    spatial_section = text.split("P(rims_spatial_ppo > lstm_ppo)")[1].split("## ")[0]
    assert "| 6x6 | 1.00 [1.00, 1.00] |" in spatial_section  # 1.0 beats every lstm run
    data = json.loads((tmp_path / "a" / "results.json").read_text())
    assert {(r["x"], r["y"]) for r in data["probability_of_improvement"]} == {
        ("rims_spatial_ppo", "lstm_ppo"),
        ("rims_ppo", "lstm_ppo"),
    }
    no_lstm = [r for r in recs if r["agent"] != "lstm_ppo"]
    text = write_report(tmp_path / "b", no_lstm, reps=200, machine={})["report"].read_text()
    assert text.count("## Probability of improvement") == 1 and "P(rims_spatial_ppo > rims_ppo)" in text


def test_report_without_curves_or_second_agent(tmp_path: Path) -> None:
    recs = [r for r in _records() if r["agent"] == "rims_ppo"]
    paths = write_report(tmp_path, recs, curves=None, reps=200, machine={})
    text = paths["report"].read_text()
    assert "Probability of improvement" not in text and "learning_curves.png" not in text
    assert not (tmp_path / "learning_curves.png").exists() and (tmp_path / "ood_bars.png").exists()


def test_read_learning_curve_csv_and_tensorboard(tmp_path: Path) -> None:
    csv_dir = tmp_path / "csv_run"
    csv_dir.mkdir()
    (csv_dir / "progress.csv").write_text(
        "time/total_timesteps,rollout/ep_rew_mean,train/loss\n64,0.1,1.0\n128,,0.5\n192,0.3,0.2\n"
    )
    steps, vals = read_learning_curve(csv_dir)
    assert steps.tolist() == [64.0, 192.0] and vals == pytest.approx([0.1, 0.3])
    (csv_dir / "progress-resumed-192.csv").write_text(
        "time/total_timesteps,rollout/ep_rew_mean\n192,0.3\n256,0.5\n"
    )  # a resumed run's second log file continues the curve
    steps, vals = read_learning_curve(csv_dir)
    assert steps.tolist() == [64.0, 192.0, 256.0] and vals == pytest.approx([0.1, 0.3, 0.5])

    from torch.utils.tensorboard import SummaryWriter

    tb_dir = tmp_path / "tb_run" / "RecurrentPPO_1"
    writer = SummaryWriter(str(tb_dir))
    for step, value in ((64, 0.2), (128, 0.4)):
        writer.add_scalar("rollout/ep_rew_mean", value, step)
    writer.close()
    steps, vals = read_learning_curve(tmp_path / "tb_run")
    assert steps.tolist() == [64.0, 128.0] and vals == pytest.approx([0.2, 0.4])
    assert read_learning_curve(tmp_path / "tb_run", tag="missing/tag") is None


# ------------------------------------------------------------------ driver with a fake backend (fast)


def compare_run(backend: Backend | None = None, **fields: Any) -> CompareResult:
    """``run_compare`` of a ``CompareRequest`` with these fields."""
    return run_compare(CompareRequest(**fields), backend)


def _fake_backend(monkeypatch: pytest.MonkeyPatch) -> tuple[Backend, list[tuple[str, int]]]:
    """Fake train/evaluate functions to test the driver without training; also the CLI's default."""
    calls: list[tuple[str, int]] = []

    def train_run(agent: str, *, seed: int, run_dir: Path, timesteps: int, **kw: Any) -> Path:
        calls.append((agent, seed))
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        config = resolve_config(  # the config.json a real run writes
            agent,
            kw.get("env_id"),
            suite=kw.get("suite"),
            timesteps=timesteps,
            seed=seed,
            n_envs=kw.get("n_envs"),
            overrides=kw.get("overrides"),
        )
        (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
        (run_dir / "model.zip").write_bytes(b"zip")
        bonus = 0.2 if agent == "rims_ppo" else 0.0
        rows = "".join(f"{t},{bonus + t / 1000 + seed / 100}\n" for t in (32, 64, 96, 128))
        (run_dir / "logs").mkdir(exist_ok=True)
        (run_dir / "logs" / "progress.csv").write_text("time/total_timesteps,rollout/ep_rew_mean\n" + rows)
        return run_dir

    def evaluate_checkpoint(
        checkpoint: Path, target: Suite, n_episodes: int, **_: object
    ) -> list[EvalResult]:
        run = Path(checkpoint).parent.name
        bonus = 0.2 if run.startswith("rims_ppo") else 0.0
        return [
            EvalResult(
                env=spec.name,
                env_id=spec.env_id,
                episodes=n_episodes,
                mean_return=bonus + 0.1 * i,
                std_return=0.0,
                ci95_low=bonus + 0.1 * i,
                ci95_high=bonus + 0.1 * i,
                success_rate=1.0 if bonus else 0.0,
                mean_length=10.0,
                deterministic=True,
                seed=0,
                checkpoint=str(checkpoint),
                num_timesteps=128,
                returns=[bonus + 0.1 * i] * n_episodes,
            )
            for i, spec in enumerate(target.specs() if isinstance(target, Suite) else [target])
        ]

    backend = Backend(train=train_run, evaluate=evaluate_checkpoint)
    monkeypatch.setattr(compare, "LOCAL", backend)  # what train.py's compare uses by default
    return backend, calls


def test_compare_driver_skips_finished_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    backend, calls = _fake_backend(monkeypatch)
    kw = dict(
        backend=backend,
        suite="minigrid-doorkey",
        seeds=2,
        timesteps=128,
        workers=1,
        out=tmp_path,
        eval_episodes=2,
        reps=200,
        progress=False,
        command_line="python train.py compare --seeds 2",
    )
    paths = compare_run(**kw).files
    assert sorted(calls) == [("lstm_ppo", 0), ("lstm_ppo", 1), ("rims_ppo", 0), ("rims_ppo", 1)]
    text = paths["report"].read_text()
    assert "| train (MiniGrid-DoorKey-5x5-v0) | rims_ppo | 2 | 0.20 [" in text
    assert "| 16x16 | lstm_ppo | 2 | 0.30 [" in text
    assert (tmp_path / "learning_curves.png").exists() and (tmp_path / "ood_bars.png").exists()
    assert len(json.loads(paths["results_json"].read_text())["records"]) == 2 * 2 * 4

    calls.clear()
    compare_run(**kw)  # everything finished: nothing is trained again
    assert calls == []
    compare_run(**{**kw, "seeds": 3})  # one more seed: only the new runs train
    assert sorted(calls) == [("lstm_ppo", 2), ("rims_ppo", 2)]
    calls.clear()
    compare_run(**{**kw, "eval_episodes": 3})  # new eval settings: re-evaluated, not retrained
    assert calls == []


def test_a_suite_that_changed_is_evaluated_again_not_trained_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A variant added to a suite (or pointed at another id) after its runs finished: the next compare
    evaluates each final model on the suite as it is now and trains nothing. A run whose model is gone
    cannot be evaluated again: one error naming its record and the fix."""
    from rims_rl.app.errors import UserError

    backend, calls = _fake_backend(monkeypatch)
    suite = tmp_path / "mine.yml"
    head = "name: mine\ntrain: {id: MiniGrid-DoorKey-5x5-v0}\nvariants:\n"
    suite.write_text(head + "  - {name: big, id: MiniGrid-DoorKey-8x8-v0}\n")
    kw = dict(
        backend=backend,
        suite=str(suite),
        seeds=2,
        timesteps=128,
        workers=1,
        out=tmp_path / "c",
        eval_episodes=2,
        reps=200,
        progress=False,
        command_line="python train.py compare --suite mine.yml --seeds 2",
    )
    compare_run(**kw)
    assert len(calls) == 4

    def scored_envs() -> set[str]:
        return {r["env"] for r in json.loads((tmp_path / "c" / "results.json").read_text())["records"]}

    assert scored_envs() == {"train", "big"}
    shutil.rmtree(tmp_path / "c" / "runs" / "rims_ppo-seed1" / "logs")  # its curve lives on in the record
    suite.write_text(
        head
        + "  - {name: big, id: MiniGrid-DoorKey-8x8-v0}\n  - {name: bigger, id: MiniGrid-DoorKey-16x16-v0}\n"
    )
    result = compare_run(**kw)
    assert len(calls) == 4 and (result.trained, result.evaluated) == (0, 4)  # evaluated again only
    kept = json.loads((tmp_path / "c" / "records" / "rims_ppo-seed1.json").read_text())["curve"]
    assert kept is not None and len(kept["steps"]) == 4
    assert scored_envs() == {"train", "big", "bigger"}
    suite.write_text(head + "  - {name: big, id: MiniGrid-DoorKey-6x6-v0}\n")  # a name pointed elsewhere
    compare_run(**kw)
    assert len(calls) == 4 and scored_envs() == {"train", "big"}
    records = json.loads((tmp_path / "c" / "results.json").read_text())["records"]
    assert {r["env_id"] for r in records if r["env"] == "big"} == {"MiniGrid-DoorKey-6x6-v0"}

    moved = "name: mine\ntrain: {id: MiniGrid-DoorKey-6x6-v0}\nvariants:\n"
    moved += "  - {name: big, id: MiniGrid-DoorKey-6x6-v0}\n"
    suite.write_text(moved)  # another training env: another experiment, never evaluated again
    was = r"training env: run has \['train', 'MiniGrid-DoorKey-5x5-v0', \{\}\]"
    with pytest.raises(UserError, match=was):
        compare_run(**kw)
    for seed in (0, 1):  # only their committed records are left
        shutil.rmtree(tmp_path / "c" / "runs" / f"lstm_ppo-seed{seed}")
    with pytest.raises(
        UserError,
        match=r"lstm_ppo-seed0\.json: .*'MiniGrid-DoorKey-5x5-v0'.* as the run's training env",
    ):
        compare_run(**{**kw, "agents": ("lstm_ppo",)})
    assert len(calls) == 4

    suite.write_text(head + "  - {name: big, id: MiniGrid-DoorKey-8x8-v0}\n")  # back, but scored on 6x6
    with pytest.raises(UserError, match=r"lstm_ppo-seed0\.json holds this run scored on the suite's envs as"):
        compare_run(**{**kw, "agents": ("lstm_ppo",)})  # no model to score it on the suite as it is now
    assert len(calls) == 4
    rims = {**kw, "agents": ("rims_ppo",)}
    assert compare_run(**rims).evaluated == 2  # their models are here: scored on 8x8 again
    assert compare_run(**rims).skipped == 2
    suite.write_text(head + "  - {name: big, id: MiniGrid-DoorKey-8x8-v0, kwargs: {max_steps: 50}}\n")
    assert compare_run(**rims).evaluated == 2  # same name and id, other kwargs: another evaluation
    assert len(calls) == 4
    # the training env's own kwargs changed: the models learned another task, so not evaluated again
    shorter = head.replace("5x5-v0}", "5x5-v0, kwargs: {max_steps: 50}}")
    suite.write_text(shorter + "  - {name: big, id: MiniGrid-DoorKey-8x8-v0}\n")
    with pytest.raises(UserError, match=r"training env: run has .*'MiniGrid-DoorKey-5x5-v0'"):
        compare_run(**rims)
    assert len(calls) == 4


def _cli_compare_argv(out: Path, *extra: str) -> list[str]:
    """A tiny ``compare`` command line on MultiRoom (one seed, 64 steps) into ``out``."""
    argv = ["compare", "--suite", "minigrid-multiroom", "--seeds", "1", "--timesteps", "64", "--n-envs", "1"]
    sets = ["--set", "ppo.n_steps=16", "--set", "ppo.batch_size=16"]
    return [*argv, "--out", str(out), "--eval-episodes", "2", *sets, *extra]


def _load_train_cli() -> object:
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "train.py"
    spec = importlib.util.spec_from_file_location("train_cli_for_compare_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_cli_compare_arguments_reach_run_compare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, calls = _fake_backend(monkeypatch)
    cli = _load_train_cli()
    argv = _cli_compare_argv(tmp_path)
    monkeypatch.setattr("sys.argv", ["train.py", *argv])  # the report quotes the process's command line
    assert cli.main(argv) == 0
    assert sorted(calls) == [("lstm_ppo", 0), ("rims_ppo", 0)]
    text = (tmp_path / "report.md").read_text()
    command = "python train.py " + " ".join(argv)  # shlex.join leaves these arguments unquoted
    assert f"```\n{command}\n```" in text
    stored = json.loads((tmp_path / "runs" / "rims_ppo-seed0" / "compare_eval.json").read_text())
    assert stored["job"]["overrides"] == {"ppo.n_steps": 16, "ppo.batch_size": 16}
    assert stored["job"]["deterministic"] is False  # the evaluation protocol: sampled actions


def test_cli_compare_deterministic_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_backend(monkeypatch)
    cli = _load_train_cli()
    argv = _cli_compare_argv(tmp_path, "--deterministic")
    monkeypatch.setattr("sys.argv", ["train.py", *argv])
    assert cli.main(argv) == 0
    stored = json.loads((tmp_path / "runs" / "lstm_ppo-seed0" / "compare_eval.json").read_text())
    assert stored["job"]["deterministic"] is True
    assert "deterministic_eval=True" in (tmp_path / "report.md").read_text()


# --------------------------------------------------------------------- end to end: real training


def test_compare_end_to_end_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """2 agents x 2 seeds on the cheapest suite (MultiRoom: episodes of at most 40-120 steps)."""

    kw = dict(
        agents=["rims_ppo", "lstm_ppo"],
        suite="minigrid-multiroom",
        seeds=2,
        timesteps=64,
        n_envs=1,
        workers=2,
        out=tmp_path,
        eval_episodes=2,
        overrides=dict(TINY_PPO),
        device="cpu",
        reps=200,
        progress=False,
    )
    paths = compare_run(**kw).files
    assert "4 trained, 0 evaluated again, 0 skipped, 0 failed" in capsys.readouterr().out
    text = paths["report"].read_text()
    for env in ("train (MiniGrid-MultiRoom-N2-S4-v0)", "N4-S5", "N6"):
        for agent in ("rims_ppo", "lstm_ppo"):
            assert f"| {env} | {agent} | 2 | " in text
    assert "P(rims_ppo > lstm_ppo)" in text
    data = json.loads(paths["results_json"].read_text())
    assert len(data["records"]) == 2 * 2 * 3
    assert all(len(r["returns"]) == 2 for r in data["records"])
    for name in ("learning_curves.png", "ood_bars.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC

    models = sorted((tmp_path / "runs").glob("*/model.zip"))
    assert len(models) == 4
    mtimes = [m.stat().st_mtime_ns for m in models]
    compare_run(**kw)  # everything is finished: no training, no evaluation, same report
    assert "0 trained, 0 evaluated again, 4 skipped, 0 failed" in capsys.readouterr().out
    assert [m.stat().st_mtime_ns for m in models] == mtimes


def test_compare_keeps_each_runs_policy_shift_and_unit_usage_in_its_record(tmp_path: Path) -> None:
    """``--log-policy-shift`` (issue 41.3) reaches every run, and the records keep what the runs logged, so
    the diagnostic survives with the committed records; without the flag no run measures it."""
    kw = dict(
        agents=["rims_ppo"],
        suite="minigrid-multiroom",
        seeds=1,
        timesteps=64,
        n_envs=1,
        workers=1,
        eval_episodes=1,
        overrides=dict(TINY_PPO),
        device="cpu",
        reps=200,
        progress=False,
    )
    compare_run(**kw, out=tmp_path / "kl", log_policy_shift=True)
    record = read_record(tmp_path / "kl" / "runs" / "rims_ppo-seed0")
    assert record is not None
    steps, kl = record.diagnostics["train/policy_kl"]
    # one value per update of 16 steps, logged with the update's train/loss at the next rollout's dump (as
    # SB3 logs train/*), so the last update is not in the log
    assert steps.tolist() == [32.0, 48.0, 64.0]
    assert np.isfinite(kl).all() and (kl >= 0).all() and (kl > 0).any()
    usage = record.diagnostics["rims/usage_entropy"][1]
    assert ((usage > 0) & (usage <= 1)).all()
    shutil.copytree(tmp_path / "kl" / "records", tmp_path / "committed" / "records")  # what is committed
    again = read_record(tmp_path / "committed" / "runs" / "rims_ppo-seed0")
    assert again is not None
    np.testing.assert_array_equal(again.diagnostics["train/policy_kl"][1], kl)

    # evaluated again after its logs lost the KL (kept the rest): the record keeps the KL it had
    run_dir = tmp_path / "kl" / "runs" / "rims_ppo-seed0"
    for events in run_dir.rglob("events.out.tfevents.*"):
        events.unlink()
    for log in run_dir.rglob("progress*.csv"):
        rows = list(csv.DictReader(log.open()))
        fields = [f for f in rows[0] if f != "train/policy_kl"]
        with log.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    compare_run(**{**kw, "eval_episodes": 2}, out=tmp_path / "kl", log_policy_shift=True)
    kept = read_record(tmp_path / "kl" / "runs" / "rims_ppo-seed0")
    assert kept is not None and kept.records[0]["n_episodes"] == 2
    np.testing.assert_array_equal(kept.diagnostics["train/policy_kl"][1], kl)

    compare_run(**kw, out=tmp_path / "plain")
    plain = read_record(tmp_path / "plain" / "runs" / "rims_ppo-seed0")
    assert plain is not None and "train/policy_kl" not in plain.diagnostics


def test_compare_checks_everything_before_training_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rims_rl.app.errors import UserError

    backend, calls = _fake_backend(monkeypatch)
    kw = dict(
        backend=backend, suite="minigrid-doorkey", seeds=1, workers=1, out=tmp_path / "c", progress=False
    )
    for bad, message in (
        ({"overrides": ["ppo.lr=1"]}, "learning_rate"),
        ({"timesteps": -5}, "timesteps"),
        ({"eval_episodes": 0}, "eval-episodes"),
        ({"overrides": ["ppo.batch_size=300"]}, "batch_size"),
    ):
        with pytest.raises(UserError, match=message):
            compare_run(**{**kw, **bad})
    assert calls == [] and not (tmp_path / "c").exists()


def test_compare_refuses_an_out_folder_of_other_settings_and_keeps_its_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rims_rl.app.errors import UserError

    backend, calls = _fake_backend(monkeypatch)
    kw = dict(backend=backend, suite="minigrid-doorkey", seeds=1, timesteps=128, workers=1, out=tmp_path)
    report = compare_run(**kw, progress=False, eval_episodes=2, reps=100).files["report"]
    before = report.read_text()
    calls.clear()
    with pytest.raises(UserError, match="a run with other settings"):
        compare_run(**{**kw, "timesteps": 256}, progress=False, eval_episodes=2, reps=100)
    assert calls == [] and report.read_text() == before


def test_cli_compare_exits_non_zero_when_a_run_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, _ = _fake_backend(monkeypatch)

    def failing_train(agent: str, **kwargs: object) -> Path:
        if agent == "lstm_ppo":
            raise RuntimeError("this run breaks")
        return backend.train(agent, **kwargs)

    monkeypatch.setattr(compare, "LOCAL", Backend(train=failing_train, evaluate=backend.evaluate))
    cli = _load_train_cli()
    argv = _cli_compare_argv(tmp_path)
    assert cli.main(argv) == 1
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert [r["agent"] for r in runs if r["error"]] == ["lstm_ppo"]


def test_compare_continues_from_committed_records_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A later session on a new machine has only the committed records: finished runs are not redone."""
    import shutil

    backend, calls = _fake_backend(monkeypatch)
    kw = dict(backend=backend, suite="minigrid-doorkey", seeds=2, timesteps=128, workers=1, out=tmp_path)
    kw.update(eval_episodes=2, reps=100, progress=False)
    first = compare_run(**kw).files["report"].read_text()
    records = sorted((tmp_path / "records").glob("*.json"))
    assert [r.name for r in records] == [
        f"{a}-seed{s}.json" for a in ("lstm_ppo", "rims_ppo") for s in (0, 1)
    ]
    stored = json.loads(records[0].read_text())
    assert (
        stored["curve"]["steps"] and len(stored["records"]) == 4
    )  # scores per env and the curve, no weights
    assert stored["train_seconds"] >= 0.0  # trained here from scratch: its wall time gives the throughput
    shutil.rmtree(tmp_path / "runs")  # what a fresh clone has: the records, not the run directories
    calls.clear()
    again = compare_run(**kw).files["report"].read_text()
    assert calls == []
    assert again.split("## Final evaluation")[1] == first.split("## Final evaluation")[1]
    calls.clear()
    compare_run(**{**kw, "seeds": 3})  # one more seed: only it trains
    assert sorted(calls) == [("lstm_ppo", 2), ("rims_ppo", 2)]
    from rims_rl.app.errors import UserError

    with pytest.raises(UserError, match="records a run with other settings"):
        compare_run(**{**kw, "timesteps": 256})
    # Other evaluation settings (e.g. new defaults) and no model to re-evaluate: refused, not retrained.
    with pytest.raises(UserError, match="evaluated with other settings .*eval_episodes=2"):
        compare_run(**{**kw, "eval_episodes": 3})
    assert sorted(calls) == [("lstm_ppo", 2), ("rims_ppo", 2)]  # nothing trained since seed 2


def test_compare_on_a_local_ray_instance_gives_the_local_pools_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--backend ray``: every (agent, seed) a Ray task; same records and report as the local pool."""
    pytest.importorskip("ray")

    backend, _ = _fake_backend(monkeypatch)
    kw = dict(backend=backend, suite="minigrid-doorkey", seeds=2, timesteps=128, eval_episodes=2, reps=100)
    local = compare_run(**kw, out=tmp_path / "local", workers=1, progress=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    on_ray = compare_run(**kw, out=tmp_path / "ray", executor="ray", progress=False)
    assert on_ray.trained == 4 and on_ray.failed == 0
    table = "## Final evaluation"
    text = {
        k: r.files["report"].read_text().split(table)[1].split("## ")[0]
        for k, r in (("l", local), ("r", on_ray))
    }
    assert text["l"] == text["r"]
    assert sorted(p.name for p in (tmp_path / "ray" / "records").glob("*.json")) == sorted(
        p.name for p in (tmp_path / "local" / "records").glob("*.json")
    )


def test_an_out_folder_from_before_run_configs_is_not_mistaken_for_other_settings(tmp_path: Path) -> None:
    """Older config.json files kept the run's n_envs at the top level and the preset's under model."""
    from rims_rl.agents import get_preset
    from rims_rl.app.records import RunJob, config_mismatch

    run = tmp_path / "runs" / "rims_ppo-seed0"
    run.mkdir(parents=True)
    legacy = {
        "agent": "rims_ppo",
        "env": {"name": "train", "env_id": "MiniGrid-MultiRoom-N2-S4-v0", "kwargs": {}},
        "suite": "minigrid-multiroom",
        "seed": 0,
        "timesteps": 64,
        "timesteps_requested": 64,
        "n_envs": 2,
        "overrides": {},
        "model": {**get_preset("rims_ppo", "minigrid").to_dict(), "n_envs": 16},
    }
    (run / "config.json").write_text(json.dumps(legacy))
    job = RunJob(
        agent="rims_ppo", seed=0, run_dir=str(run), timesteps=64, suite="minigrid-multiroom", n_envs=2
    )
    assert config_mismatch(job) is None
    assert "n_envs" in (config_mismatch(replace(job, n_envs=4)) or "")


def test_a_run_config_that_is_not_one_is_refused_with_the_fix(tmp_path: Path) -> None:
    """config.json is parsed with ``RunConfig.from_dict`` (untrusted): a bad one is one ``UserError``
    naming the file, the problem and the fix, never a traceback or a silent match."""
    from rims_rl.app.errors import UserError
    from rims_rl.app.records import RunJob, config_mismatch

    run = tmp_path / "runs" / "rims_ppo-seed0"
    run.mkdir(parents=True)
    job = RunJob(agent="rims_ppo", seed=0, run_dir=str(run), timesteps=64, suite="minigrid-multiroom")
    config = resolve_config("rims_ppo", suite="minigrid-multiroom", timesteps=64).to_dict()
    (run / "config.json").write_text(json.dumps(config))
    assert config_mismatch(job) is None
    assert "seed: run has 0, asked 1" in (config_mismatch(replace(job, seed=1)) or "")
    for bad, needle in (
        ({**config, "seed": -3}, r"seed must be an integer in \[0, "),
        ({**config, "model": {"agent": "rims_ppo"}}, "lacks"),
        ({k: v for k, v in config.items() if k != "env"}, "needs 'model' and 'env'"),
        ({**config, "overrides": [1, 2]}, "overrides must be a mapping"),
        ({**config, "command": 5}, "command must be a list"),
    ):
        (run / "config.json").write_text(json.dumps(bad))
        with pytest.raises(UserError, match=needle) as info:
            config_mismatch(job)
        assert "config.json is not a valid run config" in str(info.value) and "delete" in str(info.value)


RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def _one_record_per_result() -> list[Path]:
    """The first committed record of every folder under docs/results (comparisons and tunings)."""
    first: dict[str, Path] = {}
    for path in sorted(RESULTS.glob("**/records/*.json")):
        first.setdefault(path.relative_to(RESULTS).parts[0], path)
    return list(first.values())


@pytest.mark.parametrize("record", _one_record_per_result(), ids=lambda p: str(p.relative_to(RESULTS)))
def test_committed_records_still_load(record: Path) -> None:
    """Records committed under docs/results (written by older versions) are read back whole: the job they
    describe, its scores checked against it, and its curve."""
    from rims_rl.app.records import RunJob, finished_records, read_record, record_path

    stored = json.loads(record.read_text())
    run_dir = record.parent.parent / "runs" / record.stem
    fields = {k: v for k, v in stored["job"].items() if k != "run_dir"}
    job = RunJob(run_dir=str(run_dir), **fields)
    assert record_path(job.run_dir) == record
    loaded = read_record(job.run_dir)
    assert loaded is not None and loaded.is_of(job) and loaded.curve is not None
    found = finished_records(job)
    assert found is not None and found[1] is not None
    scores, _ = found
    assert len(scores) == len(stored["records"]) and {r["agent"] for r in scores} == {job.agent}


def test_tune_gives_every_agent_the_same_budget_and_selects_on_the_training_env_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scores here rise with ppo.n_epochs on the training env; the OOD variants are never evaluated."""
    from rims_rl.app.tune import TUNE_SEED0, run_tune

    backend, calls = _fake_backend(monkeypatch)
    evaluated: list[str] = []

    def evaluate(checkpoint: Path, target: object, n_episodes: int, **kw: Any) -> list[EvalResult]:
        evaluated.append(target.env_id if isinstance(target, EnvSpec) else str(target))
        config = json.loads((Path(checkpoint).parent / "config.json").read_text())
        epochs = config["overrides"].get("ppo.n_epochs", 1)
        (result,) = backend.evaluate(checkpoint, get_suite("minigrid-doorkey"), n_episodes)[:1]
        return [replace(result, mean_return=float(epochs) / 10, returns=[float(epochs) / 10] * n_episodes)]

    tuning = Backend(train=backend.train, evaluate=evaluate)
    grid = ["ppo.n_epochs=2,4,3"]
    chosen = run_tune("minigrid-doorkey", grid, seeds=2, timesteps=128, out=tmp_path / "t", backend=tuning)
    assert chosen == {"rims_ppo": {"ppo.n_epochs": 4}, "lstm_ppo": {"ppo.n_epochs": 4}}
    assert set(evaluated) == {"MiniGrid-DoorKey-5x5-v0"}  # the training env only, never a variant
    assert {s for _, s in calls} == {TUNE_SEED0, TUNE_SEED0 + 1}  # disjoint from compare's 0, 1, ...
    tune = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert [len(tune["agents"][a]["tried"]) for a in ("rims_ppo", "lstm_ppo")] == [3, 3]
    assert "| rims_ppo | ppo.n_epochs=4 | 0.400 |" in (tmp_path / "t" / "tune.md").read_text()
    calls.clear()
    result = compare_run(
        backend=backend,
        suite="minigrid-doorkey",
        seeds=1,
        timesteps=128,
        workers=1,
        out=tmp_path / "c",
        eval_episodes=2,
        reps=100,
        progress=False,
        tuned=tmp_path / "t" / "tune.json",
    )
    stored = json.loads((tmp_path / "c" / "runs" / "rims_ppo-seed0" / "config.json").read_text())
    assert stored["overrides"] == {"ppo.n_epochs": 4} and "tuned=" in result.files["report"].read_text()


def test_tune_gives_each_agent_its_own_axes_with_the_same_number_of_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 41: RIMs tuned on its own knobs (tied n_units+k), the LSTM on its width, both over the shared
    learning rates, 4 trials each; grids giving one agent more trials are refused before any run."""
    from rims_rl.app.errors import UserError
    from rims_rl.app.tune import agent_configurations, parse_agent_grid, parse_grid, run_tune

    own = parse_agent_grid(
        [
            "rims_ppo:policy_kwargs.rims_kwargs.n_units+policy_kwargs.rims_kwargs.k=6+4,4+2",
            "lstm_ppo:policy_kwargs.lstm_hidden_size=8,16",
        ]
    )
    configs = agent_configurations(["rims_ppo", "lstm_ppo"], parse_grid(["ppo.n_epochs=1,2"]), own)
    assert [len(c) for c in configs.values()] == [4, 4]
    assert {
        "ppo.n_epochs": 1,
        "policy_kwargs.rims_kwargs.n_units": 4,
        "policy_kwargs.rims_kwargs.k": 2,
    } in configs["rims_ppo"]
    assert all(
        c["policy_kwargs.rims_kwargs.k"] < c["policy_kwargs.rims_kwargs.n_units"] for c in configs["rims_ppo"]
    )
    with pytest.raises(UserError, match="same number of trials; the grids give rims_ppo 6, lstm_ppo 2"):
        agent_configurations(
            ["rims_ppo", "lstm_ppo"],
            {},
            parse_agent_grid(["rims_ppo:ppo.n_epochs=1,2,3,4,5,6", "lstm_ppo:ppo.n_epochs=1,2"]),
        )
    with pytest.raises(UserError, match="has 1 values for 2 keys"):
        parse_agent_grid(["rims_ppo:a+b=1,2"])

    backend, calls = _fake_backend(monkeypatch)
    grids = ["rims_ppo:ppo.n_epochs=1,2", "lstm_ppo:ppo.n_epochs=3,4"]
    run_tune(
        "minigrid-doorkey", [], agent_grids=grids, seeds=1, timesteps=128, out=tmp_path / "t", backend=backend
    )
    tune = json.loads((tmp_path / "t" / "tune.json").read_text())
    tried = {a: [t["overrides"] for t in tune["agents"][a]["tried"]] for a in ("rims_ppo", "lstm_ppo")}
    assert tried == {
        "rims_ppo": [{"ppo.n_epochs": 1}, {"ppo.n_epochs": 2}],
        "lstm_ppo": [{"ppo.n_epochs": 3}, {"ppo.n_epochs": 4}],
    }
    assert tune["agent_grids"]["lstm_ppo"] == {"ppo.n_epochs": [3, 4]} and len(calls) == 4

    # --set fixes a setting for every trial, and the choices carry it to compare --tuned
    chosen = run_tune(
        "minigrid-doorkey", ["ppo.n_epochs=1,2"], ["lstm_ppo"], overrides=["ppo.gamma=0.9"], seeds=1,
        timesteps=128, out=tmp_path / "s", backend=backend,
    )  # fmt: skip
    stored = json.loads(next((tmp_path / "s").glob("lstm_ppo/config0/runs/*/config.json")).read_text())
    assert stored["overrides"]["ppo.gamma"] == 0.9 and chosen["lstm_ppo"]["ppo.gamma"] == 0.9
    assert (
        json.loads((tmp_path / "s" / "tune.json").read_text())["agents"]["lstm_ppo"]["chosen"]["ppo.gamma"]
        == 0.9
    )
    assert "Fixed for every trial (--set): ppo.gamma=0.9" in (tmp_path / "s" / "tune.md").read_text()
    with pytest.raises(UserError, match="both tuned .* and fixed"):
        run_tune("minigrid-doorkey", ["ppo.gamma=0.9,0.99"], overrides=["ppo.gamma=0.9"], out=tmp_path / "x")


def test_ctrl_c_in_compare_writes_the_partial_report_and_says_how_to_continue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rims_rl.app.runs import TrainingInterrupted

    backend, _ = _fake_backend(monkeypatch)

    def interrupted_train(agent: str, **kwargs: Any) -> Path:
        if agent == "lstm_ppo":  # Ctrl-C during the second run: it saved a checkpoint and stopped
            raise TrainingInterrupted("interrupted", Path(kwargs["run_dir"]), Path(kwargs["run_dir"]))
        return backend.train(agent, **kwargs)

    monkeypatch.setattr(compare, "LOCAL", Backend(train=interrupted_train, evaluate=backend.evaluate))
    cli = _load_train_cli()
    argv = _cli_compare_argv(tmp_path)
    monkeypatch.setattr("sys.argv", ["train.py", *argv])
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert "Continue with the same command: python train.py compare" in err and "Traceback" not in err
    records = json.loads((tmp_path / "results.json").read_text())["records"]
    assert {r["agent"] for r in records} == {"rims_ppo"}  # the finished run is in the partial report


@pytest.mark.parametrize(
    ("how", "code"),
    [
        ("ctrl-c", 130),
        ("ctrl-c-while-workers-start", 130),
        ("sigterm", 143),
        ("sigterm-to-every-process", 143),
        ("parent-killed", None),
    ],
)
def test_a_signal_stops_every_worker_of_a_parallel_compare(
    tmp_path: Path, how: str, code: int | None
) -> None:
    """``--workers 2`` with a third run queued. Ctrl-C (SIGINT to the process group, as a terminal sends
    it, also while the workers are still starting), SIGTERM to the parent, or SIGTERM to every process
    (systemd, Slurm): each running run saves one checkpoint (a graceful stop, not an abort), the queued run
    never starts, the partial report is written, the command to continue is printed, 128 + signum.
    SIGKILL of the parent: the orphaned workers save a checkpoint, start nothing more, and exit."""
    import os
    import signal
    import time

    from rims_rl.app.rundir import locked

    agents = ["rims_ppo", "lstm_ppo", "ppo"]
    argv = _cli_compare_argv(tmp_path / "c", "--workers", "2", "--agents", *agents)
    argv[argv.index("--timesteps") + 1] = "1000000"  # never finishes: the signal must stop it
    stderr_path = tmp_path / "stderr.txt"
    proc = _start_cli(argv, stderr_path)
    runs = [tmp_path / "c" / "runs" / f"{agent}-seed0" for agent in agents]

    def trained(run: Path) -> bool:  # a rollout was trained: the run's CSV log has a row
        logs = list((run / "logs").glob("progress*.csv")) if (run / "logs").is_dir() else []
        return any(len(p.read_text().splitlines()) > 1 for p in logs)

    def state(run: Path) -> dict[str, Any]:
        return json.loads((run / "status.json").read_text())

    deadline = time.time() + 240
    ready = (
        (lambda: "compare runs" in stderr_path.read_text())
        if how == "ctrl-c-while-workers-start"
        else (lambda: all(trained(r) for r in runs[:2]))
    )
    while not ready():
        assert proc.poll() is None, stderr_path.read_text()
        assert time.time() < deadline, "the workers did not start training"
        time.sleep(0.05)
    if how.startswith("ctrl-c"):
        os.killpg(proc.pid, signal.SIGINT)
    elif how == "sigterm-to-every-process":
        for pid in [proc.pid, *_children(proc.pid)]:
            os.kill(pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    _wait_or_dump_stacks(proc, stderr_path, timeout=300)
    err = stderr_path.read_text()
    started = runs[:2] if how != "ctrl-c-while-workers-start" else []
    if code is None:  # the workers outlive their parent only long enough to save
        deadline = time.time() + 120
        while any(state(r)["state"] == "running" for r in started):
            assert time.time() < deadline, [state(r) for r in started]
            time.sleep(0.2)
    else:
        assert proc.returncode == code, err
        assert "Traceback" not in err, err
        assert "Continue with the same command: python " in err and "train.py compare" in err
        assert (tmp_path / "c" / "report.md").is_file()
    for run in started:
        status = state(run)
        assert status["state"] == "interrupted" and status["num_timesteps"] > 0, status
        assert "aborted" not in status["message"] and Path(status["checkpoint"]).is_file(), status
    time.sleep(1.0)  # a worker that wrongly took the queued job would have written its status by now
    for run in runs[len(started) :]:
        assert not (run / "status.json").exists(), f"{run.name} started after the signal"
    for run in started:
        deadline = time.time() + 60
        while True:  # the worker exits and its lock is free
            try:
                with locked(run):
                    break
            except Exception:
                assert time.time() < deadline, f"{run} stays locked"
                time.sleep(0.2)


def test_a_signal_that_lands_on_another_thread_still_stops_the_waiting_parent() -> None:
    """The kernel may hand a Ctrl-C to any thread of the parent (tqdm's monitor thread, say); the C
    handler there only sets a flag, and Python runs the handler in the main thread at its next bytecode.
    A parent waiting on its workers' futures without a timeout never gets there while the workers wait
    for that very stop (seen once: a hung compare on a fresh clone under load). The wait polls."""
    import signal
    import threading
    import time
    from concurrent.futures import Future

    from rims_rl.app import executors

    class Stop(Exception):
        pass

    def handler(signum: int, frame: Any) -> None:
        raise Stop

    never: Future = Future()  # a worker that stops only when told to

    def elsewhere() -> None:
        time.sleep(0.2)
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)  # to this thread, not the main one
        time.sleep(10.0)
        never.set_result(None)  # so that a broken wait ends the test instead of hanging it

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        threading.Thread(target=elsewhere, daemon=True).start()
        t0 = time.monotonic()
        with pytest.raises(Stop):
            for _ in executors._as_completed_polling([never]):
                pass
        assert time.monotonic() - t0 < 0.2 + 3 * executors.SIGNAL_POLL_S
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_kill_int_stops_a_background_compare_during_its_evaluation(tmp_path: Path) -> None:
    """A compare started in the background (``cmd &`` in a script, nohup) inherits SIGINT ignored, and
    Python then installs no handler of its own. Training has an explicit one, so ``kill -INT`` stopped
    training but was ignored during an evaluation and between runs (seen: a campaign's compare that did
    not stop on SIGINT in two minutes). It must stop there too: 130, the partial report, no traceback."""
    import os
    import signal
    import time

    argv = _cli_compare_argv(tmp_path / "c", "--agents", "ppo", "lstm_ppo")
    argv[argv.index("--eval-episodes") + 1] = "2000"  # minutes of evaluation: the signal lands inside it
    stderr_path = tmp_path / "stderr.txt"
    ignore_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731 - as a shell's `&` leaves it
    proc = _start_cli(argv, stderr_path, preexec_fn=ignore_sigint)
    model = tmp_path / "c" / "runs" / "ppo-seed0" / "model.zip"
    try:
        deadline = time.time() + 240
        while not model.exists():  # trained: the evaluation has begun
            assert proc.poll() is None, stderr_path.read_text()
            assert time.time() < deadline, "the first run did not finish training"
            time.sleep(0.05)
        time.sleep(1.0)
        os.kill(proc.pid, signal.SIGINT)  # `kill -INT PID`
        _wait_or_dump_stacks(proc, stderr_path, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (model.parent / "compare_eval.json").exists()  # the signal landed inside the evaluation
    err = stderr_path.read_text()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Continue with the same command: python " in err, err
    assert (tmp_path / "c" / "report.md").is_file()
    assert not (tmp_path / "c" / "runs" / "lstm_ppo-seed0").exists()  # the queued run never started


def _start_cli(argv: list[str], stderr_path: Path, **popen: Any) -> Any:
    """``python train.py ARGV`` in its own process group (signalled as a terminal would signal it), its
    stderr into ``stderr_path``; faulthandler on, so a hang is diagnosed by SIGABRT, which prints every
    thread's stack (``_wait_or_dump_stacks``)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    with stderr_path.open("w") as stderr:
        return subprocess.Popen(
            [sys.executable, str(root / "train.py"), *argv],
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"},
            start_new_session=True,
            **popen,
        )


def _wait_or_dump_stacks(proc: Any, stderr_path: Path, timeout: float) -> None:
    """Wait for ``proc``; past ``timeout`` fail with every process's Python stacks (SIGABRT to a process
    run with PYTHONFAULTHANDLER=1 prints them to its stderr), so a hang seen once says where it hung."""
    import os
    import signal
    import subprocess
    import time

    try:
        proc.wait(timeout=timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    pids = [*_children(proc.pid), proc.pid]  # workers run in their own process groups
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGABRT)
    time.sleep(2.0)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    pytest.fail(f"the compare did not exit within {timeout:.0f} s; its stacks:\n{stderr_path.read_text()}")


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (Linux /proc), as a tree-wide kill reaches them."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            children = task / "children"
            if children.is_file():
                kids = [int(k) for k in children.read_text().split()]
                found += kids
                todo += kids
    return found


def test_ctrl_c_in_tune_keeps_the_finished_trials_and_says_how_to_continue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tuning outlasts a session: Ctrl-C stops it with the command that continues it (exit 130), and
    running that command again trains only what has no record yet."""
    from rims_rl.app.runs import TrainingInterrupted

    backend, calls = _fake_backend(monkeypatch)
    stop_at = {"agent": "lstm_ppo"}

    def train(agent: str, **kwargs: Any) -> Path:
        if agent == stop_at["agent"]:
            raise TrainingInterrupted("interrupted", Path(kwargs["run_dir"]), None)
        return backend.train(agent, **kwargs)

    def evaluate(checkpoint: Path, target: object, n_episodes: int, **kw: Any) -> list[EvalResult]:
        results = backend.evaluate(checkpoint, get_suite("minigrid-doorkey"), n_episodes)[:1]  # train env
        return [replace(r, env=r.env_id) for r in results]  # named by its id, as evaluating an id names it

    monkeypatch.setattr(compare, "LOCAL", Backend(train=train, evaluate=evaluate))
    cli = _load_train_cli()
    argv = ["tune", "--suite", "minigrid-doorkey", "--grid", "ppo.n_epochs=1,2", "--seeds", "1"]
    argv += ["--timesteps", "128", "--eval-episodes", "2", "--out", str(tmp_path / "t")]
    monkeypatch.setattr("sys.argv", ["train.py", *argv])
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert "continue with the same command: python train.py tune" in err and "Traceback" not in err
    assert calls == [("rims_ppo", 1000)]  # config 0 of rims_ppo finished before lstm_ppo was stopped
    calls.clear()
    stop_at["agent"] = ""
    assert cli.main(argv) == 0
    assert ("rims_ppo", 1000) in calls and calls.count(("rims_ppo", 1000)) == 1  # config 1 only
    assert len(calls) == 3 and (tmp_path / "t" / "tune.json").is_file()
    # A later session on a new machine has only the committed records: nothing is trained again and
    # the same choice comes out of them.
    chosen = json.loads((tmp_path / "t" / "tune.json").read_text())
    for runs_dir in list((tmp_path / "t").glob("*/config*/runs")):
        shutil.rmtree(runs_dir)
    (tmp_path / "t" / "tune.json").unlink()
    calls.clear()
    assert cli.main(argv) == 0
    assert calls == []
    assert json.loads((tmp_path / "t" / "tune.json").read_text()) == chosen


def test_a_stop_during_a_runs_last_update_starts_no_further_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--workers 1``: Ctrl-C lands while the first run does its last update. That run is finished, and
    the second run must not start (the stop would otherwise be lost)."""
    from rims_rl.app.runs import RunCallback

    def on_rollout_end(self: RunCallback) -> None:
        if self.model.num_timesteps >= 64:
            self.stop_requested = True  # as the signal handler does

    monkeypatch.setattr(RunCallback, "_on_rollout_end", on_rollout_end, raising=False)
    cli = _load_train_cli()
    argv = _cli_compare_argv(tmp_path, "--agents", "rims_ppo", "lstm_ppo")
    monkeypatch.setattr("sys.argv", ["train.py", *argv])
    assert cli.main(argv) == 130
    assert "Continue with the same command" in capsys.readouterr().err
    assert (
        json.loads((tmp_path / "runs" / "rims_ppo-seed0" / "status.json").read_text())["state"] == "finished"
    )
    assert not (tmp_path / "runs" / "lstm_ppo-seed0").exists()


def test_a_worker_that_dies_stops_the_others_and_the_report_is_still_written(tmp_path: Path) -> None:
    """The OOM killer takes one of two workers: the other saves a checkpoint and stops (its result cannot
    come back through a broken pool), the report is written, exit 1, and no traceback."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    agents = ["rims_ppo", "lstm_ppo"]
    argv = _cli_compare_argv(tmp_path / "c", "--workers", "2", "--agents", *agents)
    argv[argv.index("--timesteps") + 1] = "1000000"
    proc = subprocess.Popen(
        [sys.executable, str(root / "train.py"), *argv],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,
    )
    runs = [tmp_path / "c" / "runs" / f"{agent}-seed0" for agent in agents]
    deadline = time.time() + 240
    while not all((r / "checkpoints").is_dir() or (r / "logs").is_dir() for r in runs):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    time.sleep(2.0)
    workers = [
        pid for pid in _children(proc.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(workers) == 2, workers
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err
    assert "a compare worker process died" in err and "Traceback" not in err, err
    assert (tmp_path / "c" / "report.md").is_file()
    states = sorted(json.loads((r / "status.json").read_text())["state"] for r in runs)
    assert states == ["interrupted", "running"], states  # the killed one could not write its status


# ------------------------------------------------------------------------ report: issue 26 items


def _popgym_records() -> list[dict]:
    """2 agents x 2 seeds on a POPGym train env and one variant, returns in POPGym's [-1, 1]."""
    recs = []
    for agent, base in (("gru_ppo", 0.6), ("lstm_ppo", -0.2)):
        for env, env_id, shift in (
            ("train", "popgym-RepeatPrevious-v0", 0.0),
            ("k8", "popgym-RepeatPrevious-v0", -0.2),
        ):
            for seed in (0, 1):
                ret = base + shift
                recs.append(
                    {
                        **_records()[0],
                        "agent": agent,
                        "seed": seed,
                        "env": env,
                        "env_id": env_id,
                        "is_train": env == "train",
                        "mean_return": ret,
                        "returns": [ret, ret],
                        "success_rate": None,
                    }
                )
    return recs


def test_the_report_shows_popgyms_normalised_score_beside_the_raw_return(tmp_path: Path) -> None:
    """(return + 1) / 2 of the IQM and its CI, where the env family has that scale; none for MiniGrid."""
    from rims_rl.app.report import normalised_score_of

    text = write_report(tmp_path / "p", _popgym_records(), reps=200, machine={})["report"].read_text()
    assert "Normalised IQM [95% CI] |" in text
    row = next(
        ln for ln in text.splitlines() if ln.startswith("| train (popgym-RepeatPrevious-v0) | gru_ppo |")
    )
    assert row.endswith(f"| {normalised_score_of('popgym-RepeatPrevious-v0', 0.6):.2f} [0.80, 0.80] |")
    assert "| 0.60 [0.60, 0.60] |" in row  # the raw IQM stays
    data = json.loads((tmp_path / "p" / "results.json").read_text())
    lstm = next(r for r in data["summary"] if (r["agent"], r["env"]) == ("lstm_ppo", "k8"))
    assert lstm["iqm_normalised"] == pytest.approx(0.3)
    text = write_report(tmp_path / "m", _records(), reps=200, machine={})["report"].read_text()
    assert "Normalised" not in text


def test_the_report_says_why_an_agent_has_no_learning_curve(tmp_path: Path) -> None:
    """A single rollout: one logged point per run is drawn (markers); a run that logged no episode
    return leaves its agent out of the figure, and the report says so instead of staying silent."""
    one_point = {"rims_ppo": [(np.array([64.0]), np.array([0.2])), (np.array([64.0]), np.array([0.3]))]}
    paths = write_report(tmp_path / "a", _records(), {**one_point, "lstm_ppo": []}, reps=200, machine={})
    text = paths["report"].read_text()
    assert "](learning_curves.png)" in text and paths["learning_curves"].read_bytes()[:8] == PNG_MAGIC
    assert "No learning curve for lstm_ppo: none of its runs logged a training episode return" in text
    assert "One logged point per run for rims_ppo" in text and "markers" in text
    text = write_report(tmp_path / "b", _records(), {"rims_ppo": [], "lstm_ppo": []}, reps=200, machine={})[
        "report"
    ].read_text()
    assert "learning_curves.png" not in text and not (tmp_path / "b" / "learning_curves.png").exists()
    assert "No learning-curve figure: none of the runs logged a training episode return" in text


def test_a_stop_between_a_runs_evaluation_and_its_record_waits_for_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``write_eval`` marks a run finished and ``write_record`` keeps its training time: a stop between
    the two would leave a finished run whose record never gets that time (a later compare rebuilds the
    record from the evaluation alone). Both are written, then the stop goes on: the compare stops after
    that run, and the queued run never starts."""
    import os
    import signal
    import time

    from rims_rl.app import jobs

    fake, calls = _fake_backend(monkeypatch)

    def slow_train(agent: str, **kwargs: Any) -> Path:  # a measurable training time (0.0 s reads as none)
        time.sleep(0.05)
        return fake.train(agent, **kwargs)

    backend = Backend(train=slow_train, evaluate=fake.evaluate)
    write_eval = jobs.write_eval

    def signalled_write_eval(*args: Any, **kwargs: Any) -> Path:
        path = write_eval(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C lands right after the run is marked finished
        return path

    monkeypatch.setattr(jobs, "write_eval", signalled_write_eval)
    kw = dict(suite="minigrid-doorkey", seeds=1, timesteps=128, workers=1, out=tmp_path, eval_episodes=2)
    with pytest.raises(compare.CompareInterrupted):
        compare_run(backend, agents=["lstm_ppo", "rims_ppo"], **kw, reps=100, progress=False)
    assert calls == [("lstm_ppo", 0)]  # the stop came before the second run
    record = read_record(tmp_path / "runs" / "lstm_ppo-seed0")
    assert record is not None and record.train_seconds is not None


def test_the_compare_report_quotes_each_agents_training_steps_per_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs trained from scratch keep their wall time in their record; the report gives the median steps/s
    per agent with the number of runs, the same when rebuilt from the committed records alone."""
    import time

    backend, _ = _fake_backend(monkeypatch)

    def slow_train(agent: str, **kwargs: Any) -> Path:
        time.sleep(0.1)
        return backend.train(agent, **kwargs)

    timed = Backend(train=slow_train, evaluate=backend.evaluate)
    kw = dict(suite="minigrid-doorkey", seeds=2, timesteps=128, workers=1, out=tmp_path, eval_episodes=2)
    text = compare_run(timed, **kw, reps=100, progress=False).files["report"].read_text()
    section = text.split("## Training throughput")[1].split("## ")[0]
    rows = {
        ln.split("|")[1].strip(): ln.split("|")[2:4] for ln in section.splitlines() if ln.startswith("| ")
    }
    for agent in ("rims_ppo", "lstm_ppo"):
        rate, runs = (float(rows[agent][0].replace(",", "")), int(rows[agent][1]))
        assert runs == 2 and 0 < rate <= 128 / 0.1  # 128 steps in at least 0.1 s each
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["throughput_steps_per_s"]["rims_ppo"]) == 2
    shutil.rmtree(tmp_path / "runs")  # a fresh clone: the records alone give the same table
    again = compare_run(timed, **kw, reps=100, progress=False).files["report"].read_text()
    assert again.split("## Training throughput")[1].split("## ")[0] == section


def test_a_tie_in_tune_is_named_with_the_rule_that_broke_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every configuration scores the same: the first in grid order is chosen, and tune.md/tune.json say
    it was a tie and how it was broken; the header counts 1 seed, not "1 seeds"."""
    from rims_rl.app.tune import run_tune

    backend, _ = _fake_backend(monkeypatch)

    def same_score(checkpoint: Path, target: object, n_episodes: int, **kw: Any) -> list[EvalResult]:
        (result,) = backend.evaluate(checkpoint, get_suite("minigrid-doorkey"), n_episodes)[:1]
        return [replace(result, mean_return=0.5, returns=[0.5] * n_episodes)]

    tuning = Backend(train=backend.train, evaluate=same_score)
    chosen = run_tune(
        "minigrid-doorkey",
        ["ppo.n_epochs=2,4,3"],
        agents=["ppo"],
        seeds=1,
        timesteps=128,
        out=tmp_path / "t",
        backend=tuning,
    )
    assert chosen == {"ppo": {"ppo.n_epochs": 2}}
    text = (tmp_path / "t" / "tune.md").read_text()
    assert "3 configurations x 1 seed (1000;" in text and "1 seeds" not in text
    note = "ppo: all 3 configurations tie at score 0.500"
    assert note in text and "the first in grid order" in text and text.count("| yes |") == 1
    assert json.loads((tmp_path / "t" / "tune.json").read_text())["agents"]["ppo"]["tie"].startswith(note)


def test_report_files_replace_symlinks_never_follow_them(tmp_path: Path) -> None:
    """Every report file is written atomically: a link in its place is replaced, its target untouched."""
    out, target = tmp_path / "out", tmp_path / "precious.txt"
    out.mkdir()
    target.write_text("keep me")
    names = ("report.md", "results.json", "results.csv", "ood_bars.png", "learning_curves.png")
    for name in names:
        (out / name).symlink_to(target)
    write_report(out, _records(), _curves(), reps=50, machine={})
    assert target.read_text() == "keep me"
    for name in names:
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 0


def test_a_full_disk_is_one_line_in_compare_tune_and_leaderboard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 39.5: each command first writes its files, then runs again on a disk that is full (every
    fsync fails with ENOSPC, as a write does when no block is left): one ``error:`` line naming the file,
    exit 2, and every file written before is byte for byte what it was, with no temp file left."""
    import errno
    import os

    from rims_rl.cli import main

    _fake_backend(monkeypatch)
    sys_fsync = os.fsync
    lb = tmp_path / "lb"
    lb.mkdir()
    for seed in range(3):
        for agent, bonus in (("a", 0.2), ("b", 0.0)):
            _leaderboard_record(lb / "s1" / "records", agent, seed, 0.5 + bonus, [bonus, bonus / 2])
    (lb / "spec.yml").write_text("agents: [a, b]\nsuites:\n  s1:\n    records: [s1/records]\n")
    commands = {
        "compare": ["compare", "--suite", "minigrid-doorkey", "--agents", "lstm_ppo", "--seeds", "1"],
        "tune": ["tune", "--suite", "minigrid-doorkey", "--agents", "lstm_ppo", "--seeds", "1"],
        "leaderboard": ["leaderboard", "--spec", str(lb / "spec.yml"), "--reps", "100"],
    }
    again = {"compare": ["--eval-episodes", "3"], "tune": ["--grid", "ppo.n_epochs=2,3,4"], "leaderboard": []}
    common = ["--timesteps", "128", "--eval-episodes", "2", "--out"]
    for name, argv in commands.items():
        out = lb / "page.md" if name == "leaderboard" else tmp_path / name
        first = [*argv, "--out", str(out)] if name == "leaderboard" else [*argv, *common, str(out)]
        if name == "tune":
            first += ["--grid", "ppo.n_epochs=2,3"]
        assert main(first) == 0, capsys.readouterr().err
        root = out.parent if name == "leaderboard" else out
        before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
        assert len(before) >= 3
        capsys.readouterr()

        def full(fd: int) -> None:
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                return sys_fsync(fd)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", full)
        assert main([*first, *again[name]]) == 2, name
        monkeypatch.setattr(os, "fsync", sys_fsync)
        lines = capsys.readouterr().err.splitlines()  # progress bars and failed runs' lines first
        err = lines[-1]
        assert [line for line in lines if line.startswith("error:")] == [err], (name, lines)
        assert err.startswith("error: cannot write to ") and "Traceback" not in "".join(lines), (name, err)
        assert all("No space left" in line for line in lines if " failed: " in line), lines
        assert "No space left on device" in err and "files written before are intact" in err
        assert str(root) in err
        after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
        new = set(after) - set(before)
        assert not [p for p in new if p.suffix == ".tmp"], name  # no temp file left behind
        assert {p: after[p] for p in before} == before, name


def test_tune_fails_when_a_tuning_run_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A configuration whose run crashed scores NaN and could never be chosen: the agents did not get the
    same trials, so tune writes its report and exits 1 saying so; re-running retries only that run."""
    from rims_rl.cli import main

    backend, calls = _fake_backend(monkeypatch)
    real_train = backend.train
    broken = {"on": True}

    def train(agent: str, **kw: Any) -> Path:
        if broken["on"] and kw["overrides"].get("ppo.n_epochs") == 3:
            raise RuntimeError("a bug in one configuration")
        return real_train(agent, **kw)

    monkeypatch.setattr(compare, "LOCAL", Backend(train=train, evaluate=backend.evaluate))
    argv = ["tune", "--suite", "minigrid-doorkey", "--agents", "lstm_ppo", "--grid", "ppo.n_epochs=2,3"]
    argv += ["--seeds", "1", "--timesteps", "128", "--eval-episodes", "2", "--out", str(tmp_path)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "error: 1 tuning run(s) failed (lstm_ppo configuration 2)" in err, err
    assert "RuntimeError: a bug in one configuration" in err and "Traceback" in err  # a bug keeps it
    assert (tmp_path / "tune.json").exists()
    broken["on"] = False
    calls.clear()
    assert main(argv) == 0
    assert calls == [("lstm_ppo", 1000)]  # only the failed run again


@pytest.mark.parametrize("progress", [True, False])
def test_compares_evaluation_phase_shows_its_progress_in_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, progress: bool
) -> None:
    """Issue 40.2: a run evaluated in compare's own process (--workers 1) passes ``progress`` on to the
    evaluation (episodes per env with an ETA, on a terminal); without a progress bar, nothing is asked."""
    backend, _ = _fake_backend(monkeypatch)
    asked: list[dict] = []

    def evaluate(checkpoint: Path, target: Suite, n_episodes: int, **kw: Any) -> list[EvalResult]:
        asked.append(kw)
        return backend.evaluate(checkpoint, target, n_episodes)

    fields = dict(suite="minigrid-doorkey", seeds=1, timesteps=128, workers=1, out=tmp_path, eval_episodes=2)
    compare_run(Backend(train=backend.train, evaluate=evaluate), **fields, reps=100, progress=progress)
    assert len(asked) == 2 and all(kw.get("progress", False) is progress for kw in asked), asked
