"""Hostile or careless files and settings around ``compare``, ``--tuned`` and suite files (issue 23).

No training: ``compare`` runs on the fake backend of ``test_compare`` (instant runs), and every refusal
happens before anything is trained. Each case must end with one ``error:`` line (exit 2) within a
deadline, never a traceback, a hang or a report that mixes in someone else's runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

from test_compare import _fake_backend  # noqa: E402

import train  # noqa: E402
from rims_rl.app import compare, rundir  # noqa: E402
from rims_rl.app.compare import CompareInterrupted, CompareRequest, run_compare  # noqa: E402
from rims_rl.app.errors import UserError  # noqa: E402
from rims_rl.app.executors import check_ray_address  # noqa: E402

SUITE = "minigrid-doorkey"
TRAIN = "train: {id: MiniGrid-DoorKey-5x5-v0}\n"
AGENT = "lstm_ppo"


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail (TimeoutError) instead of hanging: today's code hangs on a FIFO record."""

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def compare_argv(out: Path, *extra: str) -> list[str]:
    argv = ["compare", "--agents", AGENT, "--suite", SUITE, "--seeds", "1", "--timesteps", "128"]
    return [*argv, "--out", str(out), "--eval-episodes", "2", *extra]


def one_line(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str, seconds: float = 30) -> str:
    with deadline(seconds):
        code = train.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture
def finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Path:
    """An --out folder holding one finished (fake) lstm_ppo run and its committed record."""
    _fake_backend(monkeypatch)
    out = tmp_path / "out"
    assert train.main(compare_argv(out)) == 0
    capsys.readouterr()
    return out


def record_of(out: Path) -> Path:
    return out / "records" / f"{AGENT}-seed0.json"


def edit_record(out: Path, change: Any) -> None:
    doc = json.loads(record_of(out).read_text())
    change(doc)
    record_of(out).write_text(json.dumps(doc))


# ------------------------------------------------------------------------------------ 6: records
@pytest.mark.parametrize(
    ("claim", "needle"),
    [
        ({"agent": "ppo"}, "is of agent 'ppo' seed 0, not of this run (lstm_ppo seed 0)"),
        ({"agent": "evil_agent", "env": "injected-env"}, "is of agent 'evil_agent'"),
        ({"env": "injected-env", "env_id": "MiniGrid-Empty-5x5-v0"}, "is for env 'injected-env'"),
        ({"seed": False}, "'seed' has the wrong type: False"),
    ],
)
def test_a_record_claiming_another_agent_env_or_seed_is_refused(
    finished: Path, capsys: pytest.CaptureFixture[str], claim: dict, needle: str
) -> None:
    edit_record(finished, lambda doc: doc["records"].append({**doc["records"][0], **claim}))
    report = (finished / "report.md").read_text()
    one_line(compare_argv(finished), capsys, str(record_of(finished)), needle, "delete it")
    assert (finished / "report.md").read_text() == report  # nothing was rewritten


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('"mean_return": ' + "9" * 400, "an integer of 400 digits"),
        ('"mean_return": Infinity', "Infinity is not a number"),
        ('"mean_return": 1e999', "beyond a float's range"),
        ('"mean_return": ' + "[" * 20_000, "nested more than 64 levels"),
        ('"mean_return": ' + "1" * 5000, "an integer of 5000 digits"),
    ],
)
def test_numbers_and_nesting_beyond_bounds_in_a_record_give_one_line(
    finished: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    raw = record_of(finished).read_text()
    value = json.loads(raw)["records"][0]["mean_return"]
    record_of(finished).write_text(raw.replace(f'"mean_return": {json.dumps(value)}', text, 1))
    one_line(compare_argv(finished), capsys, needle)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_a_record_that_is_not_a_regular_file_neither_hangs_nor_eats_memory(
    finished: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    path = record_of(finished)
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    one_line(compare_argv(finished), capsys, "not a regular file", seconds=20)


@pytest.mark.parametrize("sub", ["records", "runs"])
def test_a_linked_records_or_runs_folder_cannot_move_the_writes_outside_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], sub: str
) -> None:
    _fake_backend(monkeypatch)
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / sub).symlink_to(elsewhere)
    one_line(compare_argv(out), capsys, "is a symbolic link")
    assert list(elsewhere.iterdir()) == []


# -------------------------------------------------------------------------------------- 7: tuned
@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ({"x": 1}, "has no 'agents' object"),
        ({"agents": [1, 2]}, "has no 'agents' object"),
        ({"agents": {AGENT: 5}}, "has no 'chosen' settings"),
        ({"agents": {AGENT: {"chosen": [1]}}}, "must be a mapping of --set keys"),
        ({"agents": {AGENT: {"chosen": {"ppo": {"learning_rate": 0.1}}}}}, "'ppo' is a section"),
        ({"agents": {AGENT: {"chosen": {"env.max_steps": 10**9}}}}, "max_steps=1000000000"),
        ({"agents": {AGENT: {"chosen": {"policy_kwargs.lstm_hidden_size": 10**6}}}}, "lstm_hidden_size"),
        (b"\xff\xfe{}", "is not UTF-8 text"),
        ("[" * 20_000, "nested more than 64 levels"),
        (None, "does not exist"),
        ("dir", "is a directory"),
    ],
)
def test_a_bad_tuned_file_gives_one_line_naming_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    content: Any,
    needle: str,
) -> None:
    _, calls = _fake_backend(monkeypatch)
    tuned = tmp_path / "tune.json"
    if content == "dir":
        tuned.mkdir()
    elif isinstance(content, bytes):
        tuned.write_bytes(content)
    elif isinstance(content, str):
        tuned.write_text(content)
    elif content is not None:
        tuned.write_text(json.dumps(content))
    err = one_line(compare_argv(tmp_path / "out", "--tuned", str(tuned)), capsys, needle)
    assert "cannot write" not in err and calls == []


def test_the_report_shows_the_tuned_values_and_the_set_values_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_backend(monkeypatch)
    tuned = tmp_path / "tune.json"
    chosen = {"ppo.learning_rate": 0.001, "ppo.ent_coef": 0.02}
    tuned.write_text(json.dumps({"agents": {AGENT: {"chosen": chosen}}}))
    argv = compare_argv(tmp_path / "out", "--tuned", str(tuned), "--set", "ppo.learning_rate=0.0005")
    assert train.main(argv) == 0, capsys.readouterr().err
    report = (tmp_path / "out" / "report.md").read_text()
    assert "overrides=ppo.learning_rate=0.0005" in report
    assert f"tuned={AGENT}: ppo.learning_rate=0.001 (--set wins) ppo.ent_coef=0.02," in report
    config = json.loads((tmp_path / "out" / "runs" / f"{AGENT}-seed0" / "config.json").read_text())
    assert config["overrides"] == {"ppo.learning_rate": 0.0005, "ppo.ent_coef": 0.02}


# --------------------------------------------------------------------------------- 4: suite files
@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("train: {id: MiniGrid-DoorKey-5x5-v0}\nvariants: 5\n", "'variants' must be a list"),
        (
            f"{TRAIN}variants:\n  - {{name: v, id: MiniGrid-DoorKey-6x6-v0, kwargs: [1, 2]}}\n",
            "'kwargs' of env entry 'v' must be a mapping",
        ),
        (
            f"{TRAIN}variants:\n  - {{name: v, id: MiniGrid-DoorKey-6x6-v0, kwargs: {{size: abc}}}}\n",
            "env entry 'v': env kwarg size='abc'",
        ),
        ("train: " + "[" * 20_000, "nested more than 64 levels"),
        (
            "a: &a [x, x, x, x, x, x, x, x]\n"
            + "".join(f"{c}: &{c} [{', '.join(['*' + chr(ord(c) - 1)] * 8)}]\n" for c in "bcdefghijklmnop"),
            "aliases",
        ),
        ("train: " + "1" * 5000, "cannot be read as YAML"),
        (None, "does not exist"),
    ],
)
def test_a_bad_suite_file_gives_one_line_naming_the_file_and_field(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    text: str | None,
    needle: str,
) -> None:
    _, calls = _fake_backend(monkeypatch)
    suite = tmp_path / "my-suite.yml"
    if text is not None:
        suite.write_text(text)
    argv = ["compare", "--agents", AGENT, "--suite", str(suite), "--seeds", "1", "--out", str(tmp_path / "o")]
    one_line(argv, capsys, "my-suite.yml", needle, seconds=20)
    assert calls == []


# ------------------------------------------------------------------------ 8: two compares at once
def test_a_second_compare_into_the_same_out_gives_one_line_and_touches_nothing(
    finished: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = (finished / "runs.json").read_text()
    with rundir.locked(finished):  # what the first compare holds while it runs
        one_line(compare_argv(finished, "--seeds", "2"), capsys, "is in use by another process")
    assert (finished / "runs.json").read_text() == runs


# -------------------------------------------------------------------- 9: SIGTERM while reporting
def test_sigterm_while_the_report_is_written_still_writes_it_and_says_how_to_continue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, _ = _fake_backend(monkeypatch)
    real = compare.write_report

    def write_report_under_sigterm(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)  # the signal arrives while the report is being written
        time.sleep(0.1)
        return real(*args, **kwargs)

    def unprotected(signum: int, frame: Any) -> None:
        raise AssertionError("SIGTERM was not held back while the report was written")

    monkeypatch.setattr(compare, "write_report", write_report_under_sigterm)
    previous = signal.signal(signal.SIGTERM, unprotected)
    try:
        with pytest.raises(CompareInterrupted) as info:
            request = CompareRequest(
                agents=(AGENT,),
                suite=SUITE,
                seeds=1,
                timesteps=128,
                out=tmp_path,
                eval_episodes=2,
                progress=False,
                reps=50,
                command_line="python train.py compare ...",
            )
            run_compare(request, backend)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert info.value.signum == signal.SIGTERM and "Continue with the same command" in str(info.value)
    assert (tmp_path / "report.md").is_file() and (tmp_path / "results.json").is_file()


# ----------------------------------------------------------------------------------------- 10: Ray
@pytest.mark.parametrize(
    ("address", "needle"),
    [("127.0.0.1:1", "cannot reach a Ray cluster at 127.0.0.1:1"), ("not a host:::", "is not HOST:PORT")],
)
def test_a_bad_ray_address_gives_one_line_at_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    address: str,
    needle: str,
) -> None:
    _, calls = _fake_backend(monkeypatch)
    start = time.monotonic()
    one_line(compare_argv(tmp_path, "--backend", "ray", "--ray-address", address), capsys, needle, seconds=20)
    assert time.monotonic() - start < 10 and calls == []
    with pytest.raises(UserError):
        check_ray_address(address)
