"""Forward+backward time of the RIMs core vs ``nn.LSTM`` of the same hidden size, side by side.

Usage: python benchmarks/bench_core.py [--T 128] [--B 64] [--hidden 600 120] [--input 64] [--repeats 5]
    [--rollout] [--ppo] [--modular] [--gru] [--tlb] [--cpu-time] [--devices cpu cuda]

Prints one line per device, hidden size and RIMs cell: ``nn.LSTM`` ms, RIMs ms on the fused path (the
default: one autograd node with a hand-written backward), RIMs ms on the autograd reference path
(``fast_path = False``), and the ratios, all measured in the same process. The three are timed
interleaved (one repeat of each in turn), so load from other jobs hits them alike. ``--rollout`` adds the
no-grad single-step call that sb3 makes while collecting rollouts (T=1, B=16, 200 steps). ``--ppo``
adds end-to-end PPO (``bench_ppo.py``'s rims_ppo MiniGrid model): steps/s of one rollout + update with
the fused core vs the reference core, alternating in one process (so CPU load hits both alike).
``--modular`` adds every other registered core (``rims_rl.cores.registry``: the TLB, the stable assembly,
the GRU, installed plug-ins) at each hidden size with its defaults, timed interleaved with ``nn.LSTM``,
with its parameter count beside the LSTM's. ``--gru`` times only the GRU core: its C++ loop
(``rims_rl.cores.gru_ext``, the default on CPU) vs the same module run as ``nn.GRU`` vs ``nn.LSTM``,
forward+backward and the rollout step. ``--cpu-time`` times CPU seconds of this thread instead of wall
seconds (for a core time-shared with other jobs). ``--tlb`` times the TLB's paths against each other and
``nn.LSTM``, interleaved in one process: forward+backward of the sequence call (fast path vs the reference
``fast_path = False``, the code before issue 43) and, with ``--rollout``, the no-grad rollout step (T=1,
B=16, 200 steps; rows aligned from a zero state, and staggered: chunk positions spread by earlier
episode starts, with a start at 2% of steps, as in real rollouts) on the C++ step with its cache, the C++
step without it, the Python step and the reference.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

from rims_rl.copying import make_core  # noqa: E402
from rims_rl.cores import core_names  # noqa: E402
from rims_rl.cores.rims import RIMs  # noqa: E402
from rims_rl.cores.tlb import TemporalLatentBottleneck  # noqa: E402


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved(
    fns: dict[str, Callable[[], None]],
    repeats: int,
    device: str,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median seconds of each function, timed in turn so that machine load affects all alike.

    ``clock``: wall time by default; ``time.thread_time`` counts only the CPU time of this thread, which
    other processes time-sharing the core do not inflate (CPU work only: GPU time is not counted)."""
    for fn in fns.values():  # warm-up: allocations, first-call overheads
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = clock()
            fn()
            _sync(device)
            times[name].append(clock() - t0)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def _fwd_bwd(module: nn.Module, x: torch.Tensor, fast: bool | None = None) -> Callable[[], None]:
    def once() -> None:
        if fast is not None:
            module.fast_path = fast
        out, _ = module(x)
        out.sum().backward()

    return once


def _rollout(module: RIMs, x: torch.Tensor, fast: bool) -> Callable[[], None]:
    """T=1 no-grad calls with a carried state, as sb3's predict does per env step."""

    def once() -> None:
        module.fast_path = fast
        state = module.initial_state(x.shape[1], x.device)
        with torch.no_grad():
            for t in range(x.shape[0]):
                _, state = module(x[t : t + 1], state)

    return once


def _gru_side_by_side(args: argparse.Namespace, device: str, hidden: int, clock: Callable[[], float]) -> None:
    """The GRU core's C++ loop (``rims_rl.cores.gru_ext``) vs the same module as ``nn.GRU``
    (``fused_loop = False``) vs ``nn.LSTM``: forward+backward, and the no-grad rollout step."""
    from rims_rl.cores.gru import GRUCore

    x = torch.randn(args.T, args.B, args.input, device=device)
    lstm = nn.LSTM(args.input, hidden).to(device)
    gru = GRUCore(args.input, hidden).to(device)

    def gru_path(fused: bool, fn: Callable[[], None]) -> Callable[[], None]:
        def once() -> None:
            gru.fused_loop = fused
            fn()

        return once

    t = interleaved(
        {
            "lstm": _fwd_bwd(lstm, x),
            "C++": gru_path(True, _fwd_bwd(gru, x)),
            "nn.GRU": gru_path(False, _fwd_bwd(gru, x)),
        },
        args.repeats,
        device,
        clock,
    )
    ms = {name: f"{v * 1e3:.2f} ms" for name, v in t.items()}
    print(
        f"{device:6} {hidden:>6} GRU fwd+bwd T={args.T} B={args.B}: nn.LSTM {ms['lstm']}, "
        f"GRU C++ loop {ms['C++']} = {t['C++'] / t['lstm']:.2f}x, nn.GRU {ms['nn.GRU']} "
        f"= {t['nn.GRU'] / t['lstm']:.2f}x; speed-up {t['nn.GRU'] / t['C++']:.2f}",
        flush=True,
    )
    xr = torch.randn(200, 16, args.input, device=device)

    def steps(module: nn.Module) -> Callable[[], None]:
        def once() -> None:
            state = (torch.zeros(1, 16, hidden, device=device),) * 2
            with torch.no_grad():
                for i in range(xr.shape[0]):
                    _, state = module(xr[i : i + 1], state)

        return once

    t = interleaved(
        {
            "lstm": steps(lstm),
            "C++": gru_path(True, steps(gru)),
            "nn.GRU": gru_path(False, steps(gru)),
        },
        args.repeats,
        device,
        clock,
    )
    us = {name: f"{v / xr.shape[0] * 1e6:.0f} us" for name, v in t.items()}
    print(
        f"{device:6} {hidden:>6} GRU rollout (no grad, T=1, B=16, per step): nn.LSTM {us['lstm']}, "
        f"GRU C++ loop {us['C++']}, nn.GRU {us['nn.GRU']}",
        flush=True,
    )
def _tlb_path(core: TemporalLatentBottleneck, path: str) -> None:
    """Select a TLB path: ``cached`` (the default), ``cpp`` (no step cache), ``python``, ``reference``."""
    core.fast_path = path != "reference"
    core.step_ext = path in ("cached", "cpp")
    core.step_cache = path == "cached"


def _tlb_fwd_bwd(core: TemporalLatentBottleneck, x: torch.Tensor, path: str) -> Callable[[], None]:
    def once() -> None:
        _tlb_path(core, path)
        out, _ = core(x)
        out.sum().backward()

    return once


def _tlb_rollout(
    core: TemporalLatentBottleneck, x: torch.Tensor, path: str, staggered: bool
) -> Callable[[], None]:
    """sb3's rollout calls: T=1, no grad, the state carried; ``staggered``: rows at different chunk
    positions (a warm state from episode starts at random steps) and episode starts at 2% of steps."""
    T, B = x.shape[0], x.shape[1]
    gen = torch.Generator().manual_seed(0)
    starts = (torch.rand(T, B, generator=gen) < 0.02).to(x.dtype)
    warm_starts = torch.zeros(core.chunk_size, B)
    warm_starts[torch.randint(0, core.chunk_size, (B,), generator=gen), torch.arange(B)] = 1.0
    with torch.no_grad():
        _, warm = core(torch.randn(core.chunk_size, B, core.input_size, generator=gen), None, warm_starts)

    def once() -> None:
        _tlb_path(core, path)
        state = warm if staggered else core.initial_state(B, x.device)
        with torch.no_grad():
            for t in range(T):
                _, state = core(x[t : t + 1], state, starts[t : t + 1] if staggered else None)

    return once


def _tlb_ab(args: argparse.Namespace, device: str, hidden: int, lstm: nn.LSTM, x: torch.Tensor) -> None:
    """The TLB's fast path vs its reference and ``nn.LSTM``, interleaved (``--tlb``)."""
    core = TemporalLatentBottleneck(args.input, hidden).to(device)
    t = interleaved(
        {
            "lstm": _fwd_bwd(lstm, x),
            "fast": _tlb_fwd_bwd(core, x, "cached"),
            "reference": _tlb_fwd_bwd(core, x, "reference"),
        },
        args.repeats,
        device,
    )
    print(
        f"{device:6} {hidden:>6} TLB fwd+bwd T={args.T} B={args.B}: nn.LSTM {t['lstm'] * 1e3:.2f} ms, fast "
        f"{t['fast'] * 1e3:.2f} ms = {t['fast'] / t['lstm']:.2f}x, reference {t['reference'] * 1e3:.2f} ms = "
        f"{t['reference'] / t['lstm']:.2f}x; fast / reference {t['fast'] / t['reference']:.2f}",
        flush=True,
    )
    if not args.rollout:
        return
    steps = 200
    xr = torch.randn(steps, 16, args.input, device=device)
    lstm_roll = _rollout_lstm(lstm, xr)
    for staggered in (False, True):
        paths = ("cached", "cpp", "python", "reference")
        fns = {"lstm": lstm_roll, **{p: _tlb_rollout(core, xr, p, staggered) for p in paths}}
        t = interleaved(fns, args.repeats, device)
        per_step = {name: v / steps * 1e6 for name, v in t.items()}
        cells = ", ".join(f"{p} {per_step[p]:.0f} us = {t[p] / t['lstm']:.2f}x" for p in paths)
        print(
            f"{device:6} {hidden:>6} TLB rollout (no grad, T=1, B=16, per step, "
            f"{'staggered' if staggered else 'aligned'}): nn.LSTM {per_step['lstm']:.0f} us; {cells}",
            flush=True,
        )
    _tlb_path(core, "cached")


def _rollout_lstm(lstm: nn.LSTM, x: torch.Tensor) -> Callable[[], None]:
    """``nn.LSTM``'s rollout calls: T=1, no grad, the state carried."""

    def once() -> None:
        state = None
        with torch.no_grad():
            for t in range(x.shape[0]):
                _, state = lstm(x[t : t + 1], state)

    return once


def _ppo_ab(repeats: int) -> None:
    """rims_ppo steps/s (rollout + update) with the fused vs the reference core, alternating."""
    from bench_ppo import build

    model = build("rims_ppo", "MiniGrid-DoorKey-5x5-v0")
    cores = [m for m in model.policy.modules() if isinstance(m, RIMs)]
    per_rollout = model.n_steps * model.n_envs
    model.learn(per_rollout)  # warm-up
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeats):
        for fast in (True, False):
            for core in cores:
                core.fast_path = fast
            t0 = time.perf_counter()
            model.learn(per_rollout, reset_num_timesteps=False)
            times[fast].append(time.perf_counter() - t0)
    med = {fast: sorted(ts)[len(ts) // 2] for fast, ts in times.items()}
    print(
        f"rims_ppo MiniGrid-DoorKey-5x5 (rollout + update) steps/s: fused {per_rollout / med[True]:.0f}, "
        f"reference {per_rollout / med[False]:.0f}, speed-up {med[False] / med[True]:.2f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--T", type=int, default=128)
    parser.add_argument("--B", type=int, default=64)
    parser.add_argument("--hidden", type=int, nargs="+", default=[600, 120])
    parser.add_argument("--input", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--cells",
        nargs="*",
        default=["lstm", "gru"],
        choices=["lstm", "gru"],
        help="RIMs cells to time (none: no RIMs rows, e.g. with --tlb)",
    )
    parser.add_argument("--rollout", action="store_true", help="also time no-grad T=1 rollout steps")
    parser.add_argument("--ppo", action="store_true", help="also A/B the core inside rims_ppo training")
    parser.add_argument("--modular", action="store_true", help="also time every other registered core")
    parser.add_argument(
        "--gru",
        action="store_true",
        help="only the GRU core: its C++ loop vs nn.GRU vs nn.LSTM (fwd+bwd and rollout step)",
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time CPU seconds of this thread (time.thread_time), not wall: for a core shared with others",
    )
    parser.add_argument(
        "--tlb", action="store_true", help="also time the TLB's fast paths against its reference"
    )
    parser.add_argument(
        "--devices",
        nargs="+",
        choices=["cpu", "cuda"],
        default=None,
        help="devices to time (default: cpu, and cuda where available)",
    )
    args = parser.parse_args()

    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("--devices cuda: torch sees no CUDA device here; drop it or run on a GPU machine")
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, T={args.T}, B={args.B}")
    clock = time.thread_time if args.cpu_time else time.perf_counter
    if args.gru:
        for device in devices:
            for hidden in args.hidden:
                _gru_side_by_side(args, device, hidden, clock)
        return
    print(
        f"{'device':6} {'hidden':>6} {'cell':>5} {'lstm ms':>9} {'fused ms':>9} {'autograd ms':>11} "
        f"{'fused/lstm':>10} {'autograd/lstm':>13} {'speed-up':>8}"
    )
    for device in devices:
        for hidden in args.hidden:
            x = torch.randn(args.T, args.B, args.input, device=device)
            lstm = nn.LSTM(args.input, hidden).to(device)
            for cell in args.cells:
                rims = RIMs(args.input, hidden, n_units=6, k=4, cell=cell).to(device)
                t = interleaved(
                    {
                        "lstm": _fwd_bwd(lstm, x),
                        "fused": _fwd_bwd(rims, x, fast=True),
                        "autograd": _fwd_bwd(rims, x, fast=False),
                    },
                    args.repeats,
                    device,
                )
                print(
                    f"{device:6} {hidden:>6} {cell:>5} {t['lstm'] * 1e3:9.1f} {t['fused'] * 1e3:9.1f} "
                    f"{t['autograd'] * 1e3:11.1f} {t['fused'] / t['lstm']:10.2f} "
                    f"{t['autograd'] / t['lstm']:13.2f} {t['autograd'] / t['fused']:8.2f}",
                    flush=True,
                )
            if args.modular:
                others = {
                    name: make_core(name, args.input, hidden).to(device)
                    for name in core_names()
                    if name not in ("rims", "lstm")
                }
                fns = {"lstm": _fwd_bwd(lstm, x), **{n: _fwd_bwd(m, x) for n, m in others.items()}}
                t = interleaved(fns, args.repeats, device)
                n_lstm = sum(p.numel() for p in lstm.parameters())
                for name, module in others.items():
                    n_params = sum(p.numel() for p in module.parameters())
                    print(
                        f"{device:6} {hidden:>6} {name}: {t[name] * 1e3:.1f} ms = {t[name] / t['lstm']:.2f}x "
                        f"nn.LSTM ({t['lstm'] * 1e3:.1f} ms); {n_params} parameters = "
                        f"{n_params / n_lstm:.2f}x; state {module.state_size} ({module!r:.60})",
                        flush=True,
                    )
            if args.tlb:
                _tlb_ab(args, device, hidden, lstm, x)
            if args.rollout and args.cells:
                rims = RIMs(args.input, hidden, n_units=6, k=4).to(device).eval()
                xr = torch.randn(200, 16, args.input, device=device)
                t = interleaved(
                    {"fused": _rollout(rims, xr, True), "autograd": _rollout(rims, xr, False)},
                    args.repeats,
                    device,
                )
                print(
                    f"{device:6} {hidden:>6} rollout (no grad, T=1, B=16, per step): fused "
                    f"{t['fused'] / 200 * 1e6:.0f} us, reference {t['autograd'] / 200 * 1e6:.0f} us, "
                    f"speed-up {t['autograd'] / t['fused']:.2f}",
                    flush=True,
                )
    if args.ppo:
        _ppo_ab(args.repeats)


if __name__ == "__main__":
    main()
