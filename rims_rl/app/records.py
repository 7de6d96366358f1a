"""What ``compare`` keeps of a run: its job, its compact record and its evaluation JSON, read and checked.

A job (``RunJob``) is one (agent, seed) of a comparison. Once trained and evaluated it leaves two files:

- ``<out>/runs/<agent>-seed<k>/compare_eval.json`` (``EVAL_NAME``) beside the run's weights: the raw
  evaluation results and the score records; it marks the run finished.
- ``<out>/records/<agent>-seed<k>.json`` (``record_path``), the run's compact record (``RunRecord``): the
  evaluation settings, the job, the score records per env, the learning curve and, when trained from
  scratch, the training wall time. A few KiB and no weights, so it can be committed: a later session on a
  new machine skips the run.

Both are read back as untrusted (a committed file may come from anyone): with the bounded reader, every
score record checked against the job, and every problem a ``UserError`` naming the file and the fix. The
record format only grows: new fields are optional, so records written by older versions still load.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rims_rl.app import rundir
from rims_rl.app.atomic import atomic_write_json
from rims_rl.app.config import RunConfig
from rims_rl.app.curves import CURVE_TAG, Curve, read_learning_curves
from rims_rl.app.errors import UserError
from rims_rl.app.evaluation import EVAL_PROTOCOL
from rims_rl.app.summary import ScoreRecord, score_record
from rims_rl.envs import EnvSpec, Suite, get_suite
from rims_rl.envs.untrusted import MissingFileError, UntrustedFileError, load_json

EVAL_NAME = "compare_eval.json"
RECORDS_DIR = "records"

#: The job fields that make a run *this* experiment (what ``compare`` chooses); another value of any
#: means ``--out`` is being reused for other settings.
IDENTITY: tuple[str, ...] = ("agent", "seed", "suite", "env_id", "timesteps", "n_envs", "overrides")
#: Training scalars a run's record keeps beside the learning curve when the run logged them: how far each
#: update moved the policy (``--log-policy-shift``) and how evenly RIMs-like cores used their units.
DIAGNOSTIC_TAGS: tuple[str, ...] = ("train/policy_kl", "rims/usage_entropy")

__all__ = [
    "EVAL_NAME",
    "DIAGNOSTIC_TAGS",
    "IDENTITY",
    "RECORDS_DIR",
    "RunJob",
    "RunRecord",
    "config_mismatch",
    "finished_records",
    "is_finished",
    "read_record",
    "read_record_curve",
    "record_path",
    "target_of",
    "write_eval",
    "write_record",
]


@dataclass(frozen=True)
class RunJob:
    """Everything a worker needs to train and evaluate one (agent, seed); picklable for spawn."""

    agent: str
    """The agent (a preset name, possibly with a core: ``catalog.with_core``)."""
    seed: int
    """Training seed (all agents of one seed get the same)."""
    run_dir: str
    """``<out>/runs/<agent>-seed<k>``."""
    timesteps: int | None
    """Training budget; None for the preset's."""
    suite: str | None = None
    """The suite trained on (its train env) and evaluated on (every spec); or None with ``env_id``."""
    env_id: str | None = None
    """A single env to train and evaluate on instead of a suite."""
    n_envs: int | None = None
    """Parallel training envs; None for the preset's."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """``--set`` overrides (tuned values under them), applied to the preset."""
    eval_episodes: int = EVAL_PROTOCOL.episodes
    """Evaluation episodes per env."""
    eval_seed: int = EVAL_PROTOCOL.seed
    """Seed of the evaluation episodes, the same for every run: all agents are scored on the same episodes."""
    deterministic: bool = EVAL_PROTOCOL.deterministic
    """Greedy (True) or sampled actions in evaluation."""
    log_policy_shift: bool = False
    """Log ``train/policy_kl`` per update while training; the record keeps it with the other
    ``DIAGNOSTIC_TAGS`` (not part of the experiment's identity: it measures, it does not change, the run)."""
    device: str = "auto"
    """Torch device (not part of the record: a run may move)."""
    torch_threads: int | None = None
    """Torch threads (not part of the record)."""

    def eval_settings(self) -> dict[str, Any]:
        """What a stored evaluation must match to be reused (else re-evaluated, not retrained)."""
        return {
            "target": self.suite or self.env_id,
            "eval_episodes": self.eval_episodes,
            "eval_seed": self.eval_seed,
            "deterministic": self.deterministic,
            "envs": self.scored_envs(),
        }

    def scored_envs(self) -> list[list[Any]]:
        """``[name, id, kwargs]`` of every env the run is scored on, as JSON gives them back: variants that
        share an id (Atari's modes, POPGym's decks) differ only in their kwargs, so a suite whose kwargs
        changed since is another evaluation."""
        return json.loads(self._scored_envs_json)

    @functools.cached_property
    def _scored_envs_json(self) -> str:
        """The suite is resolved (and a suite file read) once per job, not at every settings check."""
        target = target_of(self)
        specs = target.specs() if isinstance(target, Suite) else (target,)
        return json.dumps([[s.name, s.env_id, dict(s.kwargs)] for s in specs], default=str)

    def same_eval_settings(self, stored: Any) -> bool:
        """``stored`` (a record's or eval.json's settings) matches this job's; settings written before the
        envs were kept are matched without them (their envs are checked by name and id)."""
        want = self.eval_settings()
        if isinstance(stored, Mapping) and "envs" not in stored:
            del want["envs"]
        return isinstance(stored, Mapping) and dict(stored) == want

    def record_part(self) -> dict[str, Any]:
        """The ``job`` object of the run's record (without the machine's device and threads)."""
        return {k: v for k, v in asdict(self).items() if k not in ("device", "torch_threads")}


@dataclass(frozen=True)
class RunRecord:
    """A run's compact record, ``<out>/records/<agent>-seed<k>.json``, as read back (checked)."""

    settings: Mapping[str, Any]
    """The evaluation settings (``RunJob.eval_settings``) the scores were measured with."""
    job: Mapping[str, Any]
    """The job (``RunJob.record_part``) as stored."""
    records: Sequence[Any]
    """The score records as stored; ``finished_records`` checks them against the job."""
    curve: Curve | None = None
    """The training curve (steps, episode return); None when absent or damaged."""
    train_seconds: float | None = None
    """Training wall time when the run was trained from scratch in one go; None otherwise (or damaged)."""
    diagnostics: Mapping[str, Curve] = field(default_factory=dict)
    """``DIAGNOSTIC_TAGS`` the run logged, each (steps, values); damaged or unknown ones are dropped."""

    @classmethod
    def from_dict(cls, data: Any, source: Path) -> RunRecord:
        """From the JSON file ``source`` (untrusted): ``UserError`` when its required parts are not
        there; a damaged curve or training time is dropped (the report is drawn without it)."""
        fix = "; delete it to redo that run"
        if not isinstance(data, dict):
            raise UserError(f"run record {str(source)!r} is not a JSON object{fix}")
        job, records = data.get("job"), data.get("records", [])
        if not isinstance(job, dict) or not isinstance(records, list):
            raise UserError(f"{source} is not a valid run record{fix}")
        settings = data.get("settings")
        return cls(
            settings=settings if isinstance(settings, dict) else {},
            job=job,
            records=records,
            curve=_curve(data.get("curve")),
            train_seconds=_seconds(data.get("train_seconds")),
            diagnostics=_diagnostics(data.get("diagnostics")),
        )

    def is_of(self, job: RunJob) -> bool:
        """The record of the same experiment (``IDENTITY``) and evaluation settings as ``job``."""
        return job.same_eval_settings(self.settings) and not self.differences(job)

    def differences(self, job: RunJob) -> list[str]:
        """``IDENTITY`` fields where the record and ``job`` differ, as ``key: record has .., asked ..``."""
        return [
            f"{k}: record has {self.job.get(k)!r}, asked {getattr(job, k)!r}"
            for k in IDENTITY
            if self.job.get(k) != getattr(job, k)
        ]


def _seconds(raw: Any) -> float | None:
    """A stored positive, finite duration, or None when absent or damaged."""
    if not isinstance(raw, int | float) or isinstance(raw, bool):
        return None
    try:
        seconds = float(raw)
    except OverflowError:  # an integer beyond any float
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _curve(raw: Any) -> Curve | None:
    """A stored curve, or None when absent or damaged."""
    if not isinstance(raw, dict):
        return None
    try:
        steps = np.asarray(raw.get("steps", []), dtype=np.float64)
        values = np.asarray(raw.get("values", []), dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return (steps, values) if steps.shape == values.shape and steps.ndim == 1 else None


def _diagnostics(raw: Any) -> dict[str, Curve]:
    """The stored ``DIAGNOSTIC_TAGS`` curves that are intact (others in the file are ignored)."""
    if not isinstance(raw, dict):
        return {}
    return {tag: c for tag in DIAGNOSTIC_TAGS if (c := _curve(raw.get(tag))) is not None}


def _load_json(path: Path, what: str) -> Any:
    """A JSON document stored under ``--out``, or None when absent; read with the bounded reader, so a
    FIFO, a link to a device, a giant or deeply nested file is a ``UserError`` naming it."""
    try:
        return load_json(path, what)
    except MissingFileError:
        return None
    except UntrustedFileError as err:
        raise UserError(f"{err}; delete it to redo that run") from err


def _load_object(path: Path, what: str) -> dict[str, Any] | None:
    """``_load_json`` of a file that must hold a JSON object."""
    data = _load_json(path, what)
    if data is not None and not isinstance(data, dict):
        raise UserError(f"{what} {str(path)!r} is not a JSON object; delete it to redo that run")
    return data


def record_path(run_dir: str | Path) -> Path:
    """``<out>/records/<agent>-seed<k>.json`` for ``<out>/runs/<agent>-seed<k>``."""
    run_dir = Path(run_dir)
    return run_dir.parent.parent / RECORDS_DIR / f"{run_dir.name}.json"


def read_record(run_dir: str | Path) -> RunRecord | None:
    """The run's compact record, checked (``RunRecord.from_dict``); None when there is none."""
    path = record_path(run_dir)
    data = _load_json(path, "run record")
    return None if data is None else RunRecord.from_dict(data, path)


def read_record_curve(run_dir: str | Path) -> Curve | None:
    """The learning curve kept in the run's record, if any."""
    record = read_record(run_dir)
    return None if record is None else record.curve


def stored_config(job: RunJob) -> RunConfig | None:
    """The ``config.json`` of the run already in ``job.run_dir`` (None if absent), parsed with
    ``RunConfig.from_dict``: it is untrusted, so a bad one is a ``UserError`` with the fix."""
    path = rundir.config_path(job.run_dir)
    data = _load_object(path, "run config")
    if data is None:
        return None
    try:
        return RunConfig.from_dict(data)
    except ValueError as err:
        raise UserError(
            f"{path} is not a valid run config ({err}); delete {job.run_dir} to redo that run, "
            "or use another --out"
        ) from err


def config_mismatch(job: RunJob) -> str | None:
    """Why the run already in ``job.run_dir`` (or its record) is a different experiment; None if it
    matches or is absent.

    Compared: agent, seed, env/suite, requested timesteps, n_envs and overrides, i.e. what ``compare``
    chooses (``IDENTITY``); a mismatch means ``--out`` is being reused for other settings. A record of
    this run with other evaluation settings counts too when no run directory is left to re-evaluate.
    """
    record = read_record(job.run_dir)
    if record is not None:  # a committed record: the run may exist only as this file
        diffs = record.differences(job)
        if diffs:
            return (
                f"{record_path(job.run_dir)} records a run with other settings ({'; '.join(diffs)}); "
                "use another --out or delete that record"
            )
        if not job.same_eval_settings(record.settings) and not rundir.is_run_dir(job.run_dir):
            # this very run, scored another way, with no model here to re-score: training it again would
            # silently replace a result (e.g. one committed under other evaluation defaults)
            others = {k: v for k, v in record.settings.items() if k not in ("target", "envs")}
            if others == {k: v for k, v in job.eval_settings().items() if k not in ("target", "envs")}:
                was = record.settings.get("envs")
                if isinstance(was, list) and was and not trains_on_current_env(job, was[0]):
                    return _another_experiment(
                        f"{record_path(job.run_dir)}: this run was trained on {_short(was[0])}", job
                    )
                return (
                    f"{record_path(job.run_dir)} holds this run scored on the suite's envs as they were "
                    f"({_short(record.settings.get('envs'))}), and its model is not here to score it on "
                    "the suite as it is now: restore its run directory, or delete the record to train it "
                    "again"
                )
            stored = ", ".join(f"{k}={v}" for k, v in sorted(others.items()))
            return (
                f"{record_path(job.run_dir)} holds this run evaluated with other settings ({stored}) and "
                "its model is not here to re-evaluate: give those evaluation flags (--eval-episodes, "
                "--deterministic/--stochastic) to reuse it, or delete the record to train it again"
            )
    config = stored_config(job)
    if config is None:
        return None
    checks: dict[str, tuple[Any, Any]] = {
        "agent": (config.agent, job.agent),
        "seed": (config.seed, job.seed),
        "suite": (config.suite, job.suite),
        "overrides": (dict(config.overrides), dict(job.overrides)),
    }
    if job.env_id is not None:
        checks["env"] = (config.env.env_id, job.env_id)
    else:  # a suite whose training env changed since (id or kwargs): not this run, whatever it is called
        trained_on = [config.env.name, config.env.env_id, dict(config.env.kwargs)]
        if not trains_on_current_env(job, trained_on):
            checks["training env"] = (json.loads(json.dumps(trained_on, default=str)), training_env(job))
    if job.timesteps is not None:  # None: the preset's budget, whatever it is now
        checks["timesteps"] = (config.timesteps_requested, job.timesteps)
    if job.n_envs is not None:
        checks["n_envs"] = (config.n_envs, job.n_envs)
    diffs = [f"{k}: run has {have!r}, asked {want!r}" for k, (have, want) in checks.items() if have != want]
    if not diffs:
        return None
    return (
        f"{job.run_dir} holds a run with other settings ({'; '.join(diffs)}); "
        "use another --out or delete that run directory"
    )


def is_finished(job: RunJob) -> bool:
    """True when the run is trained and evaluated with ``job``'s settings (nothing to do).

    Either its compact record says so, which is all a later session on a new machine has, or its run
    directory holds the final model and an evaluation with these settings.
    """
    return finished_records(job) is not None


def finished_records(job: RunJob) -> tuple[list[ScoreRecord], RunRecord | None] | None:
    """The stored scores of a finished run, each checked against ``job``, and its compact record when
    they come from it (None when they come from the run directory's evaluation JSON, written before
    records existed); None when the run is not finished with these settings."""
    record = read_record(job.run_dir)
    run_dir = Path(job.run_dir)
    if record is not None and record.is_of(job):
        checked = _checked_records(job, record.records, record_path(job.run_dir))
        return None if checked is None else (checked, record)
    source = run_dir / EVAL_NAME
    stored = _load_object(source, "evaluation")
    if (
        rundir.finished_model(run_dir) is not None
        and stored is not None
        and job.same_eval_settings(stored.get("settings"))
        and config_mismatch(job) is None
    ):
        checked = _checked_records(job, stored.get("records"), source)
        return None if checked is None else (checked, None)
    return None


def target_of(job: RunJob) -> Suite | EnvSpec:
    """What the job evaluates on: its suite, or its single env with the ``env.*`` settings it was trained
    with (``tune`` trains a suite's training env that way: CountRecall's padded actions, a smaller room),
    so that the policy meets the spaces and the task it learned."""
    if job.suite:
        return get_suite(job.suite)
    env_id = str(job.env_id)
    kwargs = {key[len("env.") :]: value for key, value in job.overrides.items() if key.startswith("env.")}
    return EnvSpec(env_id, env_id, kwargs)


def _checked_records(job: RunJob, raw: Any, source: Path) -> list[ScoreRecord] | None:
    """The score records of a stored run (untrusted: a committed file), each checked against the job:
    a valid record of this agent and seed, on an env of the job's suite (or env), every env once.

    None when the records are valid but the suite's envs have changed since (a variant added, removed
    or pointed at another id) and the run's final model is there to evaluate again: the caller
    re-evaluates it instead of training it again. Without the model that is a ``UserError``."""
    fix = "; delete it to redo that run"
    if not isinstance(raw, list):
        raise UserError(f"{source} holds no list of records{fix}")
    target = target_of(job)
    specs = target.specs() if isinstance(target, Suite) else (target,)
    expected = {s.name: s.env_id for s in specs}
    train_env = training_env(job)
    train_name = None if train_env is None else train_env[0]  # which record is the training env's
    records: list[ScoreRecord] = []
    changed: str | None = None
    for i, item in enumerate(raw):
        try:
            rec = score_record(item)
        except ValueError as err:
            raise UserError(f"{source}: record {i}: {err}{fix}") from err
        if (rec["agent"], rec["seed"]) != (job.agent, job.seed):
            raise UserError(
                f"{source}: record {i} is of agent {_short(rec['agent'])} seed {rec['seed']!r}, not of this "
                f"run ({job.agent} seed {job.seed}){fix}"
            )
        is_train = rec["env"] == train_name if train_name is not None else True
        claim = f"{source}: record {i} is for env {_short(rec['env'])} ({_short(rec['env_id'])})"
        # score records keep no kwargs: their name and id are checked
        if rec["is_train"] and not _same_env([rec["env"], rec["env_id"]], train_env):
            # another training env: another experiment, never re-scored as if it were this one
            raise UserError(_another_experiment(claim, job))
        if expected.get(rec["env"]) != rec["env_id"] or rec["is_train"] != is_train:
            changed = changed or f"{claim}, which {job.suite or job.env_id} does not hold as such"
        records.append(ScoreRecord(**{**rec, "run_dir": job.run_dir}))
    names = sorted(r["env"] for r in records)
    if changed is None and names != sorted(expected):
        target_name = job.suite or job.env_id
        changed = f"{source} scores envs {names}, {target_name} has {sorted(expected)}"
    if changed is None:
        return records
    if rundir.finished_model(job.run_dir) is not None and config_mismatch(job) is None:
        return None  # the suite changed since: evaluate the final model again
    raise UserError(changed + fix)


def trains_on_current_env(job: RunJob, trained_on: Any) -> bool:
    """Whether ``trained_on`` (``[name, id]`` as score records keep it, or ``[name, id, kwargs]`` as
    records' settings and configs do) is the env the job's suite trains on now: the one check that a run,
    whatever file describes it, is this experiment and not another. A single-env job: always."""
    return _same_env(trained_on, training_env(job))


def _same_env(trained_on: Any, current: list[Any] | None) -> bool:
    """``trains_on_current_env`` with the suite's current training env already built."""
    if current is None:
        return True
    if not isinstance(trained_on, list | tuple) or not 2 <= len(trained_on) <= 3:
        return False
    return json.loads(json.dumps(list(trained_on), default=str)) == current[: len(trained_on)]


def training_env(job: RunJob) -> list[Any] | None:
    """``[name, id, kwargs]`` of the env the job's suite trains on now, as records and configs keep it;
    None for a single-env job, whose env is part of its identity. A run trained on anything else is
    another experiment: its model is never scored as if it had learned this suite's task."""
    return job.scored_envs()[0] if job.suite else None


def _another_experiment(claim: str, job: RunJob) -> str:
    return (
        f"{claim} as the run's training env, but {job.suite} "
        f"trains on {_short(training_env(job))}: another experiment; use another --out, or delete it to "
        "redo that run"
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def write_eval(job: RunJob, raw: Sequence[Mapping[str, Any]], records: Sequence[ScoreRecord]) -> Path:
    """``compare_eval.json`` in the run directory: the raw evaluation results and the score records.
    Written last, atomically: it marks the run finished."""
    payload = {
        "settings": job.eval_settings(),
        "job": asdict(job),
        "raw": [dict(r) for r in raw],
        "records": [dict(r) for r in records],
    }
    return atomic_write_json(Path(job.run_dir) / EVAL_NAME, payload)


def _curve_json(curve: Curve | None) -> dict[str, list[float]] | None:
    return None if curve is None else {"steps": curve[0].tolist(), "values": curve[1].tolist()}


def write_record(job: RunJob, records: Sequence[ScoreRecord], train_seconds: float | None = None) -> Path:
    """The run's compact record: settings, scores per env, the learning curve (a few KiB) and, when this
    process trained the run from scratch, its training wall time (the throughput a report can quote).
    A run evaluated again whose logs are gone keeps the curve its previous record holds."""
    logged = read_learning_curves(job.run_dir, (CURVE_TAG, *DIAGNOSTIC_TAGS))
    curve = logged.pop(CURVE_TAG, None)
    diagnostics = logged
    if curve is None or len(diagnostics) < len(DIAGNOSTIC_TAGS):
        try:
            previous = read_record(job.run_dir)
        except UserError:  # a damaged record is about to be replaced
            previous = None
        if previous is not None:  # logs gone (or some of them): keep what the record already holds
            curve = previous.curve if curve is None else curve
            diagnostics = {**previous.diagnostics, **diagnostics}
    payload: dict[str, Any] = {
        "settings": job.eval_settings(),
        "job": job.record_part(),
        "records": [dict(r) for r in records],
        "curve": _curve_json(curve),
    }
    if diagnostics:
        payload["diagnostics"] = {t: _curve_json(c) for t, c in diagnostics.items()}
    if train_seconds is not None:
        payload["train_seconds"] = round(float(train_seconds), 3)
    return atomic_write_json(record_path(job.run_dir), payload)
