"""Which RIMs units are active at each step of an episode (the paper's Figure 2), as a heatmap.

    python experiments/activations.py --checkpoint runs/<run> --env MiniGrid-DoorKey-5x5-v0 --out docs/results

Loads the checkpoint safely (rims_rl.app.evaluation.load_for_eval), plays one episode (greedy actions, or
sampled with --stochastic), reads the actor core's ``last_active_mask`` after every step and writes:
    activations-<env>.png   units x steps heatmap (dark = active), with frames of the episode beneath
                            for environments that render (MiniGrid, Atari)
    activations-<env>.json  the mask, actions, return and per-unit activation frequency
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def record_episode(
    checkpoint: str, env_id: str | None, seed: int, max_steps: int, deterministic: bool = True
) -> dict[str, Any]:
    """Play one episode; return the [T, n_units] activation mask, frames, actions and return."""
    from rims_rl.app.checkpoint import read_meta, resolve_checkpoint
    from rims_rl.app.evaluation import load_for_eval, play_episode
    from rims_rl.cores.rims import RIMs
    from rims_rl.envs import EnvSpec, make_env

    if env_id is None:  # the checkpoint's own training env
        spec = read_meta(resolve_checkpoint(checkpoint)).config.env_spec()
    else:
        spec = EnvSpec(env_id, env_id, {})
    model, _ = load_for_eval(checkpoint, spec)
    core = model.policy.lstm_actor
    if not isinstance(core, RIMs):
        raise SystemExit(f"error: {checkpoint} has a {type(core).__name__} core, not RIMs; nothing to plot")
    render_spec = EnvSpec(spec.name, spec.env_id, {**dict(spec.kwargs), "render_mode": "rgb_array"})
    env = make_env(render_spec, seed=seed, training=False)
    masks, frames, actions, total, done = [], [], [], 0.0, False
    try:
        for frame, action, reward, ended in play_episode(model, env, deterministic, max_steps):
            frames.append(frame)
            masks.append(core.last_active_mask[-1, 0].cpu().numpy().copy())
            actions.append(action)
            total += reward
            done = ended
    finally:
        env.close()
    return {
        "env_id": spec.env_id,
        "mask": np.array(masks, dtype=bool),
        "frames": frames,
        "actions": actions,
        "return": total,
        "solved": bool(done and total > 0),
    }


def plot(episode: dict[str, Any], path: Path, n_frames: int = 8) -> Path:
    """Heatmap of units x steps, and up to ``n_frames`` evenly spaced frames under it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mask = episode["mask"].T.astype(float)  # [n_units, T]
    frames = [f for f in episode["frames"] if f is not None]
    rows = 2 if frames else 1
    fig = plt.figure(figsize=(min(14, max(6, mask.shape[1] * 0.15)), 2.4 * rows + 0.6))
    ax = fig.add_subplot(rows, 1, 1)
    ax.imshow(mask, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(mask.shape[0]), [f"unit {i}" for i in range(mask.shape[0])])
    ax.set_xlabel("step")
    ax.set_title(f"{episode['env_id']}: active units (dark), return {episode['return']:.2f}", fontsize=9)
    if frames:
        idx = np.linspace(0, len(frames) - 1, min(n_frames, len(frames))).round().astype(int)
        for j, i in enumerate(idx):
            fax = fig.add_subplot(rows, len(idx), len(idx) + j + 1)
            fax.imshow(frames[i])
            fax.set_title(f"step {i}", fontsize=8)
            fax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="a .zip, a run directory or a pretrained alias")
    parser.add_argument("--env", default=None, help="env id (default: the checkpoint's training env)")
    parser.add_argument("--seed", type=int, default=0, help="episode seed")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--stochastic", action="store_true", help="sample actions instead of greedy ones")
    parser.add_argument("--out", default=".", help="output folder")
    args = parser.parse_args(argv)

    episode = record_episode(args.checkpoint, args.env, args.seed, args.max_steps, not args.stochastic)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"activations-{episode['env_id'].replace('/', '_')}"
    png = plot(episode, out / f"{stem}.png")
    freq = episode["mask"].mean(axis=0)
    summary = {
        "checkpoint": str(args.checkpoint),
        "env_id": episode["env_id"],
        "seed": args.seed,
        "deterministic": not args.stochastic,
        "steps": int(episode["mask"].shape[0]),
        "return": episode["return"],
        "solved": episode["solved"],
        "unit_active_fraction": [round(float(f), 4) for f in freq],
        "actions": episode["actions"],
        "mask": episode["mask"].astype(int).tolist(),
    }
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{episode['env_id']}: {summary['steps']} steps, return {episode['return']:.3f}")
    print("unit active fraction: " + " ".join(f"{f:.2f}" for f in freq))
    print(f"wrote {png} and {out / (stem + '.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
