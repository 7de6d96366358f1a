"""Copying task (RIMs paper, Table 1) on the paper's protocol: train with 50 blanks, test with 200.

A sequence of ``n_copy`` symbols is shown, then ``n_blank`` steps (``n_blank - 1`` blanks and a delimiter);
over the last ``n_copy`` steps the model must output the symbols it saw, and "blank" everywhere else. The
defaults are the authors' copying script's (see docs/results/copying.md): 10 symbols from an alphabet of
8, train with 50 blanks and test with 200, batches of 64, Adam 1e-3, gradient norm clipped at 1.0, loss
over every position, 40,000 steps (their 200 epochs x 200 batches), RIMs of 6 units, 4 active, total
hidden 600. The paper reports cross-entropy 0.00 / 0.00 (train / test) for that RIMs and 0.00 / 3.56 for
an LSTM of 600.

Scoring. Two cross-entropies (nats), each averaged over sequences and positions:
- ``ce_all``, **the paper's metric**: over all ``2 * n_copy + n_blank`` positions (T + 20 in the paper's
  notation), the blank targets included. A model that outputs blanks perfectly but has forgotten the
  symbols scores n_copy * ln(n_symbols) / (2 * n_copy + n_blank) by guessing uniformly (0.30 at 50
  blanks, 0.09 at 200) and more if it is confidently wrong.
- ``ce_copy``: over the copy positions only, the only ones with something to remember (uniform guess:
  ln 8 = 2.08).
Plus per-symbol accuracy on the copy positions and whole-sequence accuracy.

Differences from the authors' script: a fresh batch every step and a zero state at the start of each
sequence (theirs carries the state across batches); attention dropout 0.1 from the paper's Table 3
(their experiment script passes 0.5).

Run (``--device cuda`` for the paper's size; on a CPU pass a smaller ``--hidden`` and ``--steps``):
    python experiments/copying.py --model rims --seeds 1 2 3 --device cuda --out runs/copying/paper/rims600
    python experiments/copying.py --model lstm --seeds 1 2 3 --device cuda --out runs/copying/paper/lstm600
    python experiments/copying.py --model lstm --match-params rims --seeds 1 2 3 --device cuda \
        --out runs/copying/paper/lstm-eq          # an LSTM with as many parameters as the RIMs
    python experiments/paper_table.py copying runs/copying/paper/*   # the table beside the paper's
Each seed writes ``<out>/seed-<s>/{result.json,curve.csv,curve.png}``.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from core_options import (  # noqa: E402
    CoreArgs,
    add_core_arguments,
    build_core,
    n_params,
    pick_device,
    resolve_hidden,
    write_curve,
    write_result,
)
from torch import Tensor
from tqdm import tqdm

from rims_rl.copying import CopyingModel, copying_batch  # noqa: E402


@dataclass
class Args(CoreArgs):
    """Command-line arguments; defaults are the paper's protocol and size (a GPU run)."""

    train_blank: int = 50
    test_blank: int = 200
    n_copy: int = 10
    n_symbols: int = 8
    steps: int = 40_000
    batch_size: int = 64
    lr: float = 1e-3
    clip: float = 1.0
    loss_on: str = "all"
    eval_every: int = 500
    eval_batch: int = 256
    seeds: list[int] = field(default_factory=lambda: [1])
    threads: int = 1
    device: str = "auto"
    out: str = "runs/copying"


def parse_args(argv: list[str] | None = None) -> Args:
    """Parse ``argv`` (``sys.argv[1:]`` if None) into :class:`Args`."""
    d = Args()
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    add_core_arguments(p, d)
    p.add_argument("--train-blank", type=int, default=d.train_blank, help="n_blank while training")
    p.add_argument("--test-blank", type=int, default=d.test_blank, help="n_blank of the test sequences")
    p.add_argument("--n-copy", type=int, default=d.n_copy, help="symbols to copy")
    p.add_argument("--n-symbols", type=int, default=d.n_symbols, help="alphabet size")
    p.add_argument("--steps", type=int, default=d.steps, help="optimiser steps (one fresh batch each)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--clip", type=float, default=d.clip, help="max gradient norm")
    p.add_argument("--loss-on", choices=("all", "copy"), default=d.loss_on, help="positions in the loss")
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--eval-batch", type=int, default=d.eval_batch, help="sequences per evaluation")
    p.add_argument("--seeds", type=int, nargs="+", default=d.seeds, help="one run per seed, in turn")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device)
    p.add_argument("--out", default=d.out, help="folder; each seed writes <out>/seed-<s>/")
    return Args(**vars(p.parse_args(argv)))


def build_model(args: Args, kind: str | None = None, hidden: int | None = None) -> CopyingModel:
    """The core (``args.model`` at ``args.hidden`` unless given), with one-hot input and a linear head."""
    return CopyingModel(build_core(args, args.n_symbols + 2, kind, hidden), args.n_symbols)


def resolve_args(args: Args) -> Args:
    """``args`` with ``--match-params`` applied: the hidden size is counted on the whole model."""
    return resolve_hidden(args, lambda kind, h: n_params(build_model(args, kind, h)))


def loss_fn(logits: Tensor, targets: Tensor, n_copy: int, on: str) -> Tensor:
    """Mean cross-entropy over all positions (``on="all"``) or the last ``n_copy`` ones (``"copy"``)."""
    if on == "copy":
        logits, targets = logits[-n_copy:], targets[-n_copy:]
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def cross_entropies(logits: Tensor, targets: Tensor, n_copy: int) -> dict[str, float]:
    """``ce_all`` (the paper's metric: every position) and ``ce_copy`` (the last ``n_copy`` positions).

    logits [T, B, C], targets [T, B]; each is the mean over sequences and positions, in nats.
    """
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
    return {"ce_all": ce.mean().item(), "ce_copy": ce[-n_copy:].mean().item()}


@torch.no_grad()
def evaluate(model: CopyingModel, inputs: Tensor, targets: Tensor, n_copy: int) -> dict[str, float]:
    """Both cross-entropies and the accuracies on one fixed batch, in eval mode."""
    was_training = model.training
    model.eval()
    logits = model(inputs)
    model.train(was_training)
    correct = logits[-n_copy:].argmax(-1) == targets[-n_copy:]
    metrics: dict[str, float] = {
        **cross_entropies(logits, targets, n_copy),
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


def plot_curve(rows: list[dict[str, float]], args: Args, seed: int, path: str) -> None:
    """Both cross-entropies against step, at the train and the test delay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), dpi=100)
    for ax, metric, title in (
        (axes[0], "ce_all", "all positions (the paper's metric)"),
        (axes[1], "ce_copy", "copy positions"),
    ):
        ax.plot(steps, [r[f"train_{metric}"] for r in rows], label=f"{args.train_blank} blanks (train)")
        ax.plot(steps, [r[f"test_{metric}"] for r in rows], label=f"{args.test_blank} blanks (test)")
        ax.set_xlabel("training step")
        ax.set_ylabel("cross-entropy (nats)")
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set_title(title, fontsize=9)
    axes[1].axhline(math.log(args.n_symbols), color="grey", ls=":", label=f"ln {args.n_symbols}")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"copying: {args.model}, hidden {args.hidden}, seed {seed}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_seed(args: Args, seed: int, out: str) -> dict[str, object]:
    """Train one seed, evaluate on train- and test-length delays, write result.json / curve.csv / .png."""
    random.seed(seed)
    torch.manual_seed(seed)
    device = pick_device(args.device)
    data_gen = torch.Generator().manual_seed(seed)  # training batches
    eval_gen = torch.Generator().manual_seed(10_000 + seed)  # fixed evaluation batches

    model = build_model(args).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    def batch(n: int, n_blank: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        return copying_batch(n, n_blank, args.n_copy, args.n_symbols, generator=gen, device=device)

    eval_train = batch(args.eval_batch, args.train_blank, eval_gen)
    eval_test = batch(args.eval_batch, args.test_blank, eval_gen)

    os.makedirs(out, exist_ok=True)
    rows: list[dict[str, float]] = []
    start = time.time()
    train_time = 0.0
    loss = grad_norm = torch.tensor(float("nan"))
    bar = tqdm(range(args.steps + 1), desc=f"{args.model} h{args.hidden} s{seed}", mininterval=5.0)
    for step in bar:  # step 0 only evaluates: the curve starts at the untrained model
        if step > 0:
            t0 = time.time()
            inputs, targets = batch(args.batch_size, args.train_blank, data_gen)
            loss = loss_fn(model(inputs), targets, args.n_copy, args.loss_on)
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
                    **{f"train_{k}": tr[k] for k in ("ce_all", "ce_copy", "acc_symbol")},
                    **{f"test_{k}": te[k] for k in ("ce_all", "ce_copy", "acc_symbol")},
                    "wall_s": time.time() - start,
                }
            )
            write_curve(rows, os.path.join(out, "curve.csv"), significant=5)
            bar.set_postfix(
                loss=f"{loss.item():.3f}", train=f"{tr['ce_all']:.3f}", test=f"{te['ce_all']:.3f}"
            )

    final_train = evaluate(model, *eval_train, args.n_copy)
    final_test = evaluate(model, *eval_test, args.n_copy)
    wall = time.time() - start
    plot_curve(rows, args, seed, os.path.join(out, "curve.png"))
    n_copy, n_train = args.n_copy, 2 * args.n_copy + args.train_blank
    result: dict[str, object] = {
        "task": "copying",
        "args": asdict(args),
        "seed": seed,
        "n_params": n_params(model),
        "core": f"{type(model.core).__name__}({model.core.extra_repr()})",
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "wall_s": round(wall, 1),
        "train_wall_s": round(train_time, 1),
        "chance_ce_copy": math.log(args.n_symbols),
        "chance_ce_all_train": n_copy * math.log(args.n_symbols) / n_train,
        "chance_ce_all_test": n_copy * math.log(args.n_symbols) / (2 * n_copy + args.test_blank),
        "train": {"n_blank": args.train_blank, **final_train},
        "test": {"n_blank": args.test_blank, **final_test},
        "note": "ce_all: mean cross-entropy (nats) over all 2*n_copy+n_blank positions (the paper's metric); "
        "ce_copy: over the last n_copy positions; acc_symbol: per-symbol accuracy on copy positions; "
        "acc_sequence: all symbols right; chance_*: uniform guess on the copy positions, blanks right.",
    }
    write_result(result, out)
    print(
        f"{args.model} h{args.hidden} seed {seed}: "
        f"train({args.train_blank}) ce_all {final_train['ce_all']:.4f} "
        f"ce_copy {final_train['ce_copy']:.4f} | test({args.test_blank}) ce_all {final_test['ce_all']:.4f} "
        f"ce_copy {final_test['ce_copy']:.4f} acc {final_test['acc_symbol']:.3f} | {wall:.0f} s"
    )
    return result


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    """One run per seed, each into ``<out>/seed-<s>/``; returns their results."""
    args = resolve_args(parse_args(argv))
    torch.set_num_threads(args.threads)
    if args.match_params is not None:
        print(f"--match-params {args.match_params}: {args.model} hidden {args.hidden}")
    return [run_seed(args, seed, os.path.join(args.out, f"seed-{seed}")) for seed in args.seeds]


if __name__ == "__main__":
    main()
