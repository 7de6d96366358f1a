"""What RIMs' units do on RepeatPrevious (issue 41.3): usage per unit against the task's phases and cards.

    python experiments/rims_usage.py --checkpoint RUN [RUN ...] --episodes 32 --out docs/results/rims_in_ppo

RepeatPrevious shows one card per step and asks, from the k-th step on, for the suit of the card k - 1
steps before the one shown: the first k - 1 steps of an episode only *cue* (nothing to recall yet, no
reward), the rest also *recall*. For each checkpoint (a RIMs agent trained on the suite's training env)
this plays episodes with sampled actions, reads the core's active-unit mask after every step, and reports:

- each unit's active fraction on cue steps and on recall steps, and the usage entropy (1: every unit
  equally often; ``rims.usage_entropy``);
- how much each unit's activation tells about the card shown now and about the card to recall (mutual
  information in bits, at most 2 for four suits): a unit that specialises on reading the input, or on
  holding what must be recalled, shows it here;
- the recall accuracy, so a run's usage is read beside how well it solved the task.

Writes ``rims_usage.json`` (per checkpoint) and ``rims_usage.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Usage:
    """One checkpoint's unit statistics over its episodes."""

    checkpoint: str
    episodes: int
    steps: int
    recall_accuracy: float
    """Fraction of recall steps answered with the right suit."""
    active_cue: list[float]
    """Per unit: fraction of cue steps it was active."""
    active_recall: list[float]
    usage_entropy: float
    mi_shown: list[float]
    """Per unit: mutual information (bits) between its activation and the suit shown this step."""
    mi_recalled: list[float]
    """Per unit: mutual information (bits) between its activation and the suit to recall this step."""


def mutual_information(active: np.ndarray, label: np.ndarray) -> float:
    """I(active; label) in bits, from counts (plug-in estimate; small samples read slightly high)."""
    active = np.asarray(active, dtype=bool)
    label = np.asarray(label)
    if active.size == 0:
        return 0.0
    mi = 0.0
    for a in (False, True):
        pa = float(np.mean(active == a))
        for value in np.unique(label):
            pl = float(np.mean(label == value))
            joint = float(np.mean((active == a) & (label == value)))
            if joint > 0:
                mi += joint * np.log2(joint / (pa * pl))
    return float(mi)


def recall_targets(step: np.ndarray, shown: np.ndarray, k: int) -> np.ndarray:
    """The suit each step asks for: the one shown k - 1 steps earlier in the same episode (-1 on cue
    steps), as the env rewards it (``step`` counts from 0 at each episode's start)."""
    target = np.full(len(step), -1)
    starts = np.flatnonzero(step == 0)
    for s0, s1 in zip(starts, [*starts[1:], len(step)], strict=True):
        target[s0 + k - 1 : s1] = shown[s0 : max(s0, s1 - (k - 1))]
    return target


def collect(
    checkpoint: str, episodes: int, seed: int
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Play ``episodes`` episodes: the env's k, and per step the [n_units] mask, the step index, the suit
    shown (the observation the policy acted on) and the reward (> 0: the right suit recalled)."""
    from rims_rl.app.checkpoint import read_meta, resolve_checkpoint
    from rims_rl.app.evaluation import load_for_eval
    from rims_rl.cores.rims import RIMs
    from rims_rl.envs import make_env

    spec = read_meta(resolve_checkpoint(checkpoint)).config.env_spec()
    if "RepeatPrevious" not in spec.env_id:
        raise SystemExit(
            f"error: {checkpoint} was trained on {spec.env_id}; this diagnostic reads RepeatPrevious"
        )
    k = int(dict(spec.kwargs).get("k", 4))
    model, _ = load_for_eval(checkpoint, spec)
    core = model.policy.lstm_actor
    if not isinstance(core, RIMs):
        raise SystemExit(f"error: {checkpoint} has a {type(core).__name__} core, not RIMs")
    env = make_env(spec, seed=seed, training=False)
    masks, steps, shown, rewards = [], [], [], []
    try:
        for _ in range(episodes):
            obs, _ = env.reset()
            state, start, done, t = None, np.ones(1, dtype=bool), False, 0
            while not done:
                action, state = model.predict(
                    obs[None], state=state, episode_start=start, deterministic=False
                )
                mask = core.last_active_mask
                assert mask is not None  # set by every forward call
                masks.append(mask[-1, 0].cpu().numpy().copy())
                steps.append(t)
                shown.append(int(np.argmax(obs)))
                obs, reward, term, trunc, _ = env.step(int(action[0]))
                rewards.append(float(reward))
                done, start, t = term or trunc, np.zeros(1, dtype=bool), t + 1
    finally:
        env.close()
    return k, np.array(masks, dtype=bool), np.array(steps), np.array(shown), np.array(rewards)


def summarise(checkpoint: str, episodes: int, seed: int) -> Usage:
    """``collect``, reduced to the per-unit statistics."""
    from rims_rl.cores.rims import usage_entropy

    k, mask, step, shown, reward = collect(checkpoint, episodes, seed)
    recall = step >= k - 1
    target = recall_targets(step, shown, k)
    n = mask.shape[1]
    return Usage(
        checkpoint=str(checkpoint),
        episodes=episodes,
        steps=int(len(step)),
        recall_accuracy=float((reward[recall] > 0).mean()) if recall.any() else float("nan"),
        active_cue=[float(mask[~recall, i].mean()) for i in range(n)],
        active_recall=[float(mask[recall, i].mean()) for i in range(n)],
        usage_entropy=usage_entropy(mask.mean(0)),
        mi_shown=[mutual_information(mask[:, i], shown) for i in range(n)],
        mi_recalled=[mutual_information(mask[recall, i], target[recall]) for i in range(n)],
    )


def markdown(rows: list[Usage], command: str) -> str:
    def cells(values: list[float]) -> str:
        return " ".join(f"{v:.2f}" for v in values)

    lines = [
        "# RIMs unit usage on RepeatPrevious",
        "",
        f"    {command}",
        "",
        "Per unit, in unit order. Cue steps: the first k - 1 steps of an episode (nothing to recall yet);",
        "MI: mutual information in bits between a unit's activation and the suit shown / to recall",
        "(at most 2).",
        "",
        "| checkpoint | steps | recall accuracy | usage entropy | active on cue steps "
        "| active on recall steps | MI with suit shown | MI with suit to recall |",
        "|---|---:|---:|---:|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.checkpoint} | {r.steps} | {r.recall_accuracy:.2f} | {r.usage_entropy:.2f} "
            f"| {cells(r.active_cue)} | {cells(r.active_recall)} "
            f"| {cells(r.mi_shown)} | {cells(r.mi_recalled)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import shlex
    import sys

    from rims_rl.app.atomic import atomic_write_bytes, atomic_write_json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", nargs="+", required=True, help="RIMs run directories, zips or aliases")
    p.add_argument("--episodes", type=int, default=32)
    p.add_argument("--seed", type=int, default=10000, help="episode seed (the evaluation protocol's)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    rows = [summarise(c, args.episodes, args.seed) for c in args.checkpoint]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "command": shlex.join(["python", *sys.argv]),
        "usage": [asdict(r) for r in rows],
    }
    atomic_write_json(out / "rims_usage.json", payload)
    atomic_write_bytes(out / "rims_usage.md", markdown(rows, payload["command"]).encode())
    print(markdown(rows, payload["command"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
