"""Copying task (RIMs paper, Table 1): train with short delays, test with long ones.

A sequence of ``n_copy`` symbols is shown, then ``n_blank`` blank steps ending in a delimiter; over the
last ``n_copy`` steps the model must output the symbols it saw. We train on ``--train-blank`` blanks and
measure cross-entropy on ``--test-blank`` blanks, which tests whether memory generalises to a longer
delay. The paper reports 0.00 / 0.00 for RIMs (6 units, k=4, h=600) and 0.00 / 3.56 for an LSTM of 600.

Scoring. The headline number is the cross-entropy (nats, averaged over sequences and positions) on the
*copy positions* only -- the last ``n_copy`` steps, the only ones where there is anything to remember.
A model that has forgotten everything scores ln(n_symbols) there (2.08 for 8 symbols) if it guesses
uniformly, more if it is confidently wrong. We also report the cross-entropy averaged over *all*
positions (blank targets included, the standard formulation of the loss; it is diluted by the many easy
blank positions), per-symbol accuracy on the copy positions and whole-sequence accuracy.

Training loss: cross-entropy over all positions (``--loss-on all``, the standard task: the model must
also output "blank" while waiting) or over the copy positions only (``--loss-on copy``).

Run (CPU defaults are small; see docs/results/copying.md for the commands behind the reported numbers):
    python experiments/copying.py --model rims --out runs/copying/rims
    python experiments/copying.py --model lstm --out runs/copying/lstm
    python experiments/copying.py --model tlb --out runs/copying/tlb        # Temporal Latent Bottleneck
    python experiments/copying.py --model assembly --out runs/copying/asm   # stable assembly of CT-RNNs
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from rims_rl.copying import CopyingModel, copying_batch, make_core
from rims_rl.cores import core_names


@dataclass
class Args:
    """Command-line arguments (defaults: a small setting that trains on a CPU in minutes)."""

    model: str = "rims"
    hidden: int = 120
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
    heads: int = 2
    d_model: int | None = None
    n_modules: int = 6
    alpha: float = 0.2
    gain: float = 0.9
    coupling: float = 0.5
    train_blank: int = 50
    test_blank: int = 200
    n_copy: int = 10
    n_symbols: int = 8
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    clip: float = 1.0
    loss_on: str = "all"
    eval_every: int = 100
    eval_batch: int = 256
    seed: int = 1
    threads: int = 1
    device: str = "auto"
    out: str = "runs/copying"


def parse_args(argv: list[str] | None = None) -> Args:
    """Parse ``argv`` (``sys.argv[1:]`` if None) into :class:`Args`."""
    d = Args()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=core_names(), default=d.model)
    p.add_argument("--hidden", type=int, default=d.hidden, help="total hidden size (RIMs: n_units * unit)")
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
    p.add_argument("--heads", type=int, default=d.heads, help="TLB: attention heads")
    p.add_argument("--d-model", type=int, default=d.d_model, help="TLB: stream width (default: fit state)")
    p.add_argument("--n-modules", type=int, default=d.n_modules, help="assembly: number of modules")
    p.add_argument("--alpha", type=float, default=d.alpha, help="assembly: Euler step dt/tau")
    p.add_argument("--gain", type=float, default=d.gain, help="assembly: cap on each module's ||W||")
    p.add_argument("--coupling", type=float, default=d.coupling, help="assembly: cap on ||L||")
    p.add_argument("--train-blank", type=int, default=d.train_blank)
    p.add_argument("--test-blank", type=int, default=d.test_blank)
    p.add_argument("--n-copy", type=int, default=d.n_copy)
    p.add_argument("--n-symbols", type=int, default=d.n_symbols)
    p.add_argument("--steps", type=int, default=d.steps, help="optimiser steps (one fresh batch each)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--clip", type=float, default=d.clip, help="max gradient norm")
    p.add_argument("--loss-on", choices=("all", "copy"), default=d.loss_on, help="positions in the loss")
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--eval-batch", type=int, default=d.eval_batch, help="sequences per evaluation")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device)
    p.add_argument("--out", default=d.out, help="folder for result.json, curve.csv, curve.png")
    return Args(**vars(p.parse_args(argv)))


def build_model(args: Args) -> CopyingModel:
    """The chosen core, wrapped with one-hot input and a linear head (see rims_rl.copying)."""
    input_size = args.n_symbols + 2  # symbols, blank, delimiter
    core_kwargs: dict[str, object] = {}
    if args.model == "rims":
        core_kwargs = dict(
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
    elif args.model == "tlb":
        core_kwargs = dict(
            n_latents=args.n_latents,
            chunk_size=args.chunk_size,
            n_layers=args.fast_layers,
            n_heads=args.heads,
            d_model=args.d_model,
        )
    elif args.model == "assembly":
        core_kwargs = dict(n_modules=args.n_modules, alpha=args.alpha, gain=args.gain, coupling=args.coupling)
    core = make_core(args.model, input_size, args.hidden, **core_kwargs)
    return CopyingModel(core, args.n_symbols)


def loss_fn(logits: Tensor, targets: Tensor, n_copy: int, on: str) -> Tensor:
    """Mean cross-entropy over all positions (``on="all"``) or the last ``n_copy`` ones (``"copy"``)."""
    if on == "copy":
        logits, targets = logits[-n_copy:], targets[-n_copy:]
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


@torch.no_grad()
def evaluate(model: CopyingModel, inputs: Tensor, targets: Tensor, n_copy: int) -> dict[str, float]:
    """Cross-entropy (copy positions / all positions) and accuracies on one fixed batch, in eval mode."""
    was_training = model.training
    model.eval()
    logits = model(inputs)
    model.train(was_training)
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
    correct = logits[-n_copy:].argmax(-1) == targets[-n_copy:]
    metrics = {
        "ce_copy": ce[-n_copy:].mean().item(),
        "ce_all": ce.mean().item(),
        "acc_symbol": correct.float().mean().item(),
        "acc_sequence": correct.all(0).float().mean().item(),
    }
    core = model.core
    mask = getattr(core, "last_active_mask", None)
    if mask is not None:  # RIMs: how often each unit was active, per phase of the sequence
        mask = mask.float()  # [T, B, n_units]
        metrics["active_frac_symbols"] = mask[:n_copy].mean((0, 1)).tolist()
        metrics["active_frac_blanks"] = mask[n_copy:-n_copy].mean((0, 1)).tolist()
        metrics["active_frac_copy"] = mask[-n_copy:].mean((0, 1)).tolist()
    stats = getattr(core, "stats", None)
    if callable(stats):  # TLB: slow-attention entropy; assembly: contraction margin
        metrics.update(stats())
    return metrics


def write_csv(rows: list[dict[str, float]], path: str) -> None:
    """The learning curve so far, one row per evaluation."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({key: f"{v:.5g}" if isinstance(v, float) else v for key, v in r.items()})


def plot_curve(rows: list[dict[str, float]], args: Args, path: str) -> None:
    """Copy-position cross-entropy against step, train and test delay, with the chance level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.5), dpi=100)
    ax.plot(steps, [r["train_ce_copy"] for r in rows], label=f"{args.train_blank} blanks (train)")
    ax.plot(steps, [r["test_ce_copy"] for r in rows], label=f"{args.test_blank} blanks (test)")
    ax.axhline(math.log(args.n_symbols), color="grey", ls=":", label=f"ln {args.n_symbols} (uniform guess)")
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy, copy positions (nats)")
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_title(f"copying: {args.model}, hidden {args.hidden}, seed {args.seed}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Train, evaluate on train- and test-length delays, write result.json / curve.csv / curve.png."""
    args = parse_args(argv)

    # Seeding and device.
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    data_gen = torch.Generator().manual_seed(args.seed)  # training batches
    eval_gen = torch.Generator().manual_seed(10_000 + args.seed)  # fixed evaluation batches

    # Model and optimiser.
    model = build_model(args).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    # Fixed evaluation sets: one at the training delay, one at the (longer) test delay.
    def batch(n: int, n_blank: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        return copying_batch(n, n_blank, args.n_copy, args.n_symbols, generator=gen, device=device)

    eval_train = batch(args.eval_batch, args.train_blank, eval_gen)
    eval_test = batch(args.eval_batch, args.test_blank, eval_gen)

    # Training loop: a fresh random batch each step, clipped Adam updates, periodic evaluation.
    os.makedirs(args.out, exist_ok=True)
    rows: list[dict[str, float]] = []
    start = time.time()
    train_time = 0.0
    bar = tqdm(range(1, args.steps + 1), desc=f"{args.model} h{args.hidden}", mininterval=2.0)
    for step in bar:
        t0 = time.time()
        inputs, targets = batch(args.batch_size, args.train_blank, data_gen)
        logits = model(inputs)
        loss = loss_fn(logits, targets, args.n_copy, args.loss_on)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        train_time += time.time() - t0

        if step % args.eval_every == 0 or step == args.steps:
            tr = evaluate(model, *eval_train, args.n_copy)
            te = evaluate(model, *eval_test, args.n_copy)
            rows.append(
                {
                    "step": step,
                    "loss": loss.item(),
                    "grad_norm": grad_norm.item(),
                    "train_ce_copy": tr["ce_copy"],
                    "train_acc_symbol": tr["acc_symbol"],
                    "test_ce_copy": te["ce_copy"],
                    "test_acc_symbol": te["acc_symbol"],
                    "wall_s": time.time() - start,
                }
            )
            write_csv(rows, os.path.join(args.out, "curve.csv"))
            bar.set_postfix(
                loss=f"{loss.item():.3f}", ce_train=f"{tr['ce_copy']:.3f}", ce_test=f"{te['ce_copy']:.3f}"
            )

    # Final evaluation on the fixed sets: the numbers we report.
    final_train = evaluate(model, *eval_train, args.n_copy)
    final_test = evaluate(model, *eval_test, args.n_copy)
    wall = time.time() - start

    # Outputs: curve.csv (also written as training goes), curve.png, result.json.
    write_csv(rows, os.path.join(args.out, "curve.csv"))
    plot_curve(rows, args, os.path.join(args.out, "curve.png"))
    result: dict[str, object] = {
        "task": "copying",
        "args": asdict(args),
        "n_params": n_params,
        "core": f"{type(model.core).__name__}({model.core.extra_repr()})",
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "wall_s": round(wall, 1),
        "train_wall_s": round(train_time, 1),
        "chance_ce_copy": math.log(args.n_symbols),
        "train": {"n_blank": args.train_blank, **final_train},
        "test": {"n_blank": args.test_blank, **final_test},
        "note": "ce_copy: mean cross-entropy (nats) over the last n_copy positions; ce_all: over all "
        "positions; acc_symbol: per-symbol accuracy on copy positions; acc_sequence: all symbols right.",
    }
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(
        f"{args.model} h{args.hidden}: train({args.train_blank}) ce_copy {final_train['ce_copy']:.4f} "
        f"acc {final_train['acc_symbol']:.3f} | test({args.test_blank}) ce_copy {final_test['ce_copy']:.4f} "
        f"acc {final_test['acc_symbol']:.3f} | {wall:.0f} s"
    )
    return result


if __name__ == "__main__":
    main()
