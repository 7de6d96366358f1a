"""Crafted checkpoints evaluated without --trust-checkpoint (issue 23): bounded before anything is built.

Each crafted file is evaluated by ``train.main`` in one child process with a memory cap (RLIMIT_AS) and a
per-case alarm, so a regression fails the test (a timeout or a killed child) instead of hanging it or
exhausting the machine's memory. Every case must give one ``error:`` line and exit 2, or, where the
user's command line says what to do, run as asked.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch as th
from conftest import TINY_ENV, TINY_PPO
from sb3_contrib import RecurrentPPO

ROOT = Path(__file__).resolve().parent.parent

import train  # noqa: E402
from rims_rl.app.runs import train_run  # noqa: E402
from rims_rl.envs import make_vec_env_for  # noqa: E402

MEMORY_CAP = 4 * 2**30  # bytes of address space for the child (torch alone takes about 0.7 GiB)
CASE_SECONDS = 60  # today's code hangs for minutes on each critical case

_CHILD = textwrap.dedent(
    """
    import contextlib, io, json, resource, signal, sys
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
    sys.path.insert(0, sys.argv[3])
    import train

    def alarm(signum, frame):
        raise TimeoutError("case took too long")

    signal.signal(signal.SIGALRM, alarm)
    for argv in json.loads(open(sys.argv[1]).read()):
        err = io.StringIO()
        signal.alarm(int(sys.argv[4]))
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = train.main(argv)
        except BaseException as exc:  # a traceback, a timeout or an allocation failure: the case failed
            code, err = -1, io.StringIO(f"{type(exc).__name__}: {exc}")
        signal.alarm(0)
        print(json.dumps({"code": code, "err": err.getvalue()}), flush=True)
    """
)


def run_bounded(cases: list[list[str]], tmp_path: Path) -> list[tuple[int, str]]:
    """``train.main(argv)`` for each case in one child process with a memory cap and a time limit each."""
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps(cases))
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(spec), str(MEMORY_CAP), str(ROOT), str(CASE_SECONDS)],
        capture_output=True,
        text=True,
        timeout=CASE_SECONDS * len(cases) + 60,
        cwd=tmp_path,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == len(cases), f"the child died after {len(lines)} case(s): {proc.stderr[-2000:]}"
    return [(line["code"], line["err"]) for line in lines]


def assert_one_line(result: tuple[int, str], *needles: str) -> None:
    code, err = result
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished rims_ppo run on Empty-5x5 (a few seconds)."""
    run = tmp_path_factory.mktemp("hostile") / "run"
    train_run(
        "rims_ppo",
        TINY_ENV,
        timesteps=32,
        n_envs=2,
        overrides=dict(TINY_PPO),
        run_dir=run,
        progress_bar=False,
        device="cpu",
    )
    return run / "model.zip"


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained sb3-contrib RecurrentPPO zip (a foreign checkpoint)."""
    env = make_vec_env_for(TINY_ENV, n_envs=1, seed=0, vec_cls="dummy")
    model = RecurrentPPO(
        "MlpLstmPolicy", env, n_steps=8, batch_size=8, policy_kwargs={"lstm_hidden_size": 16}
    )
    path = tmp_path_factory.mktemp("stock") / "stock.zip"
    model.save(path)
    env.close()
    return path


def rewrite(src: Path, dst: Path, entry: str, change: Any) -> Path:
    """A copy of ``src`` whose JSON (or tensor) ``entry`` is passed through ``change``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == entry and entry.endswith(".pth"):
                state = th.load(io.BytesIO(data), weights_only=True)
                change(state)
                buf = io.BytesIO()
                th.save(state, buf)
                data = buf.getvalue()
            elif name == entry:
                doc = json.loads(data)
                change(doc)
                data = json.dumps(doc).encode()
            zout.writestr(name, data)
    return dst


def set_path(*path: str, value: Any) -> Any:
    def change(doc: dict) -> None:
        for key in path[:-1]:
            doc = doc.setdefault(key, {})
        doc[path[-1]] = value

    return change


def evaluate(checkpoint: Path, *extra: str) -> list[str]:
    return [
        "evaluate",
        "--checkpoint",
        str(checkpoint),
        "--episodes",
        "1",
        "--out",
        str(checkpoint.parent),
        *extra,
    ]


# ---------------------------------------------------------------------------------------- critical
def test_crafted_sizes_are_refused_before_anything_is_built(ours: Path, stock: Path, tmp_path: Path) -> None:
    """Critical: a 2M-entry net_arch (repr or JSON), features_dim=10**7 or net_arch=[4]*100000 in our
    format, and item 2's constructor crashes: one line each, within the time and memory caps."""
    policy = ("config", "model", "policy_kwargs")
    repr_kwargs = {":type:": "<class 'dict'>", ":serialized:": "AAAA", "net_arch": repr((4,) * 2_000_000)}
    foreign = {
        "repr-2M": set_path("policy_kwargs", value=repr_kwargs),
        "json-200k": set_path("policy_kwargs", value={"net_arch": [4] * 200_000}),
        "wide": set_path("policy_kwargs", value={"net_arch": [10**7, 10**7]}),
        "hidden": set_path("policy_kwargs", value={"lstm_hidden_size": 10**6}),
        "negative": set_path("policy_kwargs", value={"net_arch": [-5]}),
        "squash": set_path("policy_kwargs", value={"squash_output": True}),
        "batch-first": set_path("policy_kwargs", value={"lstm_kwargs": {"batch_first": True}}),
    }
    own = {
        "features": set_path(*policy, "features_extractor_kwargs", value={"features_dim": 10**7}),
        "layers": set_path(*policy, "net_arch", value=[4] * 100_000),
        "own-batch-first": set_path(*policy, "lstm_kwargs", value={"batch_first": True}),
    }
    cases = [
        evaluate(rewrite(stock, tmp_path / f"{k}.zip", "data", c), "--env", TINY_ENV)
        for k, c in foreign.items()
    ]
    cases += [evaluate(rewrite(ours, tmp_path / f"{k}.zip", "rims_config.json", c)) for k, c in own.items()]
    results = run_bounded(cases, tmp_path)
    needles = {
        "repr-2M": "characters long",
        "json-200k": "200000 layers; at most 16",
        "wide": "net_arch must be an integer in [1, 4096]",
        "hidden": "lstm_hidden_size must be an integer in [1, 4096]",
        "negative": "net_arch must be an integer in [1, 4096], got -5",
        "squash": "squash_output",
        "batch-first": "lstm_kwargs.batch_first cannot be set",
        "features": "features_dim must be at most 4096",
        "layers": "100000 layers; at most 16",
        "own-batch-first": "lstm_kwargs.batch_first cannot be set",
    }
    for name, result in zip([*foreign, *own], results, strict=True):
        assert_one_line(result, needles[name])


def test_a_checkpoints_env_settings_never_override_the_command_line(ours: Path, tmp_path: Path) -> None:
    """Critical: max_steps=10**9, size=30000 or render_mode=human in our format's env settings. With an
    explicit --env they are not carried over (the run is as asked); without, they are refused."""
    crafted = {
        "steps": {"max_steps": 1_000_000_000},
        "size": {"size": 30_000},
        "human": {"render_mode": "human"},
    }
    paths = {
        k: rewrite(
            ours, tmp_path / f"{k}.zip", "rims_config.json", set_path("config", "model", "env", value=v)
        )
        for k, v in crafted.items()
    }
    spec_kwargs = rewrite(
        ours,
        tmp_path / "spec.zip",
        "rims_config.json",
        set_path("config", "env", "kwargs", value={"size": 30000}),
    )
    cases = [evaluate(p, "--env", TINY_ENV) for p in paths.values()]
    cases += [evaluate(p) for p in paths.values()]
    cases += [evaluate(spec_kwargs)]
    results = run_bounded(cases, tmp_path)
    for code, err in results[:3]:
        assert code == 0, err
    for result, needle in zip(
        results[3:], ["max_steps=1000000000", "size=30000", "render_mode='human'", "size=30000"], strict=True
    ):
        assert_one_line(result, "env settings are invalid", needle)


# ------------------------------------------------------------------------------------------ major 3
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nan_or_inf_weights_are_refused_before_any_episode(
    ours: Path, stock: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: float
) -> None:
    def poison(state: dict) -> None:
        for tensor in state.values():
            tensor.fill_(value)

    for src, extra in ((ours, []), (stock, ["--env", TINY_ENV])):
        crafted = rewrite(src, tmp_path / f"poisoned-{src.stem}.zip", "policy.pth", poison)
        code = train.main(evaluate(crafted, *extra))
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
        assert "NaN or infinite values" in err


# ------------------------------------------------------------------------------------------ major 5
@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("env.evil=1", "unknown keyword argument 'evil'"),
        ("env.=1", "env.KEY=VALUE"),
        ("env.size=abc", "size='abc'"),
        ("env.agent_view_size=-3", "agent_view_size=-3"),
        ("env.max_steps=-1", "max_steps=-1"),
        ("env.encode_mission=abc", "encode_mission='abc'"),
    ],
)
def test_evaluate_set_env_values_are_checked(
    ours: Path, capsys: pytest.CaptureFixture[str], setting: str, needle: str
) -> None:
    code = train.main([*evaluate(ours), "--set", setting])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err


def test_evaluate_set_frame_stack_abc_on_atari_is_one_line(
    stock: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = train.main([*evaluate(stock, "--env", "ALE/Pong-v5"), "--set", "env.frame_stack=abc"])
    err = capsys.readouterr().err
    assert code == 2 and "frame_stack='abc'" in err and "Traceback" not in err, err


# ------------------------------------------------------------------------------------------ major 1
@pytest.mark.parametrize(
    ("entry", "text", "needle"),
    [
        ("rims_config.json", "[" * 20_000, "nested more than 64 levels"),
        ("rims_config.json", '{"format": ' + "1" * 5000 + "}", "an integer of 5000 digits"),
        ("data", "[" * 20_000, "nested more than 64 levels"),
        ("data", '{"num_timesteps": ' + "1" * 5000 + "}", "an integer of 5000 digits"),
        ("data", b"\xff\xfe", "is not UTF-8 text"),
    ],
)
def test_nested_or_huge_metadata_gives_one_line(
    ours: Path,
    stock: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    entry: str,
    text: Any,
    needle: str,
) -> None:
    src = ours if entry == "rims_config.json" else stock
    crafted = tmp_path / "crafted.zip"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(crafted, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, text if name == entry else zin.read(name))
    code = train.main(evaluate(crafted, "--env", TINY_ENV))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err


# -------------------------------------------------------------------------------------------- minor
def test_a_foreign_checkpoint_records_videos_without_asking_for_trust(
    stock: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = train.main([*evaluate(stock, "--env", TINY_ENV), "--video", str(tmp_path / "videos")])
    assert code == 0, capsys.readouterr().err
    assert list((tmp_path / "videos").rglob("*.gif"))


@pytest.mark.parametrize("link", ["alias", "model.zip"])
def test_a_linked_pretrained_alias_writes_its_eval_files_to_runs_eval(
    ours: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], link: str
) -> None:
    from rims_rl.app import checkpoint

    pretrained, target = tmp_path / "pretrained", tmp_path / "elsewhere"
    pretrained.mkdir()
    target.mkdir()
    (target / "model.zip").write_bytes(ours.read_bytes())
    if link == "alias":
        (pretrained / "linked").symlink_to(target)
    else:
        (pretrained / "linked").mkdir()
        (pretrained / "linked" / "model.zip").symlink_to(target / "model.zip")
    monkeypatch.setattr(checkpoint, "PRETRAINED_DIR", pretrained)
    monkeypatch.chdir(tmp_path)
    code = train.main(["evaluate", "--checkpoint", "linked", "--episodes", "1"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "runs" / "eval" / "linked" / "eval.json").is_file()
    assert sorted(p.name for p in target.iterdir()) == ["model.zip"]
    assert not list(pretrained.rglob("eval*"))


def _patched(members: dict[str, bytes], how: str) -> bytes:
    """A stored (uncompressed) zip of ``members`` with its first member damaged as ``how`` says: an
    encrypted flag, an unknown compression method, or a flipped data byte (a bad CRC)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    raw = bytearray(buf.getvalue())
    local, central = raw.find(b"PK\x03\x04"), raw.find(b"PK\x01\x02")
    if how == "encrypted":
        raw[local + 6] |= 1
        raw[central + 8] |= 1
    elif how == "compression":
        raw[local + 8 : local + 10] = (99).to_bytes(2, "little")
        raw[central + 10 : central + 12] = (99).to_bytes(2, "little")
    else:
        name_len = int.from_bytes(raw[local + 26 : local + 28], "little")
        raw[local + 30 + name_len] ^= 0xFF
    return bytes(raw)


@pytest.mark.parametrize("how", ["encrypted", "compression", "crc"])
@pytest.mark.parametrize("kind", ["ours", "foreign"])
def test_zip_anomalies_in_a_checkpoint_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str, kind: str
) -> None:
    """Issue 39.5: an encrypted member, an unknown compression method or a bad CRC in a checkpoint (ours:
    its metadata; another project's: its `data`) gives one line, exit 2, no traceback."""
    first = "rims_config.json" if kind == "ours" else "data"
    path = tmp_path / "model.zip"
    path.write_bytes(_patched({first: b'{"a": 1}' * 8, "policy.pth": b"x"}, how))
    argv = ["evaluate", "--checkpoint", str(path), "--env", TINY_ENV, "--episodes", "1"]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
