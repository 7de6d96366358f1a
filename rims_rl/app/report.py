"""Turn per-run evaluation records into a comparison report: Markdown table, JSON/CSV, PNG figures.

Kept separate from ``compare`` (which trains) so reports can be rebuilt or unit-tested from saved or
synthetic results without training. A *record* (``ScoreRecord``) is one run evaluated on one env
spec, as stored in ``compare_eval.json`` and ``results.json``.

The run-level score is ``mean_return`` (rliable's convention: one score per run and task), so the
IQM and its stratified bootstrap CI are over seeds.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from rims_rl.app.stats import (
    CI,
    probability_of_improvement_ci,
    stratified_bootstrap_ci,
)


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
        if not isinstance(data[name], kinds):
            raise ValueError(f"score record field {name!r} has the wrong type: {data[name]!r}")
    return ScoreRecord(**{k: data[k] for k in _RECORD_FIELDS})  # type: ignore[typeddict-item]


Record = dict[str, Any]  # a row of the summary table: statistics with their CIs, by column name
Curve = tuple[np.ndarray, np.ndarray]

CURVE_TAG = "rollout/ep_rew_mean"
CSV_FIELDS: tuple[str, ...] = (
    "agent",
    "seed",
    "env",
    "env_id",
    "is_train",
    "mean_return",
    "std_return",
    "success_rate",
    "n_episodes",
    "timesteps",
    "run_dir",
)

__all__ = [
    "CSV_FIELDS",
    "CURVE_TAG",
    "agents_in",
    "envs_in",
    "improvement_rows",
    "machine_info",
    "markdown_report",
    "plot_learning_curves",
    "plot_ood_bars",
    "read_learning_curve",
    "summary_rows",
    "ScoreRecord",
    "write_report",
]


# --------------------------------------------------------------------------------------------- tables


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


def summary_rows(
    records: Sequence[Mapping[str, Any]],
    reps: int = 2000,
    seed: int = 0,
    pooled_ood: bool = True,
) -> list[Record]:
    """One row per agent x env: IQM/mean/median of run returns and mean success rate, with 95% CIs.

    With ``pooled_ood`` each agent also gets an ``"OOD (pooled)"`` row aggregating all variants, the
    runs stratified by variant (rliable's aggregate over tasks); it pools raw returns, so it is only
    meaningful when variants share a return scale (true for MiniGrid's 0-1 returns).
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
    ood = [e for e in envs if not any(r["env"] == e and r.get("is_train") for r in records)]
    if pooled_ood and len(ood) > 1:
        for agent in agents_in(records):
            scores = {e: _scores(records, agent, e) for e in ood}
            if sum(v.size for v in scores.values()) == 0:
                continue
            success = {e: _scores(records, agent, e, "success_rate") for e in ood}
            rows.append(_row(agent, "OOD (pooled)", "", False, scores, success, reps=reps, seed=seed))
    return rows


def improvement_rows(
    records: Sequence[Mapping[str, Any]], agent_x: str, agent_y: str, reps: int = 2000, seed: int = 0
) -> list[Record]:
    """P(a run of ``agent_x`` scores higher than one of ``agent_y``) per env, plus over all OOD variants."""
    rows: list[Record] = []
    envs = envs_in(records)
    for env in envs:
        x, y = _scores(records, agent_x, env), _scores(records, agent_y, env)
        if x.size and y.size:
            ci = probability_of_improvement_ci(x, y, reps=reps, seed=seed)
            first = next(r for r in records if r["env"] == env)
            label = _env_label({"env": env, "env_id": first.get("env_id"), "is_train": first.get("is_train")})
            rows.append({"env": env, "label": label, "x": agent_x, "y": agent_y, **ci.as_dict("p")})
    ood = [e for e in envs if not any(r["env"] == e and r.get("is_train") for r in records)]
    if len(ood) > 1:
        xs = {e: _scores(records, agent_x, e) for e in ood}
        ys = {e: _scores(records, agent_y, e) for e in ood}
        ci = probability_of_improvement_ci(xs, ys, reps=reps, seed=seed)
        if not math.isnan(ci.point):
            rows.append({"env": "OOD (mean over variants)", "x": agent_x, "y": agent_y, **ci.as_dict("p")})
    return rows


def _env_label(row: Mapping[str, Any], with_id: bool = True) -> str:
    """``train (MiniGrid-DoorKey-5x5-v0)`` for the training env, the variant name otherwise."""
    name = str(row["env"])
    if not row.get("is_train"):
        return name
    if name == "train":
        return f"train ({row['env_id']})" if with_id and row.get("env_id") else "train"
    return f"{name} (train)"


def _ci(row: Mapping[str, Any], key: str, digits: int = 2) -> str:
    return CI(float(row[key]), float(row[f"{key}_lo"]), float(row[f"{key}_hi"])).fmt(digits)


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def markdown_report(
    rows: Sequence[Mapping[str, Any]],
    improvement: Sequence[Mapping[str, Any]] = (),
    command: str | None = None,
    meta: Mapping[str, Any] | None = None,
    machine: Mapping[str, Any] | None = None,
    figures: Mapping[str, str] | None = None,
    failures: Sequence[Mapping[str, Any]] = (),
    title: str = "Agent comparison",
    digits: int = 2,
) -> str:
    """The report text: command line first (so the numbers can be reproduced), then tables and figures."""
    lines = [f"# {title}", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    if meta:
        lines += ["Settings: " + ", ".join(f"{k}={v}" for k, v in meta.items()), ""]
    lines += [
        "Scores are final-policy evaluation returns, one per run (mean over episodes); IQM, mean and",
        "median are over runs (seeds) with 95% stratified bootstrap CIs (rliable, Agarwal et al. 2021);",
        "success rate is the mean over runs of each run's fraction of successful episodes.",
        "",
        "## Final evaluation",
        "",
        "| Env | Agent | Runs | IQM [95% CI] | Mean [95% CI] | Median | Success rate [95% CI] |",
        "|---|---|---:|---|---|---:|---|",
    ]
    if not rows:
        lines.append("| (no finished runs) | | | | | | |")
    for row in rows:
        env = _md_escape(_env_label(row))
        median = "n/a" if math.isnan(float(row["median"])) else f"{float(row['median']):.{digits}f}"
        lines.append(
            f"| {env} | {_md_escape(row['agent'])} | {row['n_runs']} | {_ci(row, 'iqm', digits)} | "
            f"{_ci(row, 'mean', digits)} | {median} | {_ci(row, 'success', digits)} |"
        )
    lines.append("")
    if improvement:
        x, y = improvement[0]["x"], improvement[0]["y"]
        lines += [
            f"## Probability of improvement P({x} > {y})",
            "",
            f"Chance that a random run of {x} beats a random run of {y} (ties count half; 0.5 = no",
            "difference), with a 95% bootstrap CI over runs.",
            "",
            "| Env | P [95% CI] |",
            "|---|---|",
        ]
        lines += [f"| {_md_escape(r.get('label', r['env']))} | {_ci(r, 'p', digits)} |" for r in improvement]
        lines.append("")
    if failures:
        lines += ["## Failed runs", ""]
        lines += [f"- {f.get('agent')} seed {f.get('seed')}: {f.get('error')}" for f in failures]
        lines.append("")
    if figures:
        lines += ["## Figures", ""]
        for caption, name in figures.items():
            lines += [f"![{caption}]({name})", ""]
    if machine:
        lines += ["## Machine", ""]
        lines += [f"- {k}: {v}" for k, v in machine.items()]
        lines.append("")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- curves / plots


def read_learning_curve(run_dir: str | Path, tag: str = CURVE_TAG) -> Curve | None:
    """(timesteps, values) of ``tag`` from a run: SB3's ``progress*.csv`` if present, else TensorBoard events.

    CSV is preferred because it needs no TensorBoard parsing. Searches ``run_dir`` recursively; returns
    None when the run logged no such scalar (e.g. no episode finished within a tiny budget).
    """
    run_dir = Path(run_dir)
    # train_run writes logs/progress.csv, plus logs/progress-resumed-<step>.csv per resume: join them.
    parts = [c for p in sorted(run_dir.rglob("progress*.csv")) if (c := _curve_from_csv(p, tag)) is not None]
    if parts:
        steps = np.concatenate([c[0] for c in parts])
        vals = np.concatenate([c[1] for c in parts])
        steps, first = np.unique(steps, return_index=True)  # sorted; a step logged twice counts once
        return steps, vals[first]
    event_dirs = sorted({p.parent for p in run_dir.rglob("events.out.tfevents.*")})
    for d in event_dirs:
        curve = _curve_from_events(d, tag)
        if curve is not None:
            return curve
    return None


def _curve_from_csv(path: Path, tag: str) -> Curve | None:
    steps, vals = [], []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            v, s = row.get(tag, ""), row.get("time/total_timesteps", "")
            if v not in ("", None) and s not in ("", None):
                steps.append(float(s))
                vals.append(float(v))
    return (np.array(steps), np.array(vals)) if steps else None


def _curve_from_events(path: Path, tag: str) -> Curve | None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return None
    events = acc.Scalars(tag)
    if not events:
        return None
    order = np.argsort([e.step for e in events], kind="stable")
    steps = np.array([events[i].step for i in order], dtype=np.float64)
    vals = np.array([events[i].value for i in order], dtype=np.float64)
    return steps, vals


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve_band(
    curves: Sequence[Curve], n_points: int = 100, reps: int = 500, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """IQM across runs on a shared timestep grid with a 95% bootstrap band (runs resampled).

    Runs are linearly interpolated onto the grid, which ends where the shortest run ends so every
    point averages the same runs.
    """
    curves = [c for c in curves if c is not None and len(c[0])]
    if not curves:
        empty = np.zeros(0)
        return empty, empty, empty, empty
    start = max(float(c[0][0]) for c in curves)
    end = min(float(c[0][-1]) for c in curves)
    grid = np.linspace(start, end, n_points) if end > start else np.array([end])
    ys = np.stack([np.interp(grid, c[0], c[1]) for c in curves], axis=0)  # (runs, points)
    point, low, high = np.empty(grid.size), np.empty(grid.size), np.empty(grid.size)
    for j in range(grid.size):
        ci = stratified_bootstrap_ci(ys[:, j], "iqm", reps=reps, seed=seed)
        point[j], low[j], high[j] = ci.point, ci.low, ci.high
    return grid, point, low, high


def plot_learning_curves(
    curves: Mapping[str, Sequence[Curve]],
    path: str | Path,
    title: str = "Training return",
    ylabel: str = "episode return (rollout/ep_rew_mean)",
    seed: int = 0,
) -> Path | None:
    """One line per agent (IQM over seeds) with a shaded 95% CI band; None when no agent has a curve."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    drawn = False
    for i, (agent, runs) in enumerate(curves.items()):
        grid, point, low, high = curve_band(runs, seed=seed)
        if not grid.size:
            continue
        color = f"C{i}"
        n = sum(1 for c in runs if c is not None and len(c[0]))
        ax.plot(grid, point, color=color, label=f"{agent} (n={n})", marker="o" if grid.size == 1 else None)
        ax.fill_between(grid, low, high, color=color, alpha=0.25, linewidth=0)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("timesteps")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_ood_bars(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    stat: str = "iqm",
    title: str = "Final evaluation return per env (IQM, 95% CI)",
) -> Path | None:
    """Grouped bars: one group per env (train env first), agents side by side, CI error bars."""
    rows = [r for r in rows if not math.isnan(float(r[stat]))]
    if not rows:
        return None
    plt = _plt()
    envs = list(dict.fromkeys(_env_label(r, with_id=False) for r in rows))
    agents = agents_in(rows)
    width = 0.8 / max(len(agents), 1)
    fig, ax = plt.subplots(figsize=(max(6.4, 1.2 * len(envs) * max(len(agents), 1) * 0.6 + 2), 4.0))
    x = np.arange(len(envs))
    for i, agent in enumerate(agents):
        pts, lo, hi = np.full(len(envs), np.nan), np.zeros(len(envs)), np.zeros(len(envs))
        for r in rows:
            if r["agent"] != agent:
                continue
            j = envs.index(_env_label(r, with_id=False))
            pts[j] = float(r[stat])
            lo[j] = max(float(r[stat]) - float(r[f"{stat}_lo"]), 0.0)
            hi[j] = max(float(r[f"{stat}_hi"]) - float(r[stat]), 0.0)
        offset = (i - (len(agents) - 1) / 2) * width
        ax.bar(x + offset, pts, width, yerr=np.stack([lo, hi]), capsize=3, label=agent, color=f"C{i}")
    ax.set_xticks(x)
    ax.set_xticklabels(envs, rotation=30 if len(envs) > 4 else 0, ha="right" if len(envs) > 4 else "center")
    ax.set_ylabel(f"return ({stat.upper() if stat == 'iqm' else stat})")
    ax.set_title(title)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -------------------------------------------------------------------------------------------- writing


def machine_info() -> dict[str, str]:
    """Where the numbers came from: OS, CPU count, Python/library versions, GPU, git commit."""
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": str(os.cpu_count()),
        "python": sys.version.split()[0],
    }
    for pkg in ("torch", "numpy", "stable-baselines3", "sb3-contrib", "gymnasium", "minigrid", "ale-py"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    torch = sys.modules.get("torch")  # only if already loaded: importing torch just for this is slow
    if torch is not None:
        try:
            info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        except Exception:  # noqa: BLE001 - machine info must never break a report
            info["gpu"] = "unknown"
    try:
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip() + (" (dirty)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_report(
    out_dir: str | Path,
    records: Sequence[Mapping[str, Any]],
    curves: Mapping[str, Sequence[Curve]] | None = None,
    command: str | None = None,
    meta: Mapping[str, Any] | None = None,
    failures: Sequence[Mapping[str, Any]] = (),
    reps: int = 2000,
    seed: int = 0,
    title: str = "Agent comparison",
    machine: Mapping[str, Any] | None = None,
    baseline_pair: tuple[str, str] | None = None,
) -> dict[str, Path]:
    """Write ``report.md``, ``results.json``, ``results.csv`` and the PNGs into ``out_dir``; return paths.

    ``baseline_pair`` (x, y) adds P(x > y) per env; by default the first two agents when there are two
    or more (``rims_ppo`` vs ``lstm_ppo`` with the default agent order).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = [dict(r) for r in records]
    machine = dict(machine) if machine is not None else machine_info()
    rows = summary_rows(records, reps=reps, seed=seed)
    agents = agents_in(records)
    if baseline_pair is None and len(agents) >= 2:
        baseline_pair = (agents[0], agents[1])
    improvement = improvement_rows(records, *baseline_pair, reps=reps, seed=seed) if baseline_pair else []

    paths: dict[str, Path] = {}
    figures: dict[str, str] = {}
    if curves:
        train = next((r for r in records if r.get("is_train")), None)
        curve_title = f"Training return on {train['env_id']}" if train and train.get("env_id") else None
        p = plot_learning_curves(
            curves, out / "learning_curves.png", title=curve_title or "Training return", seed=seed
        )
        if p is not None:
            paths["learning_curves"] = p
            figures["Learning curves (IQM over seeds, 95% CI band)"] = p.name
    p = plot_ood_bars(rows, out / "ood_bars.png")
    if p is not None:
        paths["ood_bars"] = p
        figures["Final return per env (IQM, 95% CI)"] = p.name

    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_FIELDS), extrasaction="ignore")
        writer.writeheader()
        for r in records:
            writer.writerow({k: r.get(k, "") for k in CSV_FIELDS})
    paths["results_csv"] = out / "results.csv"

    payload = {
        "command": command,
        "meta": meta or {},
        "machine": machine,
        "summary": rows,
        "probability_of_improvement": improvement,
        "failures": list(failures),
        "records": records,
    }
    (out / "results.json").write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
    paths["results_json"] = out / "results.json"

    text = markdown_report(rows, improvement, command, meta, machine, figures, failures=failures, title=title)
    (out / "report.md").write_text(text)
    paths["report"] = out / "report.md"
    return paths
