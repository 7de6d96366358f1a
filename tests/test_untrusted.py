"""Property tests of every parser of untrusted files (issue 23): checkpoint metadata, a foreign checkpoint's
``data``, committed records, ``--tuned`` files and suite files.

Hypothesis feeds each parser JSON/YAML of random shapes, shapes close to a valid document with one part
replaced, deep nesting, huge numbers, alias bombs and random bytes. Every example must end within
``SECONDS`` with a result or with the parser's one-line user error (never another exception), and the
whole test must not raise the process's peak memory by more than ``MEMORY_MB``.
"""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent

from rims_rl.app.checkpoint import CheckpointError, read_meta  # noqa: E402
from rims_rl.app.compare import read_tuned  # noqa: E402
from rims_rl.app.config import resolve_config  # noqa: E402
from rims_rl.app.errors import UserError  # noqa: E402
from rims_rl.app.foreign import read_foreign  # noqa: E402
from rims_rl.app.records import (  # noqa: E402
    RunJob,
    config_mismatch,
    finished_records,
    read_record,
    record_path,
)
from rims_rl.envs import load_suite_file  # noqa: E402
from rims_rl.envs.untrusted import UntrustedFileError, load_json, parse_json, parse_yaml  # noqa: E402

SECONDS = 5.0
MEMORY_MB = 400
FUZZ = settings(
    max_examples=40,
    deadline=None,  # timed below with SECONDS, which is what the issue asks for
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)

# ------------------------------------------------------------------------------------------ shapes
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**18, max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=25,
)


def deep(n: int, open_: str = "[") -> str:
    return open_ * n


raw_json = st.one_of(
    values.map(lambda v: json.dumps(v)),
    st.integers(1, 30_000).map(deep),
    st.integers(1, 30_000).map(lambda n: '{"a":' * n),
    st.integers(20, 6_000).map(lambda n: '{"x": ' + "9" * n + "}"),
    st.sampled_from(
        ['{"x": Infinity}', '{"x": -Infinity}', '{"x": NaN}', '{"x": 1e999}', "[]", "null", "{}"]
    ),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
)


def alias_bomb(levels: int) -> str:
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


raw_yaml = st.one_of(
    values.map(lambda v: yaml.safe_dump(v)),
    st.integers(1, 30_000).map(deep),
    st.integers(20, 6_000).map(lambda n: "train: " + "9" * n),
    st.integers(2, 12).map(alias_bomb),
    st.sampled_from(["train: .inf", "a: &x 1\nb: *x", "!!python/object:os.system {}", "[", "- - -"]),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
)


def replaced(doc: Any, data: st.DataObject) -> Any:
    """``doc`` with one part (chosen by hypothesis) replaced by a random value: shapes near a valid one."""
    doc = json.loads(json.dumps(doc))
    node, parent, key = doc, None, None
    while isinstance(node, dict | list) and node and data.draw(st.booleans()):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        parent, key = node, data.draw(st.sampled_from(keys))
        node = node[key]
    value = data.draw(values)
    if parent is None:
        return value
    parent[key] = value
    return doc


# --------------------------------------------------------------------------------------- the bound
@contextlib.contextmanager
def bounded_memory() -> Iterator[None]:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < MEMORY_MB, f"peak memory grew by {grown_mb:.0f} MB"


def answers(parse: Callable[[], Any], errors: tuple[type[Exception], ...]) -> None:
    """``parse()`` returns, or raises one of ``errors`` with a one-line message, within SECONDS (an alarm
    stops a parser that would hang, so the test fails instead)."""

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"no answer within {SECONDS} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, SECONDS)
    try:
        parse()
    except errors as err:
        assert "\n" not in str(err) and str(err), repr(err)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")
    path.write_bytes(text)
    return path


# ------------------------------------------------------------------------------- the bounded reader
@FUZZ
@given(text=raw_json)
def test_parse_json_answers_or_refuses_in_one_line(text: str) -> None:
    with bounded_memory():
        answers(lambda: parse_json(text), (UntrustedFileError,))


@FUZZ
@given(text=raw_yaml)
def test_parse_yaml_answers_or_refuses_in_one_line(text: str) -> None:
    with bounded_memory():
        answers(lambda: parse_yaml(text), (UntrustedFileError,))


def test_the_reader_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "zero").symlink_to("/dev/zero")
    for name in ("fifo", "zero", "."):
        with pytest.raises(UntrustedFileError, match="not a regular file"):
            load_json(tmp_path / name)


# ------------------------------------------------------------------------------------ the parsers
VALID_META = {
    "format": "rims-rl-checkpoint",
    "version": 1,
    "algo": "RecurrentPPO",
    "num_timesteps": 32,
    "config": {
        "env": {"name": "MiniGrid-Empty-5x5-v0", "env_id": "MiniGrid-Empty-5x5-v0", "kwargs": {}},
        "seed": 0,
        "model": {
            "agent": "lstm_ppo",
            "family": "minigrid",
            "algo": "RecurrentPPO",
            "policy": "auto",
            "n_envs": 2,
            "n_timesteps": 32,
            "env": {},
            "policy_kwargs": {"lstm_hidden_size": 16, "core": "lstm", "net_arch": [64]},
            "ppo": {"n_steps": 16, "batch_size": 16},
        },
    },
}
VALID_DATA = {
    "policy_class": {"__init__": "<function RecurrentActorCriticPolicy.__init__ at 0x7f>"},
    "policy_kwargs": {"lstm_hidden_size": 16, "net_arch": [64, 64]},
    "observation_space": {"_shape": [7, 7, 3]},
    "num_timesteps": 16,
    "clip_range": {},
}


def zip_with(path: Path, entry: str, text: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(entry, text.encode("utf-8", "surrogatepass"))
    return path


@FUZZ
@given(data=st.data(), text=raw_json)
def test_checkpoint_metadata(scratch: Path, data: st.DataObject, text: str) -> None:
    near = json.dumps(replaced(VALID_META, data))
    with bounded_memory():
        for doc in (text, near):
            path = zip_with(scratch / "meta.zip", "rims_config.json", doc)
            answers(lambda path=path: read_meta(path), (CheckpointError,))


@FUZZ
@given(data=st.data(), text=raw_json)
def test_foreign_data(scratch: Path, data: st.DataObject, text: str) -> None:
    near = json.dumps(replaced(VALID_DATA, data))
    with bounded_memory():
        for doc in (text, near):
            path = zip_with(scratch / "foreign.zip", "data", doc)
            answers(lambda path=path: read_foreign(path), (CheckpointError,))


JOB = RunJob(agent="lstm_ppo", seed=0, run_dir="", timesteps=128, suite="minigrid-doorkey", eval_episodes=2)


def valid_record(job: RunJob) -> dict[str, Any]:
    specs = [("train", "MiniGrid-DoorKey-5x5-v0")] + [
        (s, f"MiniGrid-DoorKey-{s}-v0") for s in ("6x6", "8x8", "16x16")
    ]
    records = [
        {
            "agent": job.agent,
            "seed": job.seed,
            "env": name,
            "env_id": env_id,
            "is_train": name == "train",
            "mean_return": 0.5,
            "std_return": 0.1,
            "success_rate": 1.0,
            "n_episodes": 2,
            "returns": [0.5, 0.5],
            "mean_length": 3.0,
            "timesteps": 128,
            "run_dir": job.run_dir,
        }
        for name, env_id in specs
    ]
    job_part = {k: v for k, v in asdict(job).items() if k not in ("device", "torch_threads")}
    curve = {"steps": [64, 128], "values": [0.1, 0.2]}
    return {
        "settings": job.eval_settings(),
        "job": job_part,
        "records": records,
        "curve": curve,
        "train_seconds": 2.5,
    }


@FUZZ
@given(data=st.data(), text=raw_json)
def test_committed_records(scratch: Path, data: st.DataObject, text: str) -> None:
    job = RunJob(**{**asdict(JOB), "run_dir": str(scratch / "out" / "runs" / "lstm_ppo-seed0")})
    record = record_path(job.run_dir)
    record.parent.mkdir(parents=True, exist_ok=True)
    near = json.dumps(replaced(valid_record(job), data))
    with bounded_memory():
        for doc in (text, near):
            write(record, doc)
            answers(lambda: finished_records(job), (UserError,))
            answers(lambda: read_record(job.run_dir), (UserError,))


def test_a_valid_record_is_read_back(tmp_path: Path) -> None:
    """The fuzzed parser accepts the real shape (else the property above would be vacuous)."""
    job = RunJob(**{**asdict(JOB), "run_dir": str(tmp_path / "runs" / "lstm_ppo-seed0")})
    record_path(job.run_dir).parent.mkdir(parents=True)
    write(record_path(job.run_dir), json.dumps(valid_record(job)))
    found = finished_records(job)
    assert found is not None and len(found[0]) == 4 and found[1] is not None
    assert found[1].train_seconds == 2.5 and found[1].curve is not None


@FUZZ
@given(data=st.data(), text=raw_json)
def test_run_configs_of_an_out_folder(scratch: Path, data: st.DataObject, text: str) -> None:
    """``compare`` reads the config.json of every run already in ``--out`` (``RunConfig.from_dict``)."""
    job = RunJob(**{**asdict(JOB), "run_dir": str(scratch / "out" / "runs" / "lstm_ppo-seed0")})
    config = Path(job.run_dir) / "config.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    valid = resolve_config("lstm_ppo", suite="minigrid-doorkey", timesteps=128).to_dict()
    near = json.dumps(replaced(valid, data))
    with bounded_memory():
        for doc in (text, near):
            write(config, doc)
            answers(lambda: config_mismatch(job), (UserError,))


def test_a_valid_run_config_matches(tmp_path: Path) -> None:
    """The fuzzed parser accepts the real shape (else the property above would be vacuous)."""
    job = RunJob(**{**asdict(JOB), "run_dir": str(tmp_path / "runs" / "lstm_ppo-seed0")})
    Path(job.run_dir).mkdir(parents=True)
    config = resolve_config("lstm_ppo", suite="minigrid-doorkey", timesteps=128).to_dict()
    write(Path(job.run_dir) / "config.json", json.dumps(config))
    assert config_mismatch(job) is None


@FUZZ
@given(data=st.data(), text=raw_json)
def test_tuned_files(scratch: Path, data: st.DataObject, text: str) -> None:
    valid = {"agents": {"lstm_ppo": {"chosen": {"ppo.learning_rate": 0.001}, "tried": []}}}
    near = json.dumps(replaced(valid, data))
    with bounded_memory():
        for doc in (text, near):
            path = write(scratch / "tune.json", doc)
            answers(lambda path=path: read_tuned(path, ["lstm_ppo"]), (UserError,))


VALID_SUITE = {
    "name": "fuzz",
    "train": {"id": "MiniGrid-DoorKey-5x5-v0", "kwargs": {"max_steps": 100}},
    "variants": [{"name": "big", "id": "MiniGrid-DoorKey-8x8-v0", "kwargs": {"size": 9}}],
}


@FUZZ
@given(data=st.data(), text=raw_yaml)
def test_suite_files(scratch: Path, data: st.DataObject, text: str) -> None:
    near = yaml.safe_dump(replaced(VALID_SUITE, data))
    with bounded_memory():
        for doc in (text, near):
            path = write(scratch / "suite.yml", doc)
            answers(lambda path=path: load_suite_file(path, register=False), (ValueError,))
