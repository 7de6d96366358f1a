"""End-to-end PPO training throughput: each recurrent agent vs stock sb3-contrib LSTM-PPO.

Usage:
    python benchmarks/bench_ppo.py                       # MiniGrid DoorKey-5x5, 4 rollouts each
    python benchmarks/bench_ppo.py --atari               # also ALE/Breakout-v5 (slow on CPU)
    python benchmarks/bench_ppo.py --rollouts 8 --threads 1

Every agent trains with the same preset (n_envs, n_steps, epochs, batch, features extractor, hidden
size, critic layout); only the policy class differs:
    rims_ppo      our policy, RIMs core (sequence fast path)
    lstm_ppo      our policy, nn.LSTM core (sequence fast path)
    tlb_ppo       our policy, Temporal Latent Bottleneck core
    assembly_ppo  our policy, stable-assembly core
    stock_lstm    sb3-contrib's own MlpLstmPolicy/CnnLstmPolicy/MultiInputLstmPolicy, unchanged
Each measurement runs in its own subprocess (so peak memory is that run's own), one after another.
Steps/s counts environment steps including the PPO updates, after one warm-up rollout.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
AGENTS = ("rims_ppo", "lstm_ppo", "tlb_ppo", "assembly_ppo", "stock_lstm")
ENVS = {"minigrid": "MiniGrid-DoorKey-5x5-v0", "atari": "ALE/Breakout-v5"}


def build(agent: str, env_id: str, seed: int = 0, overrides: list[str] | None = None) -> Any:
    """The model for one benchmark row; stock_lstm is lstm_ppo's config on sb3-contrib's own policy."""
    from rims_rl.agents import build_model, sb3_policy_name
    from rims_rl.app.config import resolve_config
    from rims_rl.app.runs import make_train_env

    name = "lstm_ppo" if agent == "stock_lstm" else agent
    config = resolve_config(name, env_id, seed=seed, overrides=overrides or None)
    env = make_train_env(config, seed)  # in-process for MiniGrid, subprocesses for Atari
    policy = sb3_policy_name(env.observation_space, recurrent=True) if agent == "stock_lstm" else None
    return build_model(config.model, env, seed=seed, device="cpu", policy=policy)


def worker(
    agent: str, env_id: str, rollouts: int, threads: int | None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Train one model for ``rollouts`` rollouts after a warm-up one; return steps/s and peak memory."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    model = build(agent, env_id, overrides=overrides)
    per_rollout = model.n_steps * model.n_envs
    model.learn(per_rollout)  # warm-up: allocations, first-call overheads
    start = time.perf_counter()
    model.learn(per_rollout * rollouts, reset_num_timesteps=False)
    seconds = time.perf_counter() - start
    return {
        "agent": agent,
        "env": env_id,
        "policy": type(model.policy).__name__,
        "steps": per_rollout * rollouts,
        "seconds": seconds,
        "steps_per_s": per_rollout * rollouts / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--atari", action="store_true", help="also benchmark ALE/Breakout-v5")
    parser.add_argument("--rollouts", type=int, default=4, help="timed rollouts (+1 warm-up) per agent")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=AGENTS)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="preset override for every agent, e.g. ppo.chunk_length=32 (repeatable)",
    )
    parser.add_argument("--worker", nargs=2, metavar=("AGENT", "ENV"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.rollouts, args.threads, args.set)))
        return

    import platform

    import torch

    print(
        f"torch {torch.__version__}, {platform.machine()}, threads {args.threads or torch.get_num_threads()}"
    )
    print(f"{'env':26} {'agent':13} {'policy':22} {'steps/s':>8} {'vs stock':>8} {'peak MB':>8}")
    for family in ["minigrid"] + (["atari"] if args.atari else []):
        rows = {}
        for agent in args.agents:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                agent,
                ENVS[family],
                "--rollouts",
                str(args.rollouts),
            ]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            for item in args.set:
                cmd += ["--set", item]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
            rows[agent] = json.loads(out.strip().splitlines()[-1])
        stock = rows.get("stock_lstm", {}).get("steps_per_s")
        for agent, r in rows.items():
            ratio = f"{r['steps_per_s'] / stock:8.2f}" if stock else f"{'-':>8}"
            print(
                f"{r['env']:26} {agent:13} {r['policy']:22} {r['steps_per_s']:8.0f} {ratio} "
                f"{r['peak_rss_mb']:8.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
