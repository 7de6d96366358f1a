"""The comparison report: Markdown, JSON and CSV files and the figures, from score records.

Kept separate from ``compare`` (which trains) so reports can be rebuilt or unit-tested from saved or
synthetic results without training. Aggregation lives in ``summary``, log reading in ``curves``, figures
in ``plots``; this module formats and writes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from rims_rl.app.curves import CURVE_TAG, Curve, read_learning_curve
from rims_rl.app.plots import plot_learning_curves, plot_ood_bars
from rims_rl.app.stats import CI
from rims_rl.app.summary import (
    ScoreRecord,
    agents_in,
    env_label,
    envs_in,
    improvement_rows,
    score_record,
    summary_rows,
)

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
    "ScoreRecord",
    "agents_in",
    "envs_in",
    "improvement_rows",
    "machine_info",
    "markdown_report",
    "plot_learning_curves",
    "plot_ood_bars",
    "read_learning_curve",
    "score_record",
    "summary_rows",
    "write_report",
]


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
        env = _md_escape(env_label(row))
        median = "n/a" if math.isnan(float(row["median"])) else f"{float(row['median']):.{digits}f}"
        lines.append(
            f"| {env} | {_md_escape(row['agent'])} | {row['n_runs']} | {_ci(row, 'iqm', digits)} | "
            f"{_ci(row, 'mean', digits)} | {median} | {_ci(row, 'success', digits)} |"
        )
    lines.append("")
    for x, y in dict.fromkeys((r["x"], r["y"]) for r in improvement):  # one section per pair, in order
        lines += [
            f"## Probability of improvement P({x} > {y})",
            "",
            f"Chance that a random run of {x} beats a random run of {y} (ties count half; 0.5 = no",
            "difference), with a 95% bootstrap CI over runs.",
            "",
            "| Env | P [95% CI] |",
            "|---|---|",
        ]
        lines += [
            f"| {_md_escape(r.get('label', r['env']))} | {_ci(r, 'p', digits)} |"
            for r in improvement
            if (r["x"], r["y"]) == (x, y)
        ]
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


BASELINE_AGENT = "lstm_ppo"


def default_pairs(agents: Sequence[str]) -> list[tuple[str, str]]:
    """(agent, lstm_ppo) for every other agent when lstm_ppo takes part, else the first two agents."""
    if len(agents) < 2:
        return []
    if BASELINE_AGENT in agents:
        return [(a, BASELINE_AGENT) for a in agents if a != BASELINE_AGENT]
    return [(agents[0], agents[1])]


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
    pairs: Sequence[tuple[str, str]] | None = None,
) -> dict[str, Path]:
    """Write ``report.md``, ``results.json``, ``results.csv`` and the PNGs into ``out_dir``; return paths.

    Each pair (x, y) of ``pairs`` adds P(x > y) per env; by default every other agent against
    ``lstm_ppo`` when it takes part (the baseline the project's question is about), else the first two
    agents.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = [dict(r) for r in records]
    machine = dict(machine) if machine is not None else machine_info()
    rows = summary_rows(records, reps=reps, seed=seed)
    agents = agents_in(records)
    if pairs is None:
        pairs = default_pairs(agents)
    improvement = [row for x, y in pairs for row in improvement_rows(records, x, y, reps=reps, seed=seed)]

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
