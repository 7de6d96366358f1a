"""Fingerprint of a run's first rollout and first PPO update, to show two code versions train alike.

    python experiments/fingerprint.py --agent rims_ppo --suite minigrid-doorkey --seed 0 \\
        --timesteps 307200 --set ppo.learning_rate=0.001 --set policy_kwargs.critic_grad_through_core=true
    python experiments/fingerprint.py --record docs/results/doorkey-tuned-10seeds/records/rims_ppo-seed0.json

The run is built as ``train``/``compare`` builds it (``rims_rl.app.runs``: ``resolve_config``,
``make_train_env`` and ``build_model`` with the run's seed, then ``model.learn`` over the run's whole
budget with ``reset_num_timesteps=False`` and the core-statistics callback), but stopped at the first
step of the second rollout, so the fingerprint is that of the first rollout and the first update under
the run's own schedules. Printed as JSON: sha256 of the policy parameters before and after the update
(tensor bytes in sorted-name order; also an order- and name-free hash, as a refactor may rename modules),
sha256 of the rollout buffer's arrays, and the update's logged losses (``float.hex``, exact).

The code fingerprinted is the package of the current working directory, not the one beside this
script: run it from an old checkout (``git worktree add /tmp/old 64dac30; cd /tmp/old; python
/path/to/experiments/fingerprint.py ...``) to fingerprint that version. It uses only what both the
2026-12-02 code (64dac30) and today's code have: ``rims_rl.app.runs.{resolve_config, make_train_env,
build_model}`` and ``rims_rl.callbacks.{CoreStatsCallback | RimsStatsCallback}``. Torch runs on one
thread (compare's workers run one or a few; bit-for-bit comparisons need the same count on both sides).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Rollout-buffer arrays hashed (those a buffer lacks are skipped): what the env and the action sampling
#: gave (observations, actions, rewards, episode starts) and what the policy computed (values, log-probs,
#: and from them advantages and returns).
BUFFER_ARRAYS = (
    "observations",
    "actions",
    "rewards",
    "episode_starts",
    "values",
    "log_probs",
    "advantages",
    "returns",
)


def _sha(chunks: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def _tensor_bytes(t: Any) -> bytes:
    import numpy as np

    arr = t.detach().cpu().contiguous().numpy() if hasattr(t, "detach") else np.ascontiguousarray(t)
    return arr.tobytes()


def param_hashes(policy: Any) -> dict[str, str]:
    """sha256 of the policy parameters: ``sha256`` over the tensors' bytes in sorted-name order (names
    not hashed), ``multiset_sha256`` over the sorted per-tensor ``shape:sha256`` strings (free of names
    and order), and ``names_sha256`` over the sorted names."""
    named = sorted((name, p) for name, p in policy.named_parameters())
    per = [f"{tuple(p.shape)}:{hashlib.sha256(_tensor_bytes(p)).hexdigest()}" for _, p in named]
    return {
        "sha256": _sha([_tensor_bytes(p) for _, p in named]),
        "multiset_sha256": _sha([s.encode() for s in sorted(per)]),
        "names_sha256": _sha([name.encode() + b"\n" for name, _ in named]),
        "count": str(sum(p.numel() for _, p in named)),
    }


def _git_commit(cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def library_versions() -> dict[str, str]:
    """Versions of what the numbers depend on besides this code (bit-for-bit equality needs the same)."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("torch", "numpy", "stable-baselines3", "sb3-contrib", "gymnasium", "minigrid"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def fingerprint(
    agent: str,
    suite: str,
    seed: int = 0,
    *,
    timesteps: int | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    n_envs: int | None = None,
    threads: int = 1,
) -> dict[str, Any]:
    """The fingerprint of ``agent``'s run on ``suite`` (seed, budget, overrides as ``train`` takes them)."""
    import torch as th
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList
    from stable_baselines3.common.logger import Logger

    import rims_rl
    import rims_rl.callbacks as callbacks_mod
    from rims_rl.app import runs

    stats_cls = getattr(callbacks_mod, "CoreStatsCallback", None) or callbacks_mod.RimsStatsCallback
    th.set_num_threads(threads)
    started = time.perf_counter()
    config = runs.resolve_config(
        agent, None, suite=suite, timesteps=timesteps, seed=seed, n_envs=n_envs, overrides=overrides
    )
    run_seed = config.seed  # a new run: start step 0
    env = runs.make_train_env(config, run_seed, None)
    out: dict[str, Any] = {}
    try:
        model = runs.build_model(config.model, env, seed=run_seed, device=config.device)
        model.set_logger(Logger(folder=None, output_formats=[]))
        out["params_init"] = param_hashes(model.policy)

        class FirstUpdate(BaseCallback):
            """Hash the first rollout at its end, the parameters and losses once the update is done
            (the second rollout's start), and stop at the second rollout's first step."""

            done = False

            def _on_rollout_end(self) -> None:
                if "rollout" in out:
                    return
                buf = self.model.rollout_buffer
                out["rollout"] = {
                    name: _sha([_tensor_bytes(getattr(buf, name))])
                    for name in BUFFER_ARRAYS
                    if getattr(buf, name, None) is not None
                }
                out["rollout"]["steps"] = int(self.model.num_timesteps)

            def _on_rollout_start(self) -> None:
                if self.model.num_timesteps == 0:
                    return
                out["params"] = param_hashes(self.model.policy)
                values = self.model.logger.name_to_value
                out["train"] = {
                    k: float(v).hex() for k, v in sorted(values.items()) if k.startswith("train/")
                }
                out["train_approx"] = {
                    k: float(v) for k, v in sorted(values.items()) if k.startswith("train/")
                }
                self.done = True

            def _on_step(self) -> bool:
                return not self.done

        first = FirstUpdate()
        model.learn(
            config.timesteps,
            callback=CallbackList([stats_cls(), first]),
            reset_num_timesteps=False,
            progress_bar=False,
            tb_log_name="train",
        )
        if not first.done:
            raise RuntimeError(f"the run's budget ({config.timesteps}) ended before a second rollout")
    finally:
        env.close()
    here = Path(rims_rl.__file__).resolve().parents[1]
    return {
        "agent": agent,
        "suite": suite,
        "seed": seed,
        "timesteps": config.timesteps,
        "overrides": dict(config.overrides),
        "n_envs": config.model.n_envs,
        "n_steps": config.model.ppo.n_steps,
        "threads": threads,
        **out,
        "code": {"path": str(here), "commit": _git_commit(here)},
        "versions": library_versions(),
        "seconds": round(time.perf_counter() - started, 2),
    }


def job_of_record(path: str | Path) -> dict[str, Any]:
    """A compare record's job as ``fingerprint``'s keyword arguments."""
    job = json.loads(Path(path).read_text())["job"]
    return {
        "agent": job["agent"],
        "suite": job["suite"],
        "seed": job["seed"],
        "timesteps": job["timesteps"],
        "overrides": dict(job.get("overrides") or {}),
        "n_envs": job.get("n_envs"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--record", help="a compare record (JSON): its job's agent, suite, seed, budget, overrides"
    )
    p.add_argument("--agent")
    p.add_argument("--suite")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timesteps", type=int)
    p.add_argument("--n-envs", type=int)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.record:
        kwargs = job_of_record(args.record)
    elif args.agent and args.suite:
        kwargs = {
            "agent": args.agent,
            "suite": args.suite,
            "seed": args.seed,
            "timesteps": args.timesteps,
            "overrides": list(args.overrides),
            "n_envs": args.n_envs,
        }
    else:
        p.error("give --record, or --agent and --suite")
    print(json.dumps(fingerprint(**kwargs, threads=args.threads), indent=1))
    return 0


if __name__ == "__main__":
    # The package fingerprinted is the working directory's (an old checkout's), not this script's.
    script_dir = str(Path(__file__).resolve().parent)
    sys.path[:] = [os.getcwd()] + [p for p in sys.path if p not in ("", script_dir)]
    sys.exit(main())
