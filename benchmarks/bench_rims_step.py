"""The re-derived RIMs loop vs the general fused loop vs ``nn.LSTM``, side by side (issue 43, item 3).

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_rims_step.py [--shapes 8x32 64x128] [--hidden 192]
    [--repeats 7] [--rollout-steps 200] [--devices cpu cuda] [--reference]

Forward+backward of one call at each BxT shape, input 64, RIMs with 6 units, k=4, paper attention sizes
and dropout 0.1 (training mode): ``nn.LSTM``, RIMs on the re-derived loop (``derived_step = True``;
the default for B <= 16), RIMs on the general fused loop (``derived_step = False``, the previous default)
and, with ``--python-loop``, the re-derived loop in Python (the fallback without a compiler) and, with
``--reference``, the autograd reference. Then the rollout step: no-grad T=1 calls at B=16 with
a carried state, as sb3's ``predict`` makes them (eval mode), per step. All candidates are timed
interleaved (one repeat of each in turn) in one process, so load from other jobs hits them alike; read the
ratios.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from bench_core import interleaved  # the same interleaved timing as the core benchmark
from torch import nn

from rims_rl.cores import rims_ext
from rims_rl.cores.rims import RIMs

_BUILT = rims_ext.extension()  # the C++ loop (None without a compiler: "derived" is the Python loop)


def rims_path(core: RIMs, path: str) -> None:
    """Select ``derived`` (re-derived loop, C++ where built), ``derived-py`` (its Python loop), ``fused``
    (general fused loop) or ``reference``."""
    rims_ext._STATE["module"] = None if path == "derived-py" else _BUILT
    core.fast_path = path != "reference"
    core.derived_step = path.startswith("derived")  # forced either way, whatever the batch


def fwd_bwd(module: nn.Module, x: torch.Tensor, path: str | None = None) -> Callable[[], None]:
    def once() -> None:
        if path is not None:
            rims_path(module, path)  # type: ignore[arg-type]
        out, _ = module(x)
        out.sum().backward()

    return once


def rollout(module: nn.Module, x: torch.Tensor, path: str | None = None) -> Callable[[], None]:
    """T=1 no-grad calls with a carried state, as sb3's predict makes them per env step."""

    def once() -> None:
        if path is not None:
            rims_path(module, path)  # type: ignore[arg-type]
        B, H = x.shape[1], module.hidden_size
        state = (x.new_zeros(1, B, H), x.new_zeros(1, B, H))
        with torch.no_grad():
            for t in range(x.shape[0]):
                _, state = module(x[t : t + 1], state)

    return once


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", nargs="+", default=["8x32", "64x128"], help="BxT of the fwd+bwd calls")
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--input", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rollout-steps", type=int, default=200)
    parser.add_argument("--reference", action="store_true", help="also time the autograd reference")
    parser.add_argument("--python-loop", action="store_true", help="also time the derived loop in Python")
    parser.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], default=None)
    args = parser.parse_args()
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    paths = ["derived"] + (["derived-py"] if args.python_loop else []) + ["fused"]
    paths += ["reference"] if args.reference else []
    print(f"C++ loop: {'built' if _BUILT is not None else 'not built (derived = its Python loop)'}")
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, hidden {args.hidden}")
    for device in devices:
        torch.manual_seed(0)
        lstm = nn.LSTM(args.input, args.hidden).to(device)
        rims = RIMs(args.input, args.hidden, n_units=6, k=4).to(device)
        for shape in args.shapes:
            B, T = (int(v) for v in shape.split("x"))
            x = torch.randn(T, B, args.input, device=device)
            rims.train()
            fns = {"lstm": fwd_bwd(lstm, x), **{p: fwd_bwd(rims, x, p) for p in paths}}
            t = interleaved(fns, args.repeats, device)
            cols = ", ".join(f"{p} {t[p] * 1e3:.1f} ms = {t[p] / t['lstm']:.2f}x" for p in paths)
            print(f"{device} fwd+bwd B={B} T={T}: nn.LSTM {t['lstm'] * 1e3:.1f} ms; {cols}", flush=True)
        rims.eval()
        xr = torch.randn(args.rollout_steps, 16, args.input, device=device)
        fns = {"lstm": rollout(lstm, xr), **{p: rollout(rims, xr, p) for p in paths}}
        t = interleaved(fns, args.repeats, device)
        per = {name: v / args.rollout_steps * 1e6 for name, v in t.items()}
        cols = ", ".join(f"{p} {per[p]:.0f} us = {per[p] / per['lstm']:.2f}x" for p in paths)
        lstm_us = per["lstm"]
        print(f"{device} rollout T=1 B=16 no grad, per step: nn.LSTM {lstm_us:.0f} us; {cols}", flush=True)
        rims_path(rims, "derived")
        rims.derived_step = None


if __name__ == "__main__":
    main()
