"""Atari environment throughput: SB3 Dummy/Subproc vectorisation of our wrappers vs ale-py's vector env.

Usage: python benchmarks/bench_atari_envs.py [--game Breakout] [--n-envs 4] [--steps 2000]
Random actions, agent steps (frame skip 4) per second, measured one after the other in one run.
ale-py's ``AtariVectorEnv`` is a gymnasium vector env (C++ threads, channel-first frames, its own
preprocessing); it is listed for reference, since it has no mode/difficulty options and does not
report raw full-game scores, which our suites need.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from envs import make_atari_vec_env


def _sb3_steps_per_s(game: str, n_envs: int, steps: int, vec_cls: str) -> float:
    venv = make_atari_vec_env(f"ALE/{game}-v5", n_envs=n_envs, seed=0, vec_cls=vec_cls)
    venv.reset()
    actions = np.zeros(n_envs, dtype=np.int64)
    t0 = time.perf_counter()
    for _ in range(steps // n_envs):
        actions[:] = [venv.action_space.sample() for _ in range(n_envs)]
        venv.step(actions)
    elapsed = time.perf_counter() - t0
    venv.close()
    return (steps // n_envs) * n_envs / elapsed


def _ale_vector_steps_per_s(game: str, n_envs: int, steps: int) -> float | None:
    try:
        from ale_py.vector_env import AtariVectorEnv
    except ImportError:
        return None
    venv = AtariVectorEnv(game=game.lower(), num_envs=n_envs, stack_num=1)
    venv.reset(seed=0)
    t0 = time.perf_counter()
    for _ in range(steps // n_envs):
        venv.step(venv.action_space.sample())
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
    print(f"{args.game}, n_envs={args.n_envs}, {args.steps} agent steps, random actions")
    for name in ("dummy", "subproc"):
        print(
            f"sb3 {name:8s} {_sb3_steps_per_s(args.game, args.n_envs, args.steps, name):8.0f} steps/s",
            flush=True,
        )
    ale = _ale_vector_steps_per_s(args.game, args.n_envs, args.steps)
    print(f"ale-py vector {ale:8.0f} steps/s" if ale is not None else "ale-py vector env: not available")


if __name__ == "__main__":
    main()
