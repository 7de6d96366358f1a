"""The comparison report: Markdown, JSON and CSV files and the figures, from score records.

Kept separate from ``compare`` (which trains) so reports can be rebuilt or unit-tested from saved or
synthetic results without training. Aggregation lives in ``summary``, log reading in ``curves``, figures
in ``plots``; this module formats and writes.
"""

from __future__ import annotations

import csv
import io
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

from rims_rl.app.atomic import atomic_write_bytes
from rims_rl.app.curves import CURVE_TAG, Curve, read_learning_curve
from rims_rl.app.plots import plot_learning_curves, plot_ood_bars
from rims_rl.app.stats import CI
from rims_rl.app.summary import (
    OOD_LABEL,
    Record,
    ScoreRecord,
    agents_in,
    env_label,
    envs_in,
    improvement_rows,
    score_record,
    summary_rows,
)
from rims_rl.envs.registry import family_of_id

CURVES_CAPTION = "Learning curves (IQM over seeds, 95% CI band)"
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
    notes: Sequence[str] = (),
    throughput: Mapping[str, Sequence[float]] | None = None,
) -> str:
    """The report text: command line first (so the numbers can be reproduced), then tables and figures.

    A column of the IQM on the env family's normalised scale (POPGym: [0, 1]) is added when a row has
    one; ``notes`` go under the figures (e.g. why a figure is missing); ``throughput`` is each agent's
    training steps per second, one value per run trained from scratch."""
    normalised = any(NORMALISED in row for row in rows)
    lines = [f"# {title}", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    if meta:
        lines += ["Settings: " + ", ".join(f"{k}={v}" for k, v in meta.items()), ""]
    lines += [
        "Scores are final-policy evaluation returns, one per run (mean over episodes); IQM, mean and",
        "median are over runs (seeds) with 95% stratified bootstrap CIs (rliable, Agarwal et al. 2021);",
        "success rate is the mean over runs of each run's fraction of successful episodes.",
        f"{OOD_LABEL}: each run's mean over the OOD variants, one score per run; the",
        "variants share their runs, so whole runs are resampled (as on the leaderboard).",
        "",
        "## Final evaluation",
        "",
    ]
    if normalised:
        lines += [
            "Normalised IQM: the IQM (and its CI) on the env family's fixed [0, 1] scale, beside the raw",
            "return (POPGym: (return + 1) / 2; n/a where the family has no such scale).",
            "",
        ]
    header = "| Env | Agent | Runs | IQM [95% CI] | Mean [95% CI] | Median | Success rate [95% CI] |"
    rule = "|---|---|---:|---|---|---:|---|"
    if normalised:
        header, rule = header + " Normalised IQM [95% CI] |", rule + "---|"
    lines += [header, rule]
    if not rows:
        lines.append("| (no finished runs) | | | | | | |" + (" |" if normalised else ""))
    for row in rows:
        env = _md_escape(env_label(row))
        median = "n/a" if math.isnan(float(row["median"])) else f"{float(row['median']):.{digits}f}"
        line = (
            f"| {env} | {_md_escape(row['agent'])} | {row['n_runs']} | {_ci(row, 'iqm', digits)} | "
            f"{_ci(row, 'mean', digits)} | {median} | {_ci(row, 'success', digits)} |"
        )
        if normalised:
            line += f" {_ci(row, NORMALISED, digits) if NORMALISED in row else 'n/a'} |"
        lines.append(line)
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
    if throughput is not None:
        lines += throughput_section(throughput)
    if figures or notes:
        lines += ["## Figures", ""]
        for caption, name in (figures or {}).items():
            lines += [f"![{caption}]({name})", ""]
        lines += [f"{note}\n" for note in notes]
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


NORMALISED = "iqm_normalised"  # summary-row key of the IQM on the family's normalised scale


def normalised_score_of(env_id: str, value: float) -> float | None:
    """``value`` on the env family's normalised scale, or None where the family has none (or the id is
    not one we build: a record from elsewhere keeps its raw score only)."""
    try:
        scale = family_of_id(env_id).normalised_score
    except ValueError:
        return None
    return None if scale is None else float(scale(value))


def with_normalised(rows: Sequence[Record], records: Sequence[Mapping[str, Any]]) -> list[Record]:
    """Summary rows with the IQM and its CI on the env family's normalised scale (``normalised_score_of``:
    POPGym's ``(return + 1) / 2``) where the env has one. A pooled row gets it when every env it pools
    maps to the same scale. The map is increasing and affine, so it carries the IQM and its CI over."""
    out: list[Record] = []
    for row in rows:
        row = dict(row)
        if row.get("env_id"):
            ids = {str(row["env_id"])}
        else:  # pooled over the variants: the env ids of this agent's OOD records
            ids = {str(r["env_id"]) for r in records if r["agent"] == row["agent"] and not r.get("is_train")}
        for key in ("iqm", "iqm_lo", "iqm_hi"):
            value = float(row[key])
            scores = {normalised_score_of(env_id, value) for env_id in ids}
            if not ids or None in scores or len(scores) != 1 or math.isnan(value):
                break
            row[key.replace("iqm", NORMALISED)] = scores.pop()
        else:
            out.append(row)
            continue
        for key in (NORMALISED, f"{NORMALISED}_lo", f"{NORMALISED}_hi"):
            row.pop(key, None)
        out.append(row)
    return out


def throughput_section(throughput: Mapping[str, Sequence[float]]) -> list[str]:
    """The report's training throughput: median steps/s per agent over its runs with a known time."""
    lines = [
        "## Training throughput",
        "",
        "Environment steps per second of training wall time (the whole training call, building the envs",
        "and the model included), median over the runs trained from scratch in one go, whose record keeps",
        "that time; resumed runs and runs from older records are left out.",
        "",
        "| Agent | Steps/s (median) | Runs |",
        "|---|---:|---:|",
    ]
    for agent, rates in throughput.items():
        median = f"{float(np.median(rates)):,.0f}" if len(rates) else "n/a"
        lines.append(f"| {_md_escape(agent)} | {median} | {len(rates)} |")
    return [*lines, ""]


def curve_notes(curves: Mapping[str, Sequence[Curve]], agents: Sequence[str], drawn: bool) -> list[str]:
    """Why the learning-curve figure is missing or lacks an agent, and when it shows single points."""
    reason = (
        "none of {whose} runs logged a training episode return (SB3's rollout/ep_rew_mean is logged per "
        "rollout once an episode has ended), e.g. the budget ended before any training episode did"
    )
    missing = [a for a in agents if not any(c is not None and len(c[0]) for c in curves.get(a, ()))]
    if not drawn:
        return [f"No learning-curve figure: {reason.format(whose='the')}."]
    notes = [f"No learning curve for {a}: {reason.format(whose='its')}." for a in missing]
    single = [
        a
        for a in agents
        if a not in missing and all(len(c[0]) <= 1 for c in curves.get(a, ()) if c is not None)
    ]
    if single:
        notes.append(
            f"One logged point per run for {', '.join(single)} (a single rollout with a finished episode): "
            "drawn as markers."
        )
    return notes


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
    throughput: Mapping[str, Sequence[float]] | None = None,
    kept_figures: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Write ``report.md``, ``results.json``, ``results.csv`` and the PNGs into ``out_dir``; return paths.

    Every file is replaced atomically: a stop mid-write keeps the previous good file, and a symlink in
    its place is replaced, never followed.

    Each pair (x, y) of ``pairs`` adds P(x > y) per env; by default every other agent against
    ``lstm_ppo`` when it takes part (the baseline the project's question is about), else the first two
    agents. ``curves`` (each agent's learning curves) draws the learning-curve figure, and the report says
    why an agent (or the figure) has none. ``throughput`` (each agent's training steps/s, one value per run
    trained from scratch) adds the throughput table. ``kept_figures`` (caption -> file name) lists figures
    already in ``out_dir`` that this call cannot draw again (a rebuild whose runs' logs are gone).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = [dict(r) for r in records]
    machine = dict(machine) if machine is not None else machine_info()
    rows = with_normalised(summary_rows(records, reps=reps, seed=seed), records)
    agents = agents_in(records)
    if pairs is None:
        pairs = default_pairs(agents)
    improvement = [row for x, y in pairs for row in improvement_rows(records, x, y, reps=reps, seed=seed)]

    paths: dict[str, Path] = {}
    figures: dict[str, str] = {k: v for k, v in (kept_figures or {}).items() if (out / v).is_file()}
    notes: list[str] = []
    if curves is not None and records:
        train = next((r for r in records if r.get("is_train")), None)
        curve_title = f"Training return on {train['env_id']}" if train and train.get("env_id") else None
        p = plot_learning_curves(
            curves, out / "learning_curves.png", title=curve_title or "Training return", seed=seed
        )
        if p is not None:
            paths["learning_curves"] = p
            figures[CURVES_CAPTION] = p.name
        notes = curve_notes(curves, agents, drawn=p is not None)
    p = plot_ood_bars(rows, out / "ood_bars.png")
    if p is not None:
        paths["ood_bars"] = p
        figures["Final return per env (IQM, 95% CI)"] = p.name

    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(CSV_FIELDS), extrasaction="ignore")
    writer.writeheader()
    for r in records:
        writer.writerow({k: r.get(k, "") for k in CSV_FIELDS})
    paths["results_csv"] = atomic_write_bytes(out / "results.csv", table.getvalue().encode())

    payload = {
        "command": command,
        "meta": meta or {},
        "machine": machine,
        "summary": rows,
        "probability_of_improvement": improvement,
        "failures": list(failures),
        "records": records,
        **({"throughput_steps_per_s": {a: list(v) for a, v in throughput.items()}} if throughput else {}),
    }
    paths["results_json"] = atomic_write_bytes(
        out / "results.json", (json.dumps(_jsonable(payload), indent=2) + "\n").encode()
    )

    text = markdown_report(
        rows,
        improvement,
        command,
        meta,
        machine,
        figures,
        failures=failures,
        title=title,
        notes=notes,
        throughput=throughput,
    )
    paths["report"] = atomic_write_bytes(out / "report.md", text.encode())
    return paths
