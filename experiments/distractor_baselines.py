"""Reference lines for the distractor suite: what a policy that knows only part of the mission scores.

For each env of ``minigrid-distractors``, over ``--layouts`` layouts (reset seeds ``0..N-1``): the
success of a policy that picks uniformly among the objects of the named colour, among those of the named
type, or among all objects (``DistractorEnv.shortcut_success``), and the share of layouts where the
target can be reached at all (``target_reachable``). An agent's success means little unless it beats
the colour-only line on that env.

    python experiments/distractor_baselines.py --layouts 2000
"""

from __future__ import annotations

import argparse

from rims_rl.envs import get_suite, make_env
from rims_rl.envs.distractors import DistractorEnv


def baselines(env_id: str, layouts: int) -> dict[str, float]:
    """Mean shortcut success and the reachable share over ``layouts`` resets of ``env_id``."""
    env = make_env(env_id)
    inner = env.unwrapped
    if not isinstance(inner, DistractorEnv):
        raise SystemExit(f"{env_id} is not a distractor room")
    total = {"colour": 0.0, "type": 0.0, "random": 0.0, "reachable": 0.0}
    for seed in range(layouts):
        env.reset(seed=seed)
        for key, value in inner.shortcut_success().items():
            total[key] += value / layouts
        total["reachable"] += inner.target_reachable() / layouts
    env.close()
    return total


def main(argv: list[str] | None = None) -> str:
    """Print the Markdown table of every env of the suite."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--layouts", type=int, default=2000, help="layouts per env (reset seeds 0..N-1)")
    args = p.parse_args(argv)
    if args.layouts < 1:
        p.error(f"--layouts must be >= 1, got {args.layouts}")
    lines = [
        "| env | id | colour-only pick | type-only pick | random pick | target reachable |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for spec in get_suite("minigrid-distractors").specs():
        b = baselines(spec.env_id, args.layouts)
        cells = [f"{100 * b[k]:.1f}%" for k in ("colour", "type", "random", "reachable")]
        lines.append(f"| {spec.name} | {spec.env_id} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
