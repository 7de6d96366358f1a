"""Sequential digits at several resolutions (the RIMs paper's Table 2, multi-resolution sequential MNIST).

The paper trains on MNIST at 14x14, feeding one pixel per step, and tests at 16x16, 19x19 and 24x24: the
same digits as longer sequences. MNIST cannot be downloaded here (and a package that downloads at run time
is not allowed), so this script uses the 1,797 8x8 digits that scikit-learn ships
(``sklearn.datasets.load_digits``, values 0-16, scaled to [0, 1]).

Mapping. Every image is resampled from its 8x8 source with ``torch.nn.functional.interpolate`` (bilinear,
``align_corners=False``, antialiased) to the training size and to each test size. The default test sizes
keep the paper's ratios to the training size (16/14, 19/14, 24/14): with the default training size 8 (the
source itself, 64 steps) they are round(8 * 16/14) = 9, round(8 * 19/14) = 11 and round(8 * 24/14) = 14
(81, 121 and 196 steps). Pixels are fed row by row, one per step (input size 1); the class is read from
the core's output at the last step through a linear layer.

Data split: a fixed permutation (``--data-seed``, the same for every model and training seed) puts 80% of
the digits in the training split and 20% in the held-out split on which every accuracy is measured.

Run (``--device cuda`` for the paper's RIMs size, hidden 600):
    python experiments/seq_digits.py --model rims --hidden 60 --seeds 1 2 3 --out runs/digits/rims
    python experiments/seq_digits.py --model lstm --hidden 60 --seeds 1 2 3 --out runs/digits/lstm
    python experiments/paper_table.py digits runs/digits/*
Each seed writes ``<out>/seed-<s>/{result.json,curve.csv}``.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from core_options import (  # noqa: E402
    CoreArgs,
    add_core_arguments,
    add_training_arguments,
    build_core,
    n_params,
    pick_device,
    resolve_hidden,
    write_curve,
    write_result,
)
from torch import Tensor, nn
from tqdm import tqdm

#: The paper's training size and test sizes; default test sizes keep these ratios.
PAPER_TRAIN_SIZE, PAPER_TEST_SIZES = 14, (16, 19, 24)


@dataclass
class Args(CoreArgs):
    """Command-line arguments; the core defaults are the paper's (RIMs 6 units, k 4, hidden 600)."""

    train_size: int = 8
    test_sizes: list[int] | None = None  # None: the paper's ratios applied to train_size
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    clip: float = 1.0
    eval_every: int = 250
    data_seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [1])
    threads: int = 1
    device: str = "auto"
    out: str = "runs/digits"


def paper_test_sizes(train_size: int) -> list[int]:
    """The test sizes at the paper's ratios to its training size (16/14, 19/14, 24/14), rounded."""
    return [round(train_size * s / PAPER_TRAIN_SIZE) for s in PAPER_TEST_SIZES]


def parse_args(argv: list[str] | None = None) -> Args:
    """Parse ``argv`` (``sys.argv[1:]`` if None) into :class:`Args` (test sizes filled in)."""
    d = Args()
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    add_core_arguments(p, d)
    p.add_argument("--train-size", type=int, default=d.train_size, help="image side while training")
    p.add_argument("--test-sizes", type=int, nargs="+", default=d.test_sizes, help="default: paper ratios")
    add_training_arguments(p, d, data_seed_help="train/held-out split")
    args = Args(**vars(p.parse_args(argv)))
    if args.test_sizes is None:
        args.test_sizes = paper_test_sizes(args.train_size)
    return args


def load_digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's 1,797 digits: images [N, 8, 8] in [0, 1] and labels [N] (long)."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as err:  # an optional extra: say which one
        raise ImportError("seq_digits needs scikit-learn: pip install -e '.[paper]'") from err
    data = sk_load_digits()
    images = torch.tensor(data.images, dtype=torch.float32) / 16.0
    return images, torch.tensor(data.target, dtype=torch.long)


def resample(images: Tensor, size: int) -> Tensor:
    """[N, s, s] -> [N, size, size], bilinear (align_corners=False, antialiased when shrinking)."""
    out = F.interpolate(
        images[:, None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return out[:, 0]


def split(n: int, data_seed: int, frac_train: float = 0.8) -> tuple[Tensor, Tensor]:
    """Indices of the training and held-out splits: a fixed permutation of ``range(n)``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(data_seed))
    n_train = int(round(frac_train * n))
    return perm[:n_train], perm[n_train:]


def as_sequence(images: Tensor) -> Tensor:
    """[N, s, s] -> [s * s, N, 1]: one pixel per step, row by row (time-major, as the cores take it)."""
    return images.flatten(1).T.unsqueeze(-1).contiguous()


class DigitsModel(nn.Module):
    """Pixels one at a time -> recurrent core -> linear classifier on the last step's output."""

    def __init__(self, core: nn.Module, n_classes: int = 10) -> None:
        super().__init__()
        self.core = core
        # The output width, not hidden_size (a core's state width, wider for the TLB); torch types an
        # unknown Module attribute as Tensor | Module (its __getattr__), cores set an int.
        self.head = nn.Linear(cast(int, core.output_size), n_classes)

    def forward(self, pixels: Tensor) -> Tensor:
        """pixels [T, B, 1] -> logits [B, n_classes]."""
        out, _ = self.core(pixels)
        return self.head(out[-1])


def build_model(args: Args, kind: str | None = None, hidden: int | None = None) -> DigitsModel:
    """The core (``args.model`` at ``args.hidden`` unless given) with a linear classifier."""
    return DigitsModel(build_core(args, 1, kind, hidden))


@torch.no_grad()
def accuracy(model: DigitsModel, images: Tensor, labels: Tensor, batch: int = 512) -> float:
    """Fraction classified right, in eval mode, ``batch`` images at a time."""
    was_training = model.training
    model.eval()
    right = 0
    for i in range(0, len(labels), batch):
        logits = model(as_sequence(images[i : i + batch]))
        right += int((logits.argmax(-1) == labels[i : i + batch]).sum())
    model.train(was_training)
    return right / len(labels)


@torch.no_grad()
def cross_entropy(model: DigitsModel, images: Tensor, labels: Tensor) -> float:
    """Mean cross-entropy (nats), in eval mode: the training objective, measured on held-out digits."""
    was_training = model.training
    model.eval()
    ce = F.cross_entropy(model(as_sequence(images)), labels).item()
    model.train(was_training)
    return ce


def run_seed(args: Args, seed: int, out: str) -> dict[str, object]:
    """Train one seed at ``train_size``, measure held-out accuracy at every size, write result.json."""
    assert args.test_sizes is not None
    random.seed(seed)
    torch.manual_seed(seed)
    device = pick_device(args.device)
    images, labels = load_digits()
    train_idx, test_idx = split(len(labels), args.data_seed)
    sizes = [args.train_size, *args.test_sizes]
    held_out = {s: resample(images[test_idx], s).to(device) for s in sizes}
    test_labels = labels[test_idx].to(device)
    train_images = resample(images[train_idx], args.train_size).to(device)
    train_labels = labels[train_idx].to(device)

    model = build_model(args).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(seed)

    os.makedirs(out, exist_ok=True)
    rows: list[dict[str, float]] = []
    start = time.time()
    train_time = 0.0
    loss = grad_norm = torch.tensor(float("nan"))
    bar = tqdm(range(args.steps + 1), desc=f"{args.model} h{args.hidden} s{seed}", mininterval=5.0)
    for step in bar:  # step 0 only evaluates: the curve starts at the untrained model
        if step > 0:
            t0 = time.time()
            idx = torch.randint(0, len(train_labels), (args.batch_size,), generator=gen).to(device)
            loss = F.cross_entropy(model(as_sequence(train_images[idx])), train_labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            optimizer.step()
            train_time += time.time() - t0
        if step % args.eval_every == 0 or step == args.steps:
            accs = {s: accuracy(model, held_out[s], test_labels) for s in sizes}
            ce = cross_entropy(model, held_out[args.train_size], test_labels)
            rows.append(
                {"step": step, "loss": loss.item(), "grad_norm": grad_norm.item(), "ce_held_out": ce}
                | {f"acc_{s}": a for s, a in accs.items()}
                | {"wall_s": time.time() - start}
            )
            write_curve(rows, os.path.join(out, "curve.csv"))
            bar.set_postfix(loss=f"{loss.item():.3f}", **{f"acc{s}": f"{a:.2f}" for s, a in accs.items()})

    final = {str(s): accuracy(model, held_out[s], test_labels) for s in sizes}
    wall = time.time() - start
    result: dict[str, object] = {
        "task": "seq_digits",
        "args": asdict(args),
        "seed": seed,
        "n_params": n_params(model),
        "core": f"{type(model.core).__name__}({model.core.extra_repr()})",
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "wall_s": round(wall, 1),
        "train_wall_s": round(train_time, 1),
        "n_train": len(train_idx),
        "n_held_out": len(test_idx),
        "accuracy": final,
        "ce_held_out": rows[-1]["ce_held_out"],
        "train_accuracy": accuracy(model, train_images, train_labels),
        "note": "accuracy: held-out split, keyed by image side (the first is the training size); "
        "ce_held_out: held-out cross-entropy at the training size; "
        "train_accuracy: training split at the training size.",
    }
    write_result(result, out)
    print(
        f"{args.model} h{args.hidden} seed {seed}: "
        + " ".join(f"{s}x{s} {a:.3f}" for s, a in final.items())
        + f" | {wall:.0f} s"
    )
    return result


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    """One run per seed, each into ``<out>/seed-<s>/``; returns their results."""
    args = parse_args(argv)
    args = resolve_hidden(args, lambda kind, h: n_params(build_model(args, kind, h)))
    torch.set_num_threads(args.threads)
    if args.match_params is not None:
        print(f"--match-params {args.match_params}: {args.model} hidden {args.hidden}")
    return [run_seed(args, seed, os.path.join(args.out, f"seed-{seed}")) for seed in args.seeds]


if __name__ == "__main__":
    main()
