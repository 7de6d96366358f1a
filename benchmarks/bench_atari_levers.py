"""Atari PPO throughput levers on a CPU, measured side by side in one process (issue 27, item 2).

Usage: python benchmarks/bench_atari_levers.py [--game Pong] [--agents rims_ppo lstm_ppo] [--repeats 2]
    [--n-envs 8] [--variants base ale ale+channels_last ale+bf16 ale+2threads]

Each variant is one model of the agent's atari preset (NatureCNN, frame stack 4, 128 steps per env); the
variants take turns, one rollout + PPO update each per round, so load from other jobs hits them alike.
Printed: agent steps/s per variant (the median over rounds) and its ratio to ``base``.

    base              SB3 DummyVecEnv of our gymnasium wrappers, fp32, 1 torch thread
    ale               ale-py's threaded C++ vector env behind the same interface (``vec_env=ale``)
    ale+channels_last the convolutions in channels-last memory (the presets' ``channels_last``, on for Atari)
    ale+bf16          the CNN under CPU autocast to bfloat16 (fast where the CPU has AVX512-BF16 or AMX)
    ale+2threads      2 torch threads instead of 1

The numbers say what each lever buys on this machine. Every other variant runs with ``channels_last=false``,
so ``base`` stays the plain layout although the Atari presets now switch it on.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from rims_rl.agents import build_model
from rims_rl.app.config import resolve_config
from rims_rl.app.runs import make_train_env

VARIANTS = ("base", "ale", "ale+channels_last", "ale+bf16", "ale+2threads")


def _bf16_cnn(model: Any) -> None:
    """The CNN (most of an Atari step's compute) under CPU autocast to bfloat16, its features back in
    fp32 so the core, heads and SB3's buffers (numpy, no bfloat16) are unchanged."""
    policy = model.policy
    extract = policy.extract_features

    def extract_bf16(obs: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = extract(obs, *args, **kwargs)
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()

    policy.extract_features = extract_bf16


@contextlib.contextmanager
def _context(variant: str) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2 if variant.endswith("2threads") else 1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build(agent: str, env_id: str, variant: str, n_envs: int) -> Any:
    """One model of the agent's preset for this variant."""
    overrides = [f"n_envs={n_envs}", f"channels_last={variant.endswith('channels_last')}"]
    overrides += [] if variant == "base" else ["vec_env=ale"]
    config = resolve_config(agent, env_id, seed=0, overrides=overrides)
    env = make_train_env(config, 0, vec_cls=None if variant != "base" else "dummy")
    model = build_model(config.model, env, seed=0, device="cpu")
    if variant.endswith("bf16"):
        _bf16_cnn(model)
    return model


def rounds(models: dict[str, Any], repeats: int) -> dict[str, list[float]]:
    """Steps/s of one rollout + update per model per round, models in turn."""
    rates: dict[str, list[float]] = {v: [] for v in models}
    steps: Callable[[Any], int] = lambda m: m.n_steps * m.n_envs  # noqa: E731
    for variant, model in models.items():  # warm-up: first-call allocations and compilations
        with _context(variant):
            model.learn(steps(model))
    for _ in range(repeats):
        for variant, model in models.items():
            with _context(variant):
                start = time.perf_counter()
                model.learn(steps(model), reset_num_timesteps=False)
                rates[variant].append(steps(model) / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--game", default="Pong")
    parser.add_argument("--agents", nargs="+", default=["rims_ppo", "lstm_ppo"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = parser.parse_args()
    if "base" not in args.variants:
        parser.error("--variants must include base: every ratio is to it")
    env_id = f"ALE/{args.game}-v5"
    bf16 = "avx512_bf16" in open("/proc/cpuinfo").read() if "ale+bf16" in args.variants else None
    print(
        f"{env_id}, {args.n_envs} envs, torch {torch.__version__}, CPU bf16: {bf16}, repeats {args.repeats}"
    )
    for agent in args.agents:
        models = {v: build(agent, env_id, v, args.n_envs) for v in args.variants}
        rates = rounds(models, args.repeats)
        base = statistics.median(rates["base"])
        for variant, values in rates.items():
            rate = statistics.median(values)
            print(f"{agent:10s} {variant:18s} {rate:7.1f} steps/s  {rate / base:5.2f}x base", flush=True)
        for model in models.values():
            model.get_env().close()


if __name__ == "__main__":
    main()
