"""Summarise the learnability runs (run directories under runs/learn/) as a Markdown table and a JSON file.

For each run: its command, steps, seed, overrides, the final model's mean return on the training env and on
every suite variant (20 episodes, deterministic, from ``train.py evaluate``'s eval-<suite>.json), POPGym's
normalised score where it applies, and the training throughput (steps / wall time, from SB3's progress log).
Usage: python docs/results/learnability/summarise.py [runs/learn] > docs/results/learnability/runs.md
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

OUT_JSON = Path(__file__).with_name("runs.json")


def summarise(run: Path) -> dict[str, Any] | None:
    """One run's row, or None when it has no config yet."""
    config_path = run / "config.json"
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text())
    row: dict[str, Any] = {
        "run": run.name,
        "agent": config["model"]["agent"],
        "suite": config.get("suite"),
        "env_id": config["env"]["env_id"],
        "timesteps": config["model"]["n_timesteps"],
        "seed": config["seed"],
        "overrides": config.get("overrides") or {},
        "command": " ".join(config.get("command") or []),
        "finished": (run / "model.zip").is_file(),
    }
    # progress.csv, then progress-resumed-<step>.csv for each resume: the latest row of the latest file.
    logs = sorted((run / "logs").glob("progress*.csv"), key=lambda p: p.stat().st_mtime)
    rows = list(csv.DictReader(logs[-1].open())) if logs else []
    history = [r for log in logs for r in csv.DictReader(log.open()) if r.get("rollout/ep_rew_mean")]
    if history:  # the training return (sampled actions, last 100 episodes) at about every 10% of the budget
        marks = sorted({min(len(history) - 1, round(i * (len(history) - 1) / 10)) for i in range(1, 11)})
        row["curve"] = [
            (int(float(h["time/total_timesteps"])), round(float(h["rollout/ep_rew_mean"]), 2))
            for h in (history[i] for i in marks)
        ]
    if rows:
        last = rows[-1]
        row["steps_done"] = int(float(last["time/total_timesteps"]))
        row["steps_per_s"] = round(float(last["time/fps"]))  # SB3: steps / wall time of this (resumed) run
        row["train_ep_return_last"] = round(float(last.get("rollout/ep_rew_mean") or "nan"), 3)
    # The suite's evaluation, else the training env's.
    found = sorted(run.glob("eval-*.json")) or sorted(run.glob("eval.json"))
    if found:
        data = json.loads(found[-1].read_text())
        results = data["results"] if isinstance(data, dict) and "results" in data else data
        row["eval"] = {
            r["env"]: {
                "mean_return": r["mean_return"],
                "normalised": r.get("normalised_score"),
                "success": r.get("success_rate"),
                "episodes": r["episodes"],
            }
            for r in results
        }
    return row


def fmt(score: dict[str, Any] | None) -> str:
    """``return (normalised)`` or ``return (success %)``."""
    if score is None:
        return "-"
    text = f"{score['mean_return']:.2f}"
    if score.get("normalised") is not None:
        text += f" ({score['normalised']:.2f})"
    elif score.get("success") is not None:
        text += f" ({100 * score['success']:.0f}%)"
    return text


def main(root: str = "runs/learn") -> None:
    rows = [r for r in (summarise(p) for p in sorted(Path(root).iterdir()) if p.is_dir()) if r]
    OUT_JSON.write_text(json.dumps(rows, indent=1) + "\n")
    print(
        "| run | agent | steps | seed | overrides | steps/s | train env | variants | "
        "training return by step |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        evals = r.get("eval", {})
        variants = ", ".join(f"{k}: {fmt(v)}" for k, v in evals.items() if k != "train")
        overrides = " ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "-"
        train = fmt(evals.get("train")) if evals else f"(training log {r.get('train_ep_return_last', '-')})"
        print(
            f"| {r['run']} | {r['agent']} | {r.get('steps_done', 0)}/{r['timesteps']} | {r['seed']} | "
            f"{overrides} | {r.get('steps_per_s', '-')} | {train} | {variants or '-'} | "
            + ", ".join(f"{s // 1000}k: {v}" for s, v in r.get("curve", []))
            + " |"
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
