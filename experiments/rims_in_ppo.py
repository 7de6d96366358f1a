"""The tables of issue 41's write-up (docs/results/rims_in_ppo.md), from committed records only.

    python experiments/rims_in_ppo.py \\
        --tune docs/results/tune-repeat-previous-own \\
        --main docs/results/compare-repeat-previous-own-10seeds \\
        --ablation "all units active=docs/results/compare-repeat-previous-rims-all-active" \\
        --ablation "no communication=docs/results/compare-repeat-previous-rims-no-comm" \\
        --ablation "no input competition=docs/results/compare-repeat-previous-rims-no-competition"

Prints Markdown: each agent's chosen configuration with its trials (and whether the chosen learning rate
sits at the grid's edge, which would say the grid was too narrow); the 10-seed cells of the choices; the
ablations as P(variant > RIMs) and P(variant > LSTM) on the training env and out of distribution (each
run's mean over the variants), intervals resampling whole runs; and the training diagnostics the records
keep (policy KL per update, RIMs' unit-usage entropy), early and late in training.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rims_rl.app.records import RunRecord
from rims_rl.app.summary import OOD_LABEL, improvement_rows, summary_rows

LR = "ppo.learning_rate"


def load_runs(
    folder: Path, rename: Mapping[str, str] | None = None
) -> tuple[list[dict[str, Any]], dict[str, list[Mapping[str, Any]]]]:
    """The score records of every run record in ``folder/records`` (or ``folder`` itself), and per agent
    each run's diagnostics curves ({tag: (steps, values)}), read as ``compare`` reads records
    (``RunRecord``); with ``rename``, only the runs of the agents it names, renamed (an ablation's folder
    holds its variant's runs)."""
    records_dir = folder / "records" if (folder / "records").is_dir() else folder
    records: list[dict[str, Any]] = []
    diagnostics: dict[str, list[Mapping[str, Any]]] = {}
    for path in sorted(records_dir.glob("*.json")):
        run = RunRecord.from_dict(json.loads(path.read_text()), path)
        agent = str(run.job.get("agent"))
        if rename is not None and agent not in rename:
            continue
        agent = (rename or {}).get(agent, agent)
        records += [{**r, "agent": agent} for r in run.records]
        diagnostics.setdefault(agent, []).append(run.diagnostics)
    return records, diagnostics


def _fmt(row: Mapping[str, Any], key: str = "iqm") -> str:
    return f"{row[key]:.2f} [{row[key + '_lo']:.2f}, {row[key + '_hi']:.2f}]"


def _p(row: Mapping[str, Any]) -> str:
    text = f"{row['p']:.2f} [{row['p_lo']:.2f}, {row['p_hi']:.2f}]"
    return f"**{text}**" if row["p_lo"] > 0.5 or row["p_hi"] < 0.5 else text


def tuning_table(tune: Mapping[str, Any]) -> list[str]:
    """Each agent's choice, its score, its trial count, and whether the chosen learning rate is at an edge."""
    lrs = sorted(float(v) for v in tune["grid"].get(LR, []))
    lines = [
        "| agent | trials | chosen | score (IQM of 2 seeds) | learning rate at the grid's edge? |",
        "|---|---:|---|---:|---|",
    ]
    for agent, entry in tune["agents"].items():
        chosen = entry["chosen"]
        score = next(t["score"] for t in entry["tried"] if t["overrides"] == chosen)
        lr = chosen.get(LR)
        edge = "n/a" if lr is None or not lrs else ("yes" if float(lr) in (lrs[0], lrs[-1]) else "no")
        shown = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in chosen.items())
        lines.append(f"| {agent} | {len(entry['tried'])} | {shown} | {score:.3f} | {edge} |")
    return lines


def cells_table(records: Sequence[Mapping[str, Any]], agents: Sequence[str], reps: int) -> list[str]:
    rows = summary_rows(list(records), reps=reps)
    lines = ["| agent | runs | training env IQM | OOD IQM (run mean over variants) |", "|---|---:|---|---|"]
    for agent in agents:
        train = next((r for r in rows if r["agent"] == agent and r.get("is_train")), None)
        ood = next((r for r in rows if r["agent"] == agent and r["env"] == OOD_LABEL), None)
        if train is None or ood is None:
            continue
        lines.append(f"| {agent} | {train['n_runs']} | {_fmt(train)} | {_fmt(ood)} |")
    return lines


def pairs_table(
    records: Sequence[Mapping[str, Any]], pairs: Sequence[tuple[str, str]], reps: int
) -> list[str]:
    lines = ["| P(x > y) | training env | OOD |", "|---|---|---|"]
    for x, y in pairs:
        rows = improvement_rows(list(records), x, y, reps=reps)
        train = next((r for r in rows if r["env"] != OOD_LABEL and "train" in str(r.get("label", ""))), None)
        ood = next((r for r in rows if r["env"] == OOD_LABEL), None)
        if train is None or ood is None:
            continue
        lines.append(f"| P({x} > {y}) | {_p(train)} | {_p(ood)} |")
    return lines


def diagnostics_table(diagnostics: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """Per agent, over its runs: median KL per update in the first and last quarter of training, and
    RIMs' usage entropy at the end."""
    lines = [
        "| agent | runs with KL | KL per update, first quarter (median over runs) | last quarter | "
        "usage entropy at the end |",
        "|---|---:|---:|---:|---:|",
    ]
    for agent, runs in diagnostics.items():
        early, late, entropy = [], [], []
        for curves in runs:
            if "train/policy_kl" in curves:
                steps, kl = curves["train/policy_kl"]
                if len(kl) >= 4:
                    q = len(kl) // 4
                    early.append(float(np.median(kl[:q])))
                    late.append(float(np.median(kl[-q:])))
            if "rims/usage_entropy" in curves and len(curves["rims/usage_entropy"][1]):
                entropy.append(float(curves["rims/usage_entropy"][1][-1]))

        def med(values: list[float], digits: int = 4) -> str:
            return f"{np.median(values):.{digits}f}" if values else "-"

        lines.append(f"| {agent} | {len(early)} | {med(early)} | {med(late)} | {med(entropy, 2)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tune", type=Path, required=True, help="the own-grid tuning folder (tune.json)")
    p.add_argument(
        "--main", type=Path, required=True, help="the 10-seed compare of the chosen configurations"
    )
    p.add_argument("--ablation", action="append", default=[], metavar="NAME=FOLDER")
    p.add_argument("--reps", type=int, default=2000)
    args = p.parse_args(argv)

    tune = json.loads((args.tune / "tune.json").read_text())
    records, diagnostics = load_runs(args.main)
    agents = [a for a in ("lstm_ppo", "gru_ppo", "rims_ppo") if any(r["agent"] == a for r in records)]
    variants = []
    for item in args.ablation:
        name, _, folder = item.partition("=")
        label = f"rims_ppo ({name})"
        variants.append(label)
        ablation, curves = load_runs(Path(folder), {"rims_ppo": label})
        records += ablation
        diagnostics.update(curves)
    out = ["## Tuning: equal trials, each agent's own knobs", "", *tuning_table(tune), ""]
    out += [
        "## The chosen configurations and the ablations, 10 seeds each",
        "",
        *cells_table(records, [*agents, *variants], args.reps),
        "",
    ]
    pairs = [("rims_ppo", "lstm_ppo"), ("rims_ppo", "gru_ppo"), ("gru_ppo", "lstm_ppo")]
    pairs += [(v, y) for v in variants for y in ("rims_ppo", "lstm_ppo")]
    out += ["## Probability of improvement (whole runs resampled; bold: the interval excludes 0.5)", ""]
    out += [
        *pairs_table(
            records, [(x, y) for x, y in pairs if x in agents + variants and y in agents], args.reps
        ),
        "",
    ]
    out += ["## Training diagnostics", "", *diagnostics_table(diagnostics), ""]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
