"""Atari environment throughput: SB3 Dummy/Subproc vectorisation of our wrappers vs ale-py's vector env.

Usage: python benchmarks/bench_atari_envs.py [--game Breakout] [--n-envs 4] [--steps 2000]
Random actions, agent steps (frame skip 4) per second, measured one after the other in one run, all
through ``envs.make_atari_vec_env`` (training mode, frame stack 4): ``vec_cls="dummy"``, ``"subproc"``
and ``"ale"`` (``envs.ale_vec.AleVecEnv``: ale-py's C++ threads behind the same SB3 interface,
observations and raw-score bookkeeping; no mode/difficulty options).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rims_rl.envs import make_atari_vec_env

BACKENDS = ("dummy", "subproc", "ale")


def steps_per_s(game: str, n_envs: int, steps: int, vec_cls: str) -> float:
    """Agent steps per second of one backend with random actions."""
    venv = make_atari_vec_env(f"ALE/{game}-v5", n_envs=n_envs, seed=0, frame_stack=4, vec_cls=vec_cls)
    venv.reset()
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(steps // n_envs):
        venv.step(rng.integers(0, venv.action_space.n, size=n_envs))
    elapsed = time.perf_counter() - t0
    venv.close()
    return (steps // n_envs) * n_envs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--game", default="Breakout")
    parser.add_argument("--n-envs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    print(f"{args.game}, n_envs={args.n_envs}, {args.steps} agent steps, random actions, frame stack 4")
    rates = {}
    for name in BACKENDS:
        rates[name] = steps_per_s(args.game, args.n_envs, args.steps, name)
        print(
            f"{name:8s} {rates[name]:8.0f} steps/s  ({rates[name] / rates['dummy']:.2f}x dummy)", flush=True
        )


if __name__ == "__main__":
    main()
