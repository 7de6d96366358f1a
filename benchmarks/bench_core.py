"""Forward+backward time of the RIMs core vs ``nn.LSTM`` of the same hidden size, side by side.

Usage: python benchmarks/bench_core.py [--T 128] [--B 64] [--hidden 600] [--input 64] [--repeats 5]
Prints one line per device and configuration with the ratio RIMs / LSTM measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from rims_rl.core import RIMs


def _time_fwd_bwd(module: nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward+backward over the whole sequence."""

    def once() -> None:
        out, _ = module(x)
        out.sum().backward()

    for _ in range(2):
        once()
    times = []
    for _ in range(repeats):
        if x.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        once()
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--T", type=int, default=128)
    parser.add_argument("--B", type=int, default=64)
    parser.add_argument("--hidden", type=int, nargs="+", default=[600, 120])
    parser.add_argument("--input", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, T={args.T}, B={args.B}")
    print(f"{'device':6} {'hidden':>6} {'cell':>5} {'lstm ms':>9} {'rims ms':>9} {'ratio':>6}")
    for device in devices:
        for hidden in args.hidden:
            x = torch.randn(args.T, args.B, args.input, device=device)
            lstm = nn.LSTM(args.input, hidden).to(device)
            t_lstm = _time_fwd_bwd(lstm, x, args.repeats)
            for cell in ("lstm", "gru"):
                rims = RIMs(args.input, hidden, n_units=6, k=4, cell=cell).to(device)
                t_rims = _time_fwd_bwd(rims, x, args.repeats)
                print(
                    f"{device:6} {hidden:>6} {cell:>5} {t_lstm * 1e3:9.1f} {t_rims * 1e3:9.1f} "
                    f"{t_rims / t_lstm:6.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
