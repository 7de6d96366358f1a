"""Command-line options of the recurrent cores, shared by the supervised paper experiments.

``experiments/copying.py`` and ``experiments/seq_digits.py`` build their cores the same way, from the same
flags, so one flag means one thing in both: :class:`CoreArgs` holds the flags, :func:`add_core_arguments`
declares them, :func:`build_core` turns them into a core of :func:`rims_rl.copying.make_core`, and
:func:`match_hidden` finds the hidden size at which one core has another's parameter count (the paper's
"LSTM with as many parameters as RIMs").
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from rims_rl.app.atomic import atomic_write_bytes, atomic_write_json
from rims_rl.copying import make_core
from rims_rl.cores import core_names


@dataclass
class CoreArgs:
    """Core flags (defaults: the RIMs paper's Table 3 sizes: 6 units, 4 active, total hidden 600)."""

    model: str = "rims"
    hidden: int = 600
    match_params: str | None = None
    matched_from_hidden: int | None = None  # set by resolve_hidden: the --hidden that was matched
    n_units: int = 6
    k: int = 4
    cell: str = "lstm"
    input_key_size: int = 64
    input_value_size: int | None = None
    input_heads: int = 4
    comm_key_size: int = 32
    comm_value_size: int = 32
    comm_heads: int = 4
    dropout: float = 0.1
    n_latents: int = 4
    chunk_size: int = 8
    fast_layers: int = 1
    heads: int | None = None
    d_model: int | None = None
    n_modules: int = 6
    alpha: float = 0.2
    gain: float = 0.9
    coupling: float = 0.5
    fixed_modules: bool = False


def add_core_arguments(p: argparse.ArgumentParser, d: CoreArgs) -> None:
    """Declare the :class:`CoreArgs` flags on ``p`` with ``d``'s values as defaults."""
    p.add_argument("--model", choices=core_names(), default=d.model)
    p.add_argument("--hidden", type=int, default=d.hidden, help="total hidden size (RIMs: n_units * unit)")
    p.add_argument(
        "--match-params",
        choices=core_names(),
        default=d.match_params,
        help="replace --hidden by the size at which --model has as many parameters as this kind has at "
        "--hidden (e.g. --model lstm --match-params rims: an LSTM with RIMs' parameter count)",
    )
    p.add_argument("--n-units", type=int, default=d.n_units, help="RIMs: number of units")
    p.add_argument("--k", type=int, default=d.k, help="RIMs: active units per step")
    p.add_argument("--cell", choices=("lstm", "gru"), default=d.cell, help="RIMs: unit cell")
    p.add_argument("--input-key-size", type=int, default=d.input_key_size)
    p.add_argument("--input-value-size", type=int, default=d.input_value_size, help="default: unit size * 4")
    p.add_argument("--input-heads", type=int, default=d.input_heads)
    p.add_argument("--comm-key-size", type=int, default=d.comm_key_size)
    p.add_argument("--comm-value-size", type=int, default=d.comm_value_size)
    p.add_argument("--comm-heads", type=int, default=d.comm_heads)
    p.add_argument("--dropout", type=float, default=d.dropout, help="RIMs: attention dropout (both)")
    p.add_argument("--n-latents", type=int, default=d.n_latents, help="TLB: slow-stream latents")
    p.add_argument("--chunk-size", type=int, default=d.chunk_size, help="TLB: steps per chunk")
    p.add_argument("--fast-layers", type=int, default=d.fast_layers, help="TLB: fast-stream layers")
    p.add_argument("--heads", type=int, default=d.heads, help="TLB: attention heads (default: the core's, 4)")
    p.add_argument(
        "--d-model",
        type=int,
        default=d.d_model,
        help="TLB: stream width (default: max(64, 16 * (hidden // 48)))",
    )
    p.add_argument("--n-modules", type=int, default=d.n_modules, help="assembly: number of modules")
    p.add_argument("--alpha", type=float, default=d.alpha, help="assembly: Euler step dt/tau")
    p.add_argument("--gain", type=float, default=d.gain, help="assembly: cap on each module's ||W||")
    p.add_argument("--coupling", type=float, default=d.coupling, help="assembly: cap on ||L||")
    p.add_argument(
        "--fixed-modules", action="store_true", help="assembly: keep the modules' recurrent weights fixed"
    )


def add_training_arguments(p: argparse.ArgumentParser, d: Any, data_seed_help: str) -> None:
    """Declare the training-loop flags the supervised experiments share, with ``d``'s values as defaults
    (``d`` has ``steps``, ``batch_size``, ``lr``, ``clip``, ``eval_every``, ``data_seed``, ``seeds``,
    ``threads``, ``device`` and ``out``)."""
    p.add_argument("--steps", type=int, default=d.steps, help="optimiser steps (one random batch each)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--clip", type=float, default=d.clip, help="max gradient norm")
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--data-seed", type=int, default=d.data_seed, help=data_seed_help)
    p.add_argument("--seeds", type=int, nargs="+", default=d.seeds, help="one run per seed, in turn")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device)
    p.add_argument("--out", default=d.out, help="folder; each seed writes <out>/seed-<s>/")


def write_curve(rows: list[dict[str, Any]], path: str, significant: int | None = None) -> None:
    """The learning curve so far, one row per evaluation (floats to ``significant`` digits if given),
    replaced whole and atomically after each evaluation, so that a run stopped at any moment leaves a
    complete file."""
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    for r in rows:
        if significant is not None:
            r = {key: f"{v:.{significant}g}" if isinstance(v, float) else v for key, v in r.items()}
        writer.writerow(r)
    atomic_write_bytes(path, buf.getvalue().encode())


def write_result(result: dict[str, Any], out: str) -> str:
    """``<out>/result.json``, written atomically: its presence marks a finished seed (the tables read it,
    resumed blocks skip it), so a run killed while writing must not leave half of one."""
    return str(atomic_write_json(os.path.join(out, "result.json"), result))


def core_kwargs(args: CoreArgs, kind: str) -> dict[str, Any]:
    """The constructor keywords of core ``kind`` taken from ``args`` (none for the LSTM)."""
    if kind == "rims":
        return dict(
            n_units=args.n_units,
            k=args.k,
            cell=args.cell,
            input_key_size=args.input_key_size,
            input_value_size=args.input_value_size,
            input_heads=args.input_heads,
            input_dropout=args.dropout,
            comm_key_size=args.comm_key_size,
            comm_value_size=args.comm_value_size,
            comm_heads=args.comm_heads,
            comm_dropout=args.dropout,
        )
    if kind == "tlb":
        tlb = dict(n_latents=args.n_latents, chunk_size=args.chunk_size, n_layers=args.fast_layers)
        return {
            **tlb,
            **{k: v for k, v in (("n_heads", args.heads), ("d_model", args.d_model)) if v is not None},
        }
    if kind == "assembly":
        return dict(
            n_modules=args.n_modules,
            alpha=args.alpha,
            gain=args.gain,
            coupling=args.coupling,
            fixed_modules=args.fixed_modules,
        )
    return {}


def build_core(
    args: CoreArgs, input_size: int, kind: str | None = None, hidden: int | None = None
) -> nn.Module:
    """Core ``kind`` (default ``args.model``) of width ``hidden`` (default ``args.hidden``) from ``args``."""
    kind = args.model if kind is None else kind
    return make_core(kind, input_size, args.hidden if hidden is None else hidden, **core_kwargs(args, kind))


def n_params(module: nn.Module) -> int:
    """Trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def hidden_step(args: CoreArgs, kind: str) -> int:
    """The hidden sizes core ``kind`` accepts are multiples of this (RIMs: units; assembly: modules)."""
    return {"rims": args.n_units, "assembly": args.n_modules}.get(kind, 1)


def match_hidden(count: Callable[[int], int], target: int, step: int = 1, upper: int = 1 << 14) -> int:
    """The multiple of ``step`` whose ``count(hidden)`` is closest to ``target`` (ties: the smaller).

    ``count`` (parameters of the whole model at a hidden size) must not decrease as the hidden size grows;
    a binary search then needs ~log2(upper / step) model builds instead of one per size.
    """
    lo, hi = 1, max(1, upper // step)  # in units of step
    if count(hi * step) < target:
        raise ValueError(f"no hidden size up to {upper} reaches {target} parameters")
    while lo < hi:  # smallest multiple with count >= target
        mid = (lo + hi) // 2
        if count(mid * step) >= target:
            hi = mid
        else:
            lo = mid + 1
    if lo > 1 and target - count((lo - 1) * step) <= count(lo * step) - target:
        lo -= 1
    closest = count(lo * step)
    if abs(closest - target) > 0.1 * target:  # e.g. a TLB whose d_model floor alone outweighs the target
        raise ValueError(
            f"no hidden size comes within 10% of {target} parameters (the closest, {lo * step}, has "
            f"{closest}): the core's fixed widths set its size; choose them instead (e.g. --d-model)"
        )
    return lo * step


A = TypeVar("A", bound=CoreArgs)


def resolve_hidden(args: A, count_model: Callable[[str, int], int]) -> A:
    """``args`` with ``hidden`` replaced as ``--match-params`` asks (unchanged without it).

    ``count_model(kind, hidden)`` is the parameter count of the task's whole model (core and head), so
    the match is on what is trained, as in the paper's equal-parameter LSTM.
    """
    if args.match_params is None:
        return args
    target = count_model(args.match_params, args.hidden)
    try:
        hidden = match_hidden(
            lambda h: count_model(args.model, h), target, step=hidden_step(args, args.model)
        )
    except ValueError as err:  # the user's choice of flags, not a bug: one line, exit 2
        print(f"error: --match-params {args.match_params} for {args.model}: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    return dataclasses.replace(args, hidden=hidden, matched_from_hidden=args.hidden)


def pick_device(name: str) -> torch.device:
    """``"auto"``: CUDA when present, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
