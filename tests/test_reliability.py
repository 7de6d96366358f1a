"""Reliability and safety (issue 8): broken checkpoints, foreign spaces, pickle payloads, Ctrl-C,
SIGKILL + resume, a crash while writing a checkpoint, NaN parameters, same seed -> same curves.

Budgets are tiny (Empty-5x5, 2 envs x 16 steps per rollout); only the two signal tests start a
subprocess.
"""

from __future__ import annotations

import base64
import csv
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest
import torch as th
from conftest import TINY_ENV, TINY_FLAGS, TINY_PPO
from stable_baselines3.common.callbacks import BaseCallback

ROOT = Path(__file__).resolve().parent.parent

import train  # noqa: E402
from rims_rl.agents import build_model  # noqa: E402
from rims_rl.app.atomic import atomic_write  # noqa: E402
from rims_rl.app.checkpoint import (  # noqa: E402
    CheckpointError,
    latest_checkpoint,
    load_trusted,
    load_weights,
    read_meta,
    write_latest,
)
from rims_rl.app.evaluation import load_for_eval  # noqa: E402
from rims_rl.app.runs import TrainingDiverged, train_run  # noqa: E402
from rims_rl.app.runs import read_run_config as train_config  # noqa: E402
from rims_rl.envs import EnvSpec, make_vec_env_for  # noqa: E402


def tiny_run(run_dir: Path, timesteps: int = 64, **kwargs: Any) -> Path:
    return train_run(
        "rims_ppo",
        TINY_ENV,
        timesteps=timesteps,
        seed=kwargs.pop("seed", 0),
        n_envs=2,
        overrides=dict(TINY_PPO),
        run_dir=run_dir,
        checkpoint_every=32,
        progress_bar=False,
        device="cpu",
        **kwargs,
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("rel") / "run")


def _evaluate_fails(checkpoint: Path | str, capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    code = train.main(["evaluate", "--checkpoint", str(checkpoint), "--env", TINY_ENV, "--episodes", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


# ------------------------------------------------------------------------------ broken checkpoints
def test_missing_truncated_corrupt_and_foreign_checkpoints_fail_cleanly(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = (run_dir / "model.zip").read_bytes()
    _evaluate_fails(tmp_path / "nope.zip", capsys, "not a file")
    (tmp_path / "truncated.zip").write_bytes(good[: len(good) // 2])
    _evaluate_fails(tmp_path / "truncated.zip", capsys, "not a valid zip")
    (tmp_path / "garbage.zip").write_bytes(os.urandom(4096))
    _evaluate_fails(tmp_path / "garbage.zip", capsys, "not a valid zip")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("hello.txt", "not a model")
    _evaluate_fails(tmp_path / "other.zip", capsys, "not an SB3 checkpoint")
    (tmp_path / "tail-cut.zip").write_bytes(good[:-100])  # the zip directory's end is gone
    err = _evaluate_fails(tmp_path / "tail-cut.zip", capsys, "truncated")
    assert "--trust-checkpoint" not in err  # never suggest trusting a damaged file
    # Valid metadata but the weights entry is not a tensor file (a pickle that weights_only refuses).
    with zipfile.ZipFile(run_dir / "model.zip") as src, zipfile.ZipFile(tmp_path / "badw.zip", "w") as dst:
        for item in src.namelist():
            data = src.read(item) if item != "policy.pth" else cloudpickle.dumps(object())
            dst.writestr(item, data)
    _evaluate_fails(tmp_path / "badw.zip", capsys, "policy.pth")


def test_checkpoint_for_other_spaces_names_both(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Fetch has Dict(image, mission) observations; the checkpoint was trained on a 7x7x3 Box.
    code = train.main(["evaluate", "--checkpoint", str(run_dir), "--env", "MiniGrid-Fetch-5x5-N2-v0"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "observation space" in err and "Box(0, 255, (7, 7, 3), uint8)" in err and "Dict(" in err


# --------------------------------------------------------------------------------- pickle payloads
class _Payload:
    """Unpickling this creates a file: stands in for arbitrary code in a hostile checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _plant_payload(src: Path, dst: Path, marker: Path) -> None:
    payload = base64.b64encode(cloudpickle.dumps(_Payload(marker))).decode()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.namelist():
            data = zin.read(item)
            if item == "data":
                doc = json.loads(data)
                doc["payload"] = {":type:": "<class 'object'>", ":serialized:": payload}
                data = json.dumps(doc).encode()
            zout.writestr(item, data)


def test_pickle_payload_refused_by_default_and_runs_only_when_trusted(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile.zip"
    _plant_payload(run_dir / "model.zip", hostile, marker)
    env_spec = EnvSpec(TINY_ENV, TINY_ENV, {})

    model, _ = load_for_eval(hostile, env_spec)  # safe default: weights only
    assert not marker.exists()
    reference, _ = load_for_eval(run_dir / "model.zip", env_spec)
    for a, b in zip(model.policy.parameters(), reference.policy.parameters(), strict=True):
        assert th.equal(a, b)

    load_trusted(hostile, env=None, device="cpu")  # explicit trust: SB3's RecurrentPPO.load
    assert marker.exists()


def test_plain_sb3_zip_of_our_policy_is_rebuilt_without_trust_flag(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without our metadata (as RL Zoo saves it) our policy class is rebuilt from the zip's readable JSON;
    one whose class cannot be read that way is refused with the --trust-checkpoint pointer."""
    plain, unknown = tmp_path / "plain.zip", tmp_path / "unknown.zip"
    with zipfile.ZipFile(run_dir / "model.zip") as zin:
        for out, policy_module in ((plain, None), (unknown, "somebody.elses.module")):
            with zipfile.ZipFile(out, "w") as zout:
                for item in zin.namelist():
                    data = zin.read(item)
                    if item == "data" and policy_module is not None:
                        meta = json.loads(data)
                        meta["policy_class"] = {"__module__": policy_module, ":serialized:": "AAAA"}
                        data = json.dumps(meta).encode()
                    if item != "rims_config.json":
                        zout.writestr(item, data)
    argv = [
        "evaluate",
        "--checkpoint",
        str(plain),
        "--env",
        TINY_ENV,
        "--episodes",
        "1",
        "--out",
        str(tmp_path),
    ]
    assert train.main(argv) == 0, capsys.readouterr().err
    _evaluate_fails(unknown, capsys, "--trust-checkpoint")


# ------------------------------------------------------------------------------------ atomic writes
def test_crash_while_writing_keeps_previous_checkpoint(run_dir: Path, tmp_path: Path) -> None:
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    good = (run_dir / "model.zip").read_bytes()
    (ckpts / "step_32.zip").write_bytes(good)
    write_latest(ckpts, ckpts / "step_32.zip")

    def half_then_crash(f: Any) -> None:
        f.write(good[: len(good) // 2])
        raise OSError("simulated crash mid-write")

    for target in ("step_32.zip", "step_64.zip"):  # overwrite in place, and a new step
        with pytest.raises(OSError, match="simulated"):
            atomic_write(ckpts / target, half_then_crash)
    assert (ckpts / "step_32.zip").read_bytes() == good
    assert not (ckpts / "step_64.zip").exists()
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_32.zip"]  # no temp files left

    # A hard kill leaves a temp file behind, and a non-atomic writer could leave a truncated step file;
    # neither may be taken as the latest checkpoint.
    (ckpts / ".step_96.zip.abc.tmp").write_bytes(good[:100])
    (ckpts / "step_128.zip").write_bytes(good[: len(good) // 2])
    assert latest_checkpoint(ckpts) == ckpts / "step_32.zip"
    write_latest(ckpts, ckpts / "step_128.zip")  # pointer at a broken file: fall back to the newest good one
    assert latest_checkpoint(ckpts) == ckpts / "step_32.zip"


# ------------------------------------------------------------------------------------------- NaN
class _InjectNaN(BaseCallback):
    """Poison one parameter after the second rollout (after the first checkpoint at step 32)."""

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if self.num_timesteps >= 64:
            with th.no_grad():
                next(self.model.policy.parameters()).fill_(float("nan"))


def test_nan_parameters_stop_training_and_keep_last_good_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged, match="NaN") as info:
        tiny_run(tmp_path / "run", timesteps=128, callbacks=[_InjectNaN()])
    run = tmp_path / "run"
    assert not (run / "model.zip").exists()
    good = latest_checkpoint(run / "checkpoints")
    assert good == run / "checkpoints" / "step_32.zip" == info.value.checkpoint
    with zipfile.ZipFile(good) as zf:
        state = th.load(io.BytesIO(zf.read("policy.pth")), weights_only=True)
    assert all(th.isfinite(v).all() for v in state.values())
    assert json.loads((run / "status.json").read_text())["state"] == "diverged"


# ----------------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_learning_curves(tmp_path: Path) -> None:
    def curve(name: str) -> list[dict[str, str]]:
        tiny_run(tmp_path / name, timesteps=96, seed=3)
        rows = list(csv.DictReader((tmp_path / name / "logs" / "progress.csv").open()))
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]

    a, b = curve("a"), curve("b")
    assert len(a) == 3 and "train/loss" in a[-1] and a[-1]["train/loss"]
    assert a == b
    wa = read_meta(tmp_path / "a" / "model.zip")
    assert wa.num_timesteps == 96
    with (
        zipfile.ZipFile(tmp_path / "a" / "model.zip") as za,
        zipfile.ZipFile(tmp_path / "b" / "model.zip") as zb,
    ):
        assert za.read("policy.pth") == zb.read("policy.pth")


# ----------------------------------------------------------------------------- signals (subprocess)
def _start_training(run: Path, timesteps: int, extra: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(ROOT / "train.py"), "train", "--env", TINY_ENV, "--timesteps", str(timesteps)]
    cmd += list(extra)
    cmd += [
        "--run-dir",
        str(run),
        "--checkpoint-every",
        "32",
        "--no-progress",
        "--device",
        "cpu",
        *TINY_FLAGS,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, signalled as a terminal or a pre-emption would
    )


def _wait_for_checkpoint(proc: subprocess.Popen[str], run: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not (run / "checkpoints" / "latest").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.1)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_save_a_checkpoint_and_say_how_to_resume(
    tmp_path: Path, signum: int, code: int
) -> None:
    """Ctrl-C, or SIGTERM from pre-emption: stop at the next step, save, say how to resume, 128 + signum.

    The signal goes to the whole process group, as a terminal's Ctrl-C does, so the env subprocesses
    (2 envs: SubprocVecEnv) get it too and must not die of it."""
    run = tmp_path / "run"
    proc = _start_training(run, timesteps=100_000)
    _wait_for_checkpoint(proc, run)
    os.killpg(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"python train.py train --resume {run}" in err and "Traceback" not in err
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "interrupted"
    meta = read_meta(status["checkpoint"])
    assert meta.num_timesteps % 32 == 0 and meta.num_timesteps >= 32  # a whole number of rollouts


def test_sigkill_then_resume_reaches_the_budget_from_the_last_checkpoint(tmp_path: Path) -> None:
    run, budget = tmp_path / "run", 160
    proc = _start_training(run, timesteps=budget)
    _wait_for_checkpoint(proc, run)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    start = read_meta(latest_checkpoint(run / "checkpoints")).num_timesteps
    assert 32 <= start < budget, "the run finished before it was killed; raise the budget"
    assert not (run / "model.zip").exists()

    assert train.main(["train", "--resume", str(run), "--no-progress"]) == 0
    final = read_meta(run / "model.zip")
    assert final.num_timesteps == budget
    resumed_log = run / "logs" / f"progress-resumed-{start}.csv"  # the resumed part started at `start`
    assert resumed_log.is_file()
    logged = [int(float(r["time/total_timesteps"])) for r in csv.DictReader(resumed_log.open())]
    assert logged and logged[0] == start + 32 and logged[-1] == budget
    assert np.all(np.diff(logged) == 32)


@pytest.mark.parametrize("optimizer", ["fp32", "bf16"])
def test_a_killed_run_continues_on_another_machine_from_its_resume_form(
    tmp_path: Path, optimizer: str
) -> None:
    """Issue 42.1: SIGKILL mid-run, `pack` (what a session commits), the run directory lost, `unpack` on a
    new machine, `train --resume`: the same budget is reached, from the packed step, with the optimizer's
    state (exact in fp32, to bfloat16 rounding in bf16) and the learning-rate schedule where they were."""
    run, budget = tmp_path / "machine-a" / "run", 192
    proc = _start_training(run, timesteps=budget, extra=("--set", "ppo.learning_rate=lin_1e-3"))
    _wait_for_checkpoint(proc, run)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    packed = latest_checkpoint(run / "checkpoints")
    start = read_meta(packed).num_timesteps
    assert 32 <= start < budget, "the run finished before it was killed; raise the budget"
    form = tmp_path / "form.zip"
    assert train.main(["pack", str(run), "--out", str(form), "--optimizer", optimizer]) == 0
    with zipfile.ZipFile(packed) as zf:
        moments = th.load(io.BytesIO(zf.read("policy.optimizer.pth")), weights_only=True)["state"]
    shutil.rmtree(tmp_path / "machine-a")  # the machine is gone; only the committed form is left

    moved = tmp_path / "machine-b" / "run"
    assert train.main(["unpack", str(form), "--run-dir", str(moved)]) == 0
    config = train_config(moved)
    env = make_vec_env_for(config.env_spec(), n_envs=config.n_envs, seed=0, vec_cls="dummy")
    model = build_model(config.model, env, seed=0, device="cpu")
    load_weights(model, latest_checkpoint(moved / "checkpoints"), optimizer=True)
    restored = model.policy.optimizer.state_dict()["state"]
    env.close()
    for key, state in moments.items():
        for name in ("exp_avg", "exp_avg_sq"):
            got, want = restored[key][name], state[name]
            assert got.dtype == th.float32
            if optimizer == "fp32":
                assert th.equal(got, want)
            else:
                assert th.allclose(got, want, rtol=1e-2, atol=0.0) and not th.equal(got, want)
        assert float(restored[key]["step"]) == float(state["step"])

    assert train.main(["train", "--resume", str(moved), "--no-progress"]) == 0
    assert read_meta(moved / "model.zip").num_timesteps == budget
    rows = list(csv.DictReader((moved / "logs" / f"progress-resumed-{start}.csv").open()))
    assert int(float(rows[0]["time/total_timesteps"])) == start + 32
    # SB3 writes a row before its update: a row's train/* values are those of the update one rollout back
    trained = next(r for r in rows if r["train/learning_rate"])
    at = int(float(trained["time/total_timesteps"])) - 32
    assert at == start + 32  # the resumed run's first update, where the schedule must continue
    assert float(trained["train/learning_rate"]) == pytest.approx(1e-3 * (1 - at / budget))


def test_loading_rejects_missing_run_dir_for_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = train.main(["train", "--resume", str(tmp_path / "nope"), "--no-progress"])
    assert code == 2 and "not a run directory" in capsys.readouterr().err
    with pytest.raises(CheckpointError):
        read_meta(tmp_path / "nope.zip")


def test_a_zip_bomb_or_giant_entry_is_refused_without_reading_it(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """20 MiB of spaces deflate to ~20 KiB: the reader stops at its limit instead of inflating them."""
    bomb = tmp_path / "bomb.zip"
    with (
        zipfile.ZipFile(run_dir / "model.zip") as src,
        zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf,
    ):
        for name in src.namelist():
            data = src.read(name)
            zf.writestr(name, data if name != "rims_config.json" else data + b" " * (20 * 2**20))
    assert bomb.stat().st_size < (run_dir / "model.zip").stat().st_size + 2**20  # tiny on disk
    _evaluate_fails(bomb, capsys, "larger than 16 MiB")


@pytest.mark.parametrize(
    ("path", "change", "needle"),
    [
        (("config", "model", "ppo"), "fast", "ppo must be a mapping"),
        (("config", "model", "policy_kwargs", "optimizer_class"), "Adam", "optimizer_class cannot be set"),
        (("config", "model", "policy_kwargs", "no_such_kwarg"), 1, "unknown policy_kwargs key"),
        (("config", "model", "algo"), "os.system", "algo must be one of"),
    ],
)
def test_crafted_metadata_gives_one_line(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], path: tuple, change: Any, needle: str
) -> None:
    crafted = tmp_path / "crafted.zip"
    with zipfile.ZipFile(run_dir / "model.zip") as src, zipfile.ZipFile(crafted, "w") as zf:
        for name in src.namelist():
            data = src.read(name)
            if name == "rims_config.json":
                meta = json.loads(data)
                node = meta
                for key in path[:-1]:
                    node = node[key]
                node[path[-1]] = change
                data = json.dumps(meta).encode()
            zf.writestr(name, data)
    _evaluate_fails(crafted, capsys, needle)


def test_an_untrusted_env_name_cannot_move_the_videos(run_dir: Path, tmp_path: Path) -> None:
    # Deep enough that "../../../escaped" would still land inside tmp_path, where rglob sees it.
    crafted, out = tmp_path / "crafted.zip", tmp_path / "a" / "b" / "c" / "videos"
    with zipfile.ZipFile(run_dir / "model.zip") as src, zipfile.ZipFile(crafted, "w") as zf:
        for name in src.namelist():
            data = src.read(name)
            if name == "rims_config.json":
                meta = json.loads(data)
                meta["config"]["env"]["name"] = "../../../escaped"
                data = json.dumps(meta).encode()
            zf.writestr(name, data)
    argv = ["evaluate", "--checkpoint", str(crafted), "--episodes", "1", "--out", str(tmp_path / "e")]
    assert train.main([*argv, "--video", str(out)]) == 0
    written = list(tmp_path.rglob("*.gif"))
    assert written and all(out in p.parents for p in written)
    assert not [p for p in tmp_path.rglob("*escaped*") if out not in p.parents]


@pytest.mark.parametrize("case", ["a file in the way", "a name too long"])
def test_a_run_dir_that_cannot_be_a_directory_gives_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    run = blocker / "run" if case == "a file in the way" else tmp_path / ("r" * 300)
    argv = ["train", "--env", TINY_ENV, "--timesteps", "32", "--run-dir", str(run), "--no-progress"]
    code = train.main([*argv, *TINY_FLAGS])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: cannot use") and "Traceback" not in err
    reason = "Not a directory" if case == "a file in the way" else "File name too long"
    assert reason in err and err.count("\n") == 1


def test_an_atari_checkpoint_on_a_minigrid_suite_names_both_spaces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its Atari wrapper settings (frame_stack) are not applied to MiniGrid envs; the space check speaks."""
    run = tmp_path / "atari"
    argv = ["train", "--env", "ALE/Pong-v5", "--timesteps", "16", "--run-dir", str(run), *TINY_FLAGS]
    argv += ["--n-envs", "1", "--no-progress"]  # the last --n-envs wins: one Atari env is enough
    argv += ["--set", "policy_kwargs.rims_kwargs.unit_size=4", "--set", "policy_kwargs.lstm_hidden_size=24"]
    assert train.main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    code = train.main(
        ["evaluate", "--checkpoint", str(run), "--suite", "minigrid-doorkey", "--episodes", "1"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "observation space does not match" in err and "frame_stack" not in err, err
    assert "84" in err and "7" in err  # both spaces named


def test_resume_takes_the_newest_good_checkpoint_even_when_the_pointer_lags(
    run_dir: Path, tmp_path: Path
) -> None:
    """Killed between writing step_64.zip and moving ``latest``: nothing trained is lost."""
    import shutil

    ckpts = tmp_path / "checkpoints"
    shutil.copytree(run_dir / "checkpoints", ckpts)
    shutil.copy(run_dir / "model.zip", ckpts / "step_64.zip")
    write_latest(ckpts, ckpts / "step_32.zip")
    assert latest_checkpoint(ckpts) == ckpts / "step_64.zip"
    (ckpts / "step_64.zip").write_bytes(b"truncated")
    assert latest_checkpoint(ckpts) == ckpts / "step_32.zip"


# ------------------------------------------------------------------------- a failing disk, a second Ctrl-C
def _train_argv(run: Path, timesteps: int = 128) -> list[str]:
    argv = ["train", "--env", TINY_ENV, "--timesteps", str(timesteps), "--run-dir", str(run), "--no-progress"]
    return [*argv, "--checkpoint-every", "32", "--device", "cpu", *TINY_FLAGS]


@pytest.mark.parametrize(
    ("code", "also_status"),
    [(errno.ENOSPC, False), (errno.ENOSPC, True), (errno.EROFS, False)],
    ids=["disk-full", "disk-full-even-for-status", "read-only"],
)
def test_a_disk_that_fills_up_or_turns_read_only_during_training_gives_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    code: int,
    also_status: bool,
) -> None:
    """The second checkpoint cannot be written: one line naming the cause and the last good checkpoint,
    status ``failed`` (written in place when even a temp file does not fit), and the run resumes."""
    from rims_rl.app import rundir as rundir_module
    from rims_rl.app import runs as runs_module

    real_save, real_atomic = runs_module.save_checkpoint, rundir_module.atomic_write_json
    calls = {"n": 0}
    disk_broken = {"now": False}

    def failing_save(model: Any, path: Path, *args: Any, **kwargs: Any) -> Path:
        calls["n"] += 1
        if calls["n"] >= 2:
            disk_broken["now"] = True
            raise OSError(code, os.strerror(code), str(path))
        return real_save(model, path, *args, **kwargs)

    def failing_atomic(path: Any, data: Any) -> Path:
        if disk_broken["now"] and also_status:
            raise OSError(code, os.strerror(code), str(path))
        return real_atomic(path, data)

    monkeypatch.setattr(runs_module, "save_checkpoint", failing_save)
    monkeypatch.setattr(rundir_module, "atomic_write_json", failing_atomic)
    run = tmp_path / "run"
    assert train.main(_train_argv(run)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cannot write to ") and "Traceback" not in err
    assert os.strerror(code) in err and "step_32.zip (step 32)" in err
    assert f"python train.py train --resume {run}" in err
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and status["num_timesteps"] == 32, status
    assert status["checkpoint"].endswith("step_32.zip")

    monkeypatch.undo()  # space again: the run continues from step 32 to its budget
    assert train.main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert read_meta(run / "model.zip").num_timesteps == 128


def test_a_second_ctrl_c_aborts_at_once_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The second signal raises KeyboardInterrupt wherever training is (here: a step after the checkpoint at
    64): one message, exit 130, status ``interrupted`` at the last checkpoint, and the run resumes."""
    from rims_rl.app.runs import RunCallback

    real_on_step = RunCallback._on_step

    def on_step(self: RunCallback) -> bool:
        if self.model.num_timesteps > 80:
            raise KeyboardInterrupt
        return real_on_step(self)

    monkeypatch.setattr(RunCallback, "_on_step", on_step)
    run = tmp_path / "run"
    assert train.main(_train_argv(run)) == 130
    err = capsys.readouterr().err
    assert "aborted at step" in err and "step_64.zip (step 64)" in err and "Traceback" not in err
    assert f"python train.py train --resume {run}" in err
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "interrupted" and status["num_timesteps"] == 64, status

    monkeypatch.undo()
    assert train.main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert read_meta(run / "model.zip").num_timesteps == 128


def test_two_quick_ctrl_c_in_a_real_run_never_give_a_traceback(tmp_path: Path) -> None:
    """Real signals: the second may land while training, while saving the stop's checkpoint, or after;
    every case exits 130 with a resumable run."""
    run = tmp_path / "run"
    proc = _start_training(run, timesteps=100_000)
    _wait_for_checkpoint(proc, run)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and f"python train.py train --resume {run}" in err
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "interrupted" and Path(status["checkpoint"]).is_file()


def test_a_read_only_disk_for_new_runs_resume_and_evaluation_gives_one_line(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """EROFS (simulated: as root, chmod does not stop writes) where the run directory or the results go;
    evaluation prints its table before the error, so the episodes it ran are not lost."""
    from rims_rl.app import evaluation, rundir

    def read_only(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(args[0]) if args else None)

    real_open = os.open

    def open_read_only(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        """os.open on a read-only disk: reading works, opening to write fails (os is one module, so
        the readers of config.json and status.json see this too)."""
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            read_only(path)
        return real_open(path, flags, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(rundir.os, "open", open_read_only)
        for argv in (_train_argv(tmp_path / "new"), ["train", "--resume", str(run_dir), "--no-progress"]):
            assert train.main(argv) == 2
            err = capsys.readouterr().err
            assert err.startswith("error: cannot use") and "Read-only file system" in err, err
            assert "Traceback" not in err and err.count("\n") == 1
    with monkeypatch.context() as m:
        m.setattr(evaluation, "atomic_write_bytes", read_only)
        argv = ["evaluate", "--checkpoint", str(run_dir), "--episodes", "2", "--out", str(tmp_path / "e")]
        assert train.main(argv) == 2
        out, err = capsys.readouterr()
        assert "mean return" in out and TINY_ENV in out  # the table came first
        assert err.startswith("error: cannot write to") and "Read-only file system" in err, err


def test_a_stop_during_the_last_update_still_finishes_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C after the last rollout was collected: the last update runs and the budget is reached, so the
    run is finished (model.zip), not an "interrupted" one whose checkpoint holds more than it says; the
    process still exits 130, so a caller running jobs in a row (compare, tune) stops there."""
    from rims_rl.app.runs import RunCallback

    def on_rollout_end(self: RunCallback) -> None:
        if self.model.num_timesteps >= 128:
            self.stop_requested = True  # as the signal handler does

    monkeypatch.setattr(RunCallback, "_on_rollout_end", on_rollout_end, raising=False)
    run = tmp_path / "run"
    assert train.main(_train_argv(run)) == 130
    assert "the run finished" in capsys.readouterr().err
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["num_timesteps"] == 128
    assert read_meta(run / "model.zip").num_timesteps == 128


def test_a_ctrl_c_inside_torch_save_is_an_abort_not_a_crash(tmp_path: Path, monkeypatch) -> None:
    """The second Ctrl-C can land while torch.save writes the stop's checkpoint; torch's zip writer then
    replaces the KeyboardInterrupt by a RuntimeError ("unexpected pos") as it closes. save_checkpoint
    must still raise KeyboardInterrupt (the CLI's exit 130) and leave nothing half-written."""
    from rims_rl.agents import build_model
    from rims_rl.app.checkpoint import save_checkpoint
    from rims_rl.app.config import resolve_config
    from rims_rl.app.runs import make_train_env

    config = resolve_config("lstm_ppo", TINY_ENV, seed=0, overrides=[f"{k}={v}" for k, v in TINY_PPO.items()])
    env = make_train_env(config, 0)
    model = build_model(config.model, env, seed=0, device="cpu")
    real_write = zipfile._ZipWriteFile.write  # type: ignore[attr-defined]
    calls = {"n": 0}

    def interrupted(self: Any, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 3:  # inside torch.save, after it started writing records
            raise KeyboardInterrupt
        return real_write(self, data)

    monkeypatch.setattr(zipfile._ZipWriteFile, "write", interrupted)
    path = tmp_path / "stop.zip"
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, path, config)
    assert not path.exists()
    env.close()
