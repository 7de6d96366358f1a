"""Bouncing balls (the RIMs paper's Section 4.3), scaled to a CPU: next-frame prediction and rollouts.

The paper trains on videos of 4 balls bouncing in a box (the R-NEM datasets of van Steenkiste et al.,
64x64 binary frames, about 50 frames per video) and tests on 6-8 balls and on 3 balls behind an occluding
curtain, scoring the binary cross-entropy (BCE) of frames the model rolls out on its own after seeing the
first frames. Those datasets are downloads; this script simulates its own, in numpy:

* **Physics.** Balls of radius ``radius`` (box side 1) and equal mass move at constant speed ``speed``
  per frame, in ``substeps`` Euler sub-steps per frame. They reflect elastically off the walls, and two
  touching balls that approach exchange the velocity components along the line of their centres (an
  elastic collision of equal masses), then are pushed apart to touching.
* **Frames.** ``size`` x ``size`` binary pixels: a pixel is on where its centre lies within ``radius`` of a
  ball's centre. The curtain variant hides a vertical band of width ``curtain`` (a fraction of the side,
  at a random place per video): pixels there are off in the inputs and in the targets, as a camera
  would see it.
* **Splits.** Training videos hold ``train_balls`` balls; the test sets are ``train_balls`` balls (in
  distribution), ``ood_balls`` (one count per video, drawn uniformly: the paper's 6-8) and the curtain
  with ``curtain_balls`` balls. Each split has its own numpy seed, the same for every model and training
  seed (``--data-seed``).

Model: frame -> conv encoder (2 stride-2 convolutions, linear to ``embed``) -> recurrent core (any
registered one) -> linear + 2 transposed convolutions -> logits of the next frame. The model reads the
first ``context`` frames of a video, then its own predicted probabilities: in training (BCE over every
predicted frame, gradients through its own predictions) as in evaluation. A model trained only on
next frames from true inputs (teacher forcing) drifts off within a few rolled-out frames at this size.
The score on each test split is the BCE summed over a frame's pixels, per rolled-out frame
(``context..frames-1``, lower is better), beside the best constant predictor's (every pixel on with
the split's on-pixel rate: what a model that lost every ball scores).

Run (``--device cuda`` for larger frames):
    python experiments/bouncing_balls.py --model rims --hidden 120 --seeds 1 2 3 --out runs/balls/rims
    python experiments/bouncing_balls.py --model lstm --hidden 120 --seeds 1 2 3 --out runs/balls/lstm
    python experiments/paper_table.py balls runs/balls/*
Each seed writes ``<out>/seed-<s>/{result.json,curve.csv}``.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import cast

import numpy as np
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


@dataclass
class Args(CoreArgs):
    """Command-line arguments; the core defaults are the paper's (RIMs 6 units, k 4)."""

    hidden: int = 120
    size: int = 32
    radius: float = 0.08
    speed: float = 0.04
    substeps: int = 4
    frames: int = 30
    context: int = 10
    train_balls: int = 4
    ood_balls: list[int] = field(default_factory=lambda: [6, 7, 8])
    curtain_balls: int = 3
    curtain: float = 0.25
    n_train: int = 4000
    n_test: int = 256
    embed: int = 128
    steps: int = 2000
    batch_size: int = 32
    lr: float = 7e-4
    clip: float = 1.0
    eval_every: int = 250
    data_seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [1])
    threads: int = 1
    device: str = "auto"
    out: str = "runs/balls"


def parse_args(argv: list[str] | None = None) -> Args:
    """Parse ``argv`` (``sys.argv[1:]`` if None) into :class:`Args`, with one clear error per bad value."""
    d = Args()
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    add_core_arguments(p, d)
    p.add_argument("--size", type=int, default=d.size, help="frame side in pixels")
    p.add_argument("--radius", type=float, default=d.radius, help="ball radius (box side 1)")
    p.add_argument("--speed", type=float, default=d.speed, help="distance per frame (box side 1)")
    p.add_argument("--substeps", type=int, default=d.substeps, help="physics sub-steps per frame")
    p.add_argument("--frames", type=int, default=d.frames, help="frames per video")
    p.add_argument("--context", type=int, default=d.context, help="frames read before the rollout")
    p.add_argument("--train-balls", type=int, default=d.train_balls)
    p.add_argument("--ood-balls", type=int, nargs="+", default=d.ood_balls, help="one count per test video")
    p.add_argument("--curtain-balls", type=int, default=d.curtain_balls)
    p.add_argument("--curtain", type=float, default=d.curtain, help="occluded band width (fraction)")
    p.add_argument("--n-train", type=int, default=d.n_train, help="training videos")
    p.add_argument("--n-test", type=int, default=d.n_test, help="videos per test split")
    p.add_argument("--embed", type=int, default=d.embed, help="encoder output = core input width")
    add_training_arguments(p, d, data_seed_help="the videos of every split")
    args = Args(**vars(p.parse_args(argv)))
    if args.size % 4 or args.size < 8:
        p.error(f"--size must be a multiple of 4 and >= 8 (two stride-2 convolutions), got {args.size}")
    if not 0 < args.context < args.frames:
        p.error(f"--context must be between 1 and --frames - 1 = {args.frames - 1}, got {args.context}")
    if not 0 < args.radius < 0.25 or not 0 < args.speed < args.radius:
        p.error("--radius must be in (0, 0.25) and --speed in (0, radius): a ball may not skip a ball")
    if not 0 < args.curtain < 1:
        p.error(f"--curtain must be a fraction of the frame in (0, 1), got {args.curtain}")
    for n in (args.train_balls, args.curtain_balls, *args.ood_balls):
        if not 1 <= n <= max_balls(args.radius):
            p.error(f"ball counts must be 1..{max_balls(args.radius)} at radius {args.radius}, got {n}")
    return args


def max_balls(radius: float) -> int:
    """How many balls fit at random without a long search: a quarter of the box's area covered at most."""
    return max(1, int(0.25 / (math.pi * radius**2)))


def simulate(
    n_videos: int, n_balls: int | list[int], frames: int, radius: float, speed: float, substeps: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:  # fmt: skip
    """Centres of every ball in every frame: one [frames, n, 2] array per video (box [0, 1]^2).

    ``n_balls`` as a list draws each video's count from it. Videos are simulated together, grouped by
    their ball count; starts are placed without overlap by rejection.
    """
    counts = rng.choice(n_balls, size=n_videos) if isinstance(n_balls, list) else np.full(n_videos, n_balls)
    videos: list[np.ndarray] = [np.empty(0)] * n_videos
    for n in np.unique(counts):
        idx = np.flatnonzero(counts == n)
        pos = np.stack([_place(int(n), radius, rng) for _ in idx])  # [V, n, 2]
        angle = rng.uniform(0.0, 2.0 * math.pi, size=(len(idx), int(n)))
        vel = speed * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
        track = np.empty((frames, len(idx), int(n), 2))
        for t in range(frames):
            track[t] = pos
            for _ in range(substeps):
                pos, vel = _substep(pos, vel, radius, 1.0 / substeps)
        for j, v in enumerate(idx):
            videos[v] = track[:, j]
    return videos


def _place(n: int, radius: float, rng: np.random.Generator) -> np.ndarray:
    pos = np.empty((n, 2))
    for i in range(n):
        for _ in range(10_000):
            p = rng.uniform(radius, 1.0 - radius, size=2)
            if i == 0 or np.min(np.linalg.norm(pos[:i] - p, axis=1)) >= 2.0 * radius:
                pos[i] = p
                break
        else:  # max_balls keeps the coverage low enough that this does not happen
            raise RuntimeError(f"could not place {n} balls of radius {radius} without overlap")
    return pos


def _substep(pos: np.ndarray, vel: np.ndarray, radius: float, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """One Euler sub-step of all videos at once: move, reflect off the walls, collide pairs elastically."""
    pos = pos + vel * dt
    vel = vel.copy()
    low, high = pos < radius, pos > 1.0 - radius
    pos = np.where(low, 2.0 * radius - pos, np.where(high, 2.0 * (1.0 - radius) - pos, pos))
    vel = np.where(low | high, -vel, vel)
    n = pos.shape[1]
    for i in range(n):
        for j in range(i + 1, n):
            d = pos[:, j] - pos[:, i]  # [V, 2]
            dist = np.linalg.norm(d, axis=1)
            normal = d / np.maximum(dist, 1e-12)[:, None]
            closing = np.sum((vel[:, i] - vel[:, j]) * normal, axis=1)  # > 0: approaching
            hit = (dist < 2.0 * radius) & (closing > 0)
            if not hit.any():
                continue
            swap = (closing * hit)[:, None] * normal  # equal masses: exchange the normal components
            vel[:, i] -= swap
            vel[:, j] += swap
            push = (np.maximum(2.0 * radius - dist, 0.0) * hit / 2.0)[:, None] * normal
            pos[:, i] -= push
            pos[:, j] += push
    return np.clip(pos, radius, 1.0 - radius), vel


def render(
    videos: list[np.ndarray], size: int, radius: float, curtain: float | None = None,
    rng: np.random.Generator | None = None,
) -> Tensor:  # fmt: skip
    """Binary frames [N, frames, size, size] (float32). With ``curtain``, a vertical band of that width
    (fraction of the side, placed by ``rng``) is off in every frame of a video."""
    centres = (np.arange(size) + 0.5) / size
    ys, xs = np.meshgrid(centres, centres, indexing="ij")  # row = y, column = x
    out = np.zeros((len(videos), videos[0].shape[0], size, size), dtype=np.float32)
    for v, track in enumerate(videos):
        dx = xs[None, None] - track[:, :, 0, None, None]  # [frames, n, size, size]
        dy = ys[None, None] - track[:, :, 1, None, None]
        out[v] = ((dx**2 + dy**2) <= radius**2).any(axis=1)
        if curtain is not None:
            assert rng is not None, "the curtain's place needs an rng"
            left = rng.uniform(0.0, 1.0 - curtain)
            out[v][..., (centres >= left) & (centres < left + curtain)] = 0.0
    return torch.from_numpy(out)


def make_splits(args: Args) -> dict[str, Tensor]:
    """The training videos and the three test splits, [N, frames, size, size] each, from ``data_seed``."""
    seeds = np.random.SeedSequence(args.data_seed).spawn(4)
    sim = dict(frames=args.frames, radius=args.radius, speed=args.speed, substeps=args.substeps)
    splits = {}
    for (name, n_videos, balls), seed in zip(
        (
            ("train", args.n_train, args.train_balls),
            (f"{args.train_balls} balls", args.n_test, args.train_balls),
            (f"{_counts(args.ood_balls)} balls", args.n_test, list(args.ood_balls)),
            (f"curtain, {args.curtain_balls} balls", args.n_test, args.curtain_balls),
        ),
        seeds,
        strict=True,
    ):
        rng = np.random.default_rng(seed)
        videos = simulate(n_videos, balls, rng=rng, **sim)
        with_curtain = name.startswith("curtain")
        splits[name] = render(videos, args.size, args.radius, args.curtain if with_curtain else None, rng)
    return splits


def _counts(counts: list[int]) -> str:
    lo, hi = min(counts), max(counts)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


class FrameModel(nn.Module):
    """Frames -> conv encoder -> recurrent core -> deconv decoder -> logits of the next frames."""

    def __init__(self, core: nn.Module, size: int, embed: int) -> None:
        super().__init__()
        self.size, s4 = size, size // 4
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 4, stride=2, padding=1),
            nn.ELU(),
            nn.Conv2d(16, 32, 4, stride=2, padding=1),
            nn.ELU(),
            nn.Flatten(),
            nn.Linear(32 * s4 * s4, embed),
            nn.ELU(),
        )
        self.core = core
        # The output width, not hidden_size (a core's state width, wider for the TLB); cores set an int.
        self.decoder = nn.Sequential(
            nn.Linear(cast(int, core.output_size), 32 * s4 * s4),
            nn.ELU(),
            nn.Unflatten(1, (32, s4, s4)),
            nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1),
            nn.ELU(),
            nn.ConvTranspose2d(16, 1, 4, stride=2, padding=1),
        )

    def forward(self, frames: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple]:
        """frames [T, B, size, size] -> (logits of frames t+1 [T, B, size, size], core state)."""
        T, B = frames.shape[:2]
        z = self.encoder(frames.reshape(T * B, 1, self.size, self.size)).view(T, B, -1)
        out, state = self.core(z, state)
        logits = self.decoder(out.reshape(T * B, -1)).view(T, B, self.size, self.size)
        return logits, state


def frame_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """BCE summed over a frame's pixels, [T, B]: the paper's per-frame score."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum((-2, -1))


def build_model(args: Args, kind: str | None = None, hidden: int | None = None) -> FrameModel:
    """The core (``args.model`` at ``args.hidden`` unless given) between the frame encoder and decoder."""
    return FrameModel(build_core(args, args.embed, kind, hidden), args.size, args.embed)


def unroll(model: FrameModel, frames: Tensor, context: int) -> Tensor:
    """Logits of frames ``1..T-1`` [T-1, B, s, s] from frames [T, B, s, s]: the model reads frames
    ``0..context-1``, then its own predicted probabilities (the same in training and evaluation, so the
    model learns the rollouts it is scored on; gradients flow through its own predictions)."""
    logits, state = model(frames[:context])
    out = [logits]
    prev = logits[-1:]
    for _ in range(context, frames.shape[0] - 1):
        prev, state = model(torch.sigmoid(prev), state)
        out.append(prev)
    return torch.cat(out)


@torch.no_grad()
def rollout_bce(model: FrameModel, videos: Tensor, context: int, batch: int = 128) -> Tensor:
    """BCE per rolled-out frame [frames - context] (frames ``context..T-1``), averaged over the videos
    [N, frames, size, size]."""
    was_training = model.training
    model.eval()
    total = torch.zeros(videos.shape[1] - context, device=videos.device)
    for i in range(0, len(videos), batch):
        seq = videos[i : i + batch].transpose(0, 1)  # [frames, B, s, s]
        logits = unroll(model, seq, context)
        total += frame_bce(logits[context - 1 :], seq[context:]).sum(1)
    model.train(was_training)
    return total / len(videos)


def constant_bce(videos: Tensor, context: int) -> float:
    """Rollout BCE per frame of the best constant predictor (every pixel on with the rollout frames'
    on-pixel rate): the score of a model that has lost every ball. Lower than that is tracking."""
    target = videos[:, context:]
    rate = float(target.mean().clamp(1e-6, 1 - 1e-6))
    entropy = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    return entropy * videos.shape[-1] * videos.shape[-2]


def run_seed(args: Args, seed: int, out: str) -> dict[str, object]:
    """Train one seed on the training videos, score rollouts on every test split, write result.json."""
    random.seed(seed)
    torch.manual_seed(seed)
    device = pick_device(args.device)
    splits = {name: videos.to(device) for name, videos in make_splits(args).items()}
    train = splits.pop("train")
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
            idx = torch.randint(0, len(train), (args.batch_size,), generator=gen).to(device)
            seq = train[idx].transpose(0, 1)  # [frames, B, s, s]
            loss = frame_bce(unroll(model, seq, args.context), seq[1:]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            optimizer.step()
            train_time += time.time() - t0
        if step % args.eval_every == 0 or step == args.steps:
            per_frame = {name: rollout_bce(model, v, args.context).tolist() for name, v in splits.items()}
            scores = {name: float(np.mean(v)) for name, v in per_frame.items()}
            rows.append(
                {"step": step, "loss": loss.item(), "grad_norm": grad_norm.item()}
                | {f"rollout_bce {name}": s for name, s in scores.items()}
                | {"wall_s": time.time() - start}
            )
            write_curve(rows, os.path.join(out, "curve.csv"))
            bar.set_postfix(
                loss=f"{loss.item():.1f}", **{n.split(",")[0]: f"{s:.1f}" for n, s in scores.items()}
            )

    # the last step always evaluates: per_frame is the final model's
    wall = time.time() - start
    result: dict[str, object] = {
        "task": "bouncing_balls",
        "args": asdict(args),
        "seed": seed,
        "n_params": n_params(model),
        "n_params_core": n_params(model.core),
        "core": f"{type(model.core).__name__}({model.core.extra_repr()})",
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "wall_s": round(wall, 1),
        "train_wall_s": round(train_time, 1),
        "rollout_bce": {name: float(np.mean(v)) for name, v in per_frame.items()},
        "rollout_bce_per_frame": per_frame,
        "constant_bce": {name: constant_bce(v, args.context) for name, v in splits.items()},
        "final_train_loss": loss.item(),
        "note": "rollout_bce: BCE summed over a frame's pixels, averaged over the rolled-out frames and the "
        "split's videos (lower is better); the model reads the first `context` frames, then its own "
        "predictions. constant_bce: the same score for the best constant predictor (no ball tracked).",
    }
    write_result(result, out)
    print(
        f"{args.model} h{args.hidden} seed {seed}: "
        + " | ".join(f"{n} {s:.1f}" for n, s in cast(dict, result["rollout_bce"]).items())
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
