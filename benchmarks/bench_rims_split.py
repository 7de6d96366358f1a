"""Where one RIMs forward+backward spends its time at a PPO minibatch's shape, beside ``nn.LSTM`` (issue 43).

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_rims_split.py [--T 51] [--B 4] [--hidden 132] [--input 64]
    [--repeats 40]

The defaults are rims_ppo's POPGym preset (6 units of 22, k=4, no dropout) at the shape sb3-contrib's
buffer gives its minibatches there (RepeatPrevious: 128 steps cut at 51-step episodes, padded: T=51,
B=4-5). Prints, per call (mean over ``--repeats``): the whole forward and backward, the C++ loops inside
them (``rims_ext``'s forward and backward), the weight gradients after the reverse loop
(``rims_derived._weight_grads``), hence what the input projections, the folding of the weights and
autograd cost around them; then ``nn.LSTM``'s forward+backward at the same shape, and the no-grad rollout
step (T=1, B=16) of both. The wrappers time the calls the default path makes; nothing else changes.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rims_rl.cores import rims_derived, rims_ext  # noqa: E402
from rims_rl.cores.rims import RIMs  # noqa: E402

SPENT: dict[str, float] = collections.defaultdict(float)


def timed(name: str, fn: Any) -> Any:
    def wrapper(*args: Any) -> Any:
        start = time.perf_counter()
        result = fn(*args)
        SPENT[name] += time.perf_counter() - start
        return result

    return wrapper


class _TimedExtension:
    """The built extension with its two loops timed."""

    def __init__(self, module: ModuleType) -> None:
        self.forward = timed("C++ forward loop", module.forward)
        self.backward = timed("C++ backward loop", module.backward)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, default=51)
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--hidden", type=int, default=132)
    p.add_argument("--input", type=int, default=64)
    p.add_argument("--repeats", type=int, default=40)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    module = rims_ext.extension()
    if module is None:
        print("the C++ loop is not built here: nothing to split")
        return 1
    timed_ext = _TimedExtension(module)
    rims_ext.extension = lambda: timed_ext  # type: ignore[assignment,return-value]
    rims_derived._weight_grads = timed("weight gradients", rims_derived._weight_grads)

    T, B, hidden = args.T, args.B, args.hidden
    rims = RIMs(args.input, hidden, n_units=6, k=4, input_dropout=0.0, comm_dropout=0.0)
    lstm = torch.nn.LSTM(args.input, hidden)
    x = torch.randn(T, B, args.input, requires_grad=True)
    starts = torch.zeros(T, B)
    starts[0] = 1.0
    state = (torch.zeros(1, B, hidden), torch.zeros(1, B, hidden))

    def rims_call() -> None:
        start = time.perf_counter()
        out, _ = rims(x, state, starts)
        middle = time.perf_counter()
        out.sum().backward()
        SPENT["forward, whole"] += middle - start
        SPENT["backward, whole"] += time.perf_counter() - middle

    def lstm_call() -> None:
        start = time.perf_counter()
        out, _ = lstm(x)
        out.sum().backward()
        SPENT["nn.LSTM forward+backward"] += time.perf_counter() - start

    for _ in range(5):
        rims_call()
        lstm_call()
    SPENT.clear()
    for _ in range(args.repeats):  # interleaved, so load from other jobs hits both alike
        rims_call()
        lstm_call()
    ms = {k: v / args.repeats * 1e3 for k, v in SPENT.items()}
    print(f"torch {torch.__version__}, 1 thread, T={T}, B={B}, hidden {hidden}, input {args.input}")
    for name in (
        "forward, whole",
        "C++ forward loop",
        "backward, whole",
        "C++ backward loop",
        "weight gradients",
    ):
        print(f"  {name:26s} {ms[name]:7.2f} ms")
    outside = (
        ms["forward, whole"]
        + ms["backward, whole"]
        - sum(ms[k] for k in ("C++ forward loop", "C++ backward loop", "weight gradients"))
    )
    total = ms["forward, whole"] + ms["backward, whole"]
    print(f"  {'the rest (projections, folding, autograd)':26s} {outside:7.2f} ms")
    print(f"  RIMs forward+backward {total:.2f} ms; nn.LSTM {ms['nn.LSTM forward+backward']:.2f} ms "
          f"= {total / ms['nn.LSTM forward+backward']:.2f}x")  # fmt: skip

    rims.eval()
    x1, s1 = torch.randn(1, 16, args.input), torch.zeros(1, 16)
    h16 = (torch.zeros(1, 16, hidden), torch.zeros(1, 16, hidden))
    per_step = {}
    with torch.no_grad():
        for name, step in (("RIMs", lambda: rims(x1, h16, s1)), ("nn.LSTM", lambda: lstm(x1, h16))):
            for _ in range(20):
                step()
            start = time.perf_counter()
            for _ in range(10 * args.repeats):
                step()
            per_step[name] = (time.perf_counter() - start) / (10 * args.repeats) * 1e6
    rims_us, lstm_us = per_step["RIMs"], per_step["nn.LSTM"]
    ratio = rims_us / lstm_us
    print(f"  rollout step (T=1, B=16): RIMs {rims_us:.0f} us, nn.LSTM {lstm_us:.0f} us, {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
