"""Copy a finished compare run into ``pretrained/<alias>/`` with a model card (card.json + MODEL_CARD.md).

    python experiments/package_pretrained.py runs/compare-doorkey rims_ppo 1 doorkey-5x5-rims_ppo
    python experiments/package_pretrained.py runs/compare-doorkey rims_ppo median doorkey-5x5-rims_ppo

``median`` picks the seed whose training-env return is the median of the agent's seeds (the lower
median for an even count): a typical run, not the luckiest one.

The card's numbers are the compare's own evaluation of that run (``results.csv``; greedy or sampled
actions as the compare was run), plus a sampled one when ``<compare>/stochastic/<agent>-seed<k>/``
``eval*.json`` exists (train.py evaluate --stochastic --out ...). The alias then works everywhere
a checkpoint is taken:
``python train.py evaluate --checkpoint <alias> --suite <suite>``.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def median_selection(compare_dir: Path, agent: str) -> tuple[int, str]:
    """The (lower) median seed of ``agent`` by final training-env return, and how it was chosen, for the
    card: a reader should see it is not the best run."""
    returns = sorted(
        (float(r["mean_return"]), int(r["seed"]))
        for r in csv.DictReader((compare_dir / "results.csv").open())
        if r["agent"] == agent and r["is_train"] == "True"
    )
    if not returns:
        raise SystemExit(f"no training-env results of {agent} in {compare_dir / 'results.csv'}")
    listed = ", ".join(f"seed {seed}: {ret:.2f}" for ret, seed in returns)
    how = f"the median of {len(returns)} seeds by training-env return, not the best ({listed})"
    return returns[(len(returns) - 1) // 2][1], how


def package(compare_dir: Path, agent: str, seed: int, alias: str, selection: str = "") -> Path:
    """Write ``pretrained/<alias>`` and return it."""
    from rims_rl.app.checkpoint import read_meta

    run_dir = compare_dir / "runs" / f"{agent}-seed{seed}"
    meta = read_meta(run_dir / "model.zip")
    config = meta.config.to_dict()
    rows = [
        r
        for r in csv.DictReader((compare_dir / "results.csv").open())
        if r["agent"] == agent and int(r["seed"]) == seed
    ]
    mode = (
        "deterministic"
        if "deterministic_eval=True" in (compare_dir / "report.md").read_text()
        else "stochastic"
    )
    evaluation = {
        r["env_id"]: {
            mode: {
                "episodes": int(r["n_episodes"]),
                "mean_return": round(float(r["mean_return"]), 4),
                "success_rate": round(float(r["success_rate"]), 4),
            }
        }
        for r in rows
    }
    for stochastic in sorted((compare_dir / "stochastic" / f"{agent}-seed{seed}").glob("eval*.json")):
        for r in json.loads(stochastic.read_text()):
            evaluation.setdefault(r["env_id"], {})["stochastic"] = {
                "episodes": r["episodes"],
                "mean_return": round(r["mean_return"], 4),
                "success_rate": round(r["success_rate"], 4),
            }
    train_env = config["env"]["env_id"]
    card = {
        "alias": alias,
        "agent": agent,
        "train_env": train_env,
        "suite": config.get("suite"),
        "seed": seed,
        "timesteps": meta.num_timesteps,
        "eval_seed": 10_000,
        "eval_deterministic": mode == "deterministic",
        "command": (compare_dir / "report.md").read_text().split("```")[1].strip(),
        "selection": selection or f"seed {seed}, chosen by hand",
        "config": config["model"],
        "evaluation": evaluation,
        # the card's success_rate used by tests/test_pretrained.py: the compare's own mode, training env
        "success_rate": evaluation[train_env][mode]["success_rate"],
    }
    out = ROOT / "pretrained" / alias
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "model.zip", out / "model.zip")
    (out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    lines = [
        f"# {alias}",
        "",
        f"`{agent}` trained on `{train_env}` for {card['timesteps']} steps (seed {seed}), by:",
        "",
        f"    {card['command']}",
        "",
        f"Seed: {card['selection']}.",
        "",
        "Training settings: " + _settings(config["model"]) + ".",
        "",
        "Evaluation (32 episodes per env, episode seed 10000; success = reached the goal):",
        "",
        "| env | deterministic return | deterministic success | stochastic return | stochastic success |",
        "|---|---:|---:|---:|---:|",
    ]
    for env_id, ev in evaluation.items():
        d, s = ev.get("deterministic", {}), ev.get("stochastic", {})
        lines.append(
            f"| {env_id} | {d.get('mean_return', '-')} | {d.get('success_rate', '-')} | "
            f"{s.get('mean_return', '-')} | {s.get('success_rate', '-')} |"
        )
    lines += [
        "",
        f"Load: `python train.py evaluate --checkpoint {alias} --suite {card['suite'] or train_env}"
        + (
            " --deterministic` (32 episodes per env from seed 10000, greedy actions)"
            if card["eval_deterministic"]
            else "` (the default evaluation protocol: 32 episodes per env from seed 10000, sampled actions)"
        ),
        "(safe by default: rebuilt from the JSON config in the zip, tensors read with weights_only=True).",
        "",
    ]
    (out / "MODEL_CARD.md").write_text("\n".join(lines))
    return out


def _settings(model: dict) -> str:
    """The settings the fair-comparison tuning chooses among, as the card's one line."""
    ppo, policy_kwargs = model.get("ppo", {}), model.get("policy_kwargs", {})
    chunks = ppo.get("chunk_length")
    return ", ".join(
        [
            f"learning rate {ppo.get('learning_rate')}",
            "critic gradient through the shared core"
            if policy_kwargs.get("critic_grad_through_core")
            else "no critic gradient through the core",
            f"minibatches of {chunks}-step chunks" if chunks else "minibatches of whole rollout sequences",
        ]
    )


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    compare, agent_name, which, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    if which == "median":
        chosen, how = median_selection(compare, agent_name)
    else:
        chosen, how = int(which), ""
    print(package(compare, agent_name, chosen, name, how))
