"""Per-run score records and their aggregation: IQM, mean, median with stratified-bootstrap CIs per
agent and env, and probability of improvement between two agents.

A *record* (``ScoreRecord``) is one run evaluated on one env spec, as stored in ``compare_eval.json`` and
``results.json``. The run-level score is ``mean_return`` (rliable's convention: one score per run and
task), so the IQM and its CI are over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict

import numpy as np

from rims_rl.app.stats import probability_of_improvement_ci, stratified_bootstrap_ci


class ScoreRecord(TypedDict):
    """One run (agent, seed) evaluated on one env spec; the JSON record of compare and the report."""

    agent: str
    seed: int
    env: str
    env_id: str
    is_train: bool
    mean_return: float
    std_return: float
    success_rate: float | None
    n_episodes: int
    returns: list[float]
    mean_length: float
    timesteps: int
    run_dir: str


_RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "agent": (str,),
    "seed": (int,),
    "env": (str,),
    "env_id": (str,),
    "is_train": (bool,),
    "mean_return": (int, float),
    "std_return": (int, float),
    "success_rate": (int, float, type(None)),
    "n_episodes": (int,),
    "returns": (list,),
    "mean_length": (int, float),
    "timesteps": (int,),
    "run_dir": (str,),
}


def score_record(data: Any) -> ScoreRecord:
    """A record read back from JSON, checked: ``ValueError`` names the first missing or mistyped field."""
    if not isinstance(data, Mapping):
        raise ValueError(f"a score record must be an object, got {type(data).__name__}")
    for name, kinds in _RECORD_FIELDS.items():
        if name not in data:
            raise ValueError(f"score record lacks {name!r}")
        value = data[name]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ValueError(f"score record field {name!r} has the wrong type: {_short(value)}")
        if isinstance(value, float) and math.isinf(value):  # NaN is kept: no episode finished
            raise ValueError(f"score record field {name!r} is infinite")
    returns = data["returns"]
    if not all(isinstance(r, int | float) and not isinstance(r, bool) and math.isfinite(r) for r in returns):
        raise ValueError("score record field 'returns' must be a list of finite numbers")
    return ScoreRecord(**{k: data[k] for k in _RECORD_FIELDS})  # type: ignore[typeddict-item]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


Record = dict[str, Any]  # a row of the summary table: statistics with their CIs, by column name


def agents_in(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """Agents in first-seen order (the order given on the command line)."""
    return list(dict.fromkeys(str(r["agent"]) for r in records))


def envs_in(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """Env spec names in first-seen order, training env first (as ``Suite.specs()`` yields them)."""
    recs = list(records)
    names = list(dict.fromkeys(str(r["env"]) for r in recs))
    train = [n for n in names if any(r["env"] == n and r.get("is_train") for r in recs)]
    return train + [n for n in names if n not in train]


def _scores(
    records: Iterable[Mapping[str, Any]], agent: str, env: str, key: str = "mean_return"
) -> np.ndarray:
    vals = [r.get(key) for r in records if r["agent"] == agent and r["env"] == env]
    return np.array([np.nan if v is None else float(v) for v in vals], dtype=np.float64)


def _row(agent: str, env: str, env_id: str, is_train: bool, scores: Any, success: Any, **kw: Any) -> Record:
    reps, seed = kw["reps"], kw["seed"]
    row: Record = {"agent": agent, "env": env, "env_id": env_id, "is_train": is_train}
    flat = np.concatenate([np.ravel(np.asarray(v, float)) for v in scores.values()])
    row["n_runs"] = int(np.sum(~np.isnan(flat)))
    for stat in ("iqm", "mean", "median"):
        row.update(stratified_bootstrap_ci(scores, stat, reps=reps, seed=seed).as_dict(stat))
    row.update(stratified_bootstrap_ci(success, "mean", reps=reps, seed=seed).as_dict("success"))
    return row


#: The label of each agent's OOD row and of the OOD probability of improvement.
OOD_LABEL = "OOD (run mean over variants)"


def _ood_envs(records: Sequence[Mapping[str, Any]], envs: Sequence[str]) -> list[str]:
    return [e for e in envs if not any(r["env"] == e and r.get("is_train") for r in records)]


def run_ood_means(
    records: Iterable[Mapping[str, Any]], agent: str, ood: Sequence[str], key: str = "mean_return"
) -> np.ndarray:
    """Each run's mean over the OOD variants ``ood``, in seed order; runs lacking a variant are left out.

    The variants are scored by the same trained runs, so their scores are correlated: resampling them
    as independent tasks narrows the interval (duplicating a variant would narrow it further). One
    number per run, resampled whole, is what the leaderboard uses too.
    """
    by_seed: dict[int, dict[str, float]] = {}
    for r in records:
        if r["agent"] == agent and r["env"] in ood:
            value = r.get(key)
            by_seed.setdefault(int(r["seed"]), {})[str(r["env"])] = np.nan if value is None else float(value)
    means = [np.mean([v[e] for e in ood]) for _, v in sorted(by_seed.items()) if set(v) == set(ood)]
    return np.array(means, dtype=np.float64)


def summary_rows(
    records: Sequence[Mapping[str, Any]],
    reps: int = 2000,
    seed: int = 0,
    pooled_ood: bool = True,
) -> list[Record]:
    """One row per agent x env: IQM/mean/median of run returns and mean success rate, with 95% CIs.

    With ``pooled_ood`` and more than one variant, each agent also gets an ``OOD_LABEL`` row: the
    statistics of each run's mean over the variants (``run_ood_means``), whole runs resampled. Averaging
    raw returns is only meaningful when the variants share a return scale (MiniGrid's 0-1, POPGym's).
    """
    rows: list[Record] = []
    envs = envs_in(records)
    for env in envs:
        recs = [r for r in records if r["env"] == env]
        env_id = str(recs[0].get("env_id", ""))
        is_train = bool(recs[0].get("is_train", False))
        for agent in agents_in(records):
            if not any(r["agent"] == agent for r in recs):
                continue
            rows.append(
                _row(
                    agent,
                    env,
                    env_id,
                    is_train,
                    {env: _scores(records, agent, env)},
                    {env: _scores(records, agent, env, "success_rate")},
                    reps=reps,
                    seed=seed,
                )
            )
    ood = _ood_envs(records, envs)
    if pooled_ood and len(ood) > 1:
        for agent in agents_in(records):
            scores = run_ood_means(records, agent, ood)
            if scores.size == 0:
                continue
            success = run_ood_means(records, agent, ood, "success_rate")
            rows.append(
                _row(
                    agent,
                    OOD_LABEL,
                    "",
                    False,
                    {OOD_LABEL: scores},
                    {OOD_LABEL: success},
                    reps=reps,
                    seed=seed,
                )
            )
    return rows


def improvement_rows(
    records: Sequence[Mapping[str, Any]], agent_x: str, agent_y: str, reps: int = 2000, seed: int = 0
) -> list[Record]:
    """P(a run of ``agent_x`` scores higher than one of ``agent_y``) per env, and on each run's OOD mean."""
    rows: list[Record] = []
    envs = envs_in(records)
    for env in envs:
        x, y = _scores(records, agent_x, env), _scores(records, agent_y, env)
        if x.size and y.size:
            ci = probability_of_improvement_ci(x, y, reps=reps, seed=seed)
            first = next(r for r in records if r["env"] == env)
            label = env_label({"env": env, "env_id": first.get("env_id"), "is_train": first.get("is_train")})
            rows.append({"env": env, "label": label, "x": agent_x, "y": agent_y, **ci.as_dict("p")})
    ood = _ood_envs(records, envs)
    if len(ood) > 1:
        x, y = run_ood_means(records, agent_x, ood), run_ood_means(records, agent_y, ood)
        ci = probability_of_improvement_ci(x, y, reps=reps, seed=seed)
        if not math.isnan(ci.point):
            rows.append({"env": OOD_LABEL, "x": agent_x, "y": agent_y, **ci.as_dict("p")})
    return rows


def env_label(row: Mapping[str, Any], with_id: bool = True) -> str:
    """``train (MiniGrid-DoorKey-5x5-v0)`` for the training env, the variant name otherwise."""
    name = str(row["env"])
    if not row.get("is_train"):
        return name
    if name == "train":
        return f"train ({row['env_id']})" if with_id and row.get("env_id") else "train"
    return f"{name} (train)"
