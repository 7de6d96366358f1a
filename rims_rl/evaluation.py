"""Evaluate a checkpoint on an env or a whole OOD suite: returns, success rate and a 95% CI per env.

Checkpoints are loaded safely by default (``rims_rl.checkpoint``): the model is rebuilt from the JSON
config and only tensors are read. Episodes run in ``n_envs`` in-process envs with SB3's balanced
per-env episode targets, so short episodes are not over-represented; recurrent state is carried and
reset at episode starts. Success: MiniGrid gives reward > 0 only on reaching the goal, so
``return > 0`` is success; Atari has no success notion (``None``).
"""

from __future__ import annotations

import copy
import csv
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm

from rims_rl.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    check_spaces,
    load_trusted,
    load_weights,
    read_meta,
    resolve_checkpoint,
)

CSV_FIELDS = (
    "env",
    "env_id",
    "episodes",
    "mean_return",
    "std_return",
    "ci95_low",
    "ci95_high",
    "success_rate",
    "mean_length",
    "deterministic",
    "seed",
    "checkpoint",
)


def resolve_specs(target: Any, meta: dict[str, Any] | None = None) -> list[Any]:
    """Env specs to evaluate on: a ``Suite`` or suite name (train + variants), an ``EnvSpec`` or an id.

    ``None`` means the env the checkpoint was trained on (from its config).
    """
    from envs import EnvSpec, Suite, get_suite, list_suites
    from envs.make import as_spec, check_spec_kwargs
    from envs.suites import ATARI_SUITE_PREFIX

    if target is None:
        if meta is None:
            raise ValueError("give an env or a suite to evaluate on")
        env = meta["config"]["env"]
        return [EnvSpec(env["name"], env["env_id"], env.get("kwargs", {}))]
    if isinstance(target, Suite):
        return list(target.specs())
    if isinstance(target, str) and (target in list_suites() or target.startswith(ATARI_SUITE_PREFIX)):
        return list(get_suite(target).specs())
    spec = target if isinstance(target, EnvSpec) else as_spec(target)
    check_spec_kwargs(spec)
    spec.family  # noqa: B018  (validates the id)
    return [spec]


def _with_training_env_kwargs(spec: Any, meta: dict[str, Any] | None) -> Any:
    """Apply the preset's env kwargs (e.g. Atari frame stacking) that the policy was trained with."""
    from envs import EnvSpec

    if meta is None:
        return spec
    preset_env = dict(meta["config"].get("model", {}).get("env", {}))
    return EnvSpec(spec.name, spec.env_id, {**preset_env, **dict(spec.kwargs)})


def load_for_eval(
    checkpoint: str | Path, spec: Any, trust: bool = False, device: str = "cpu"
) -> tuple[BaseAlgorithm, dict[str, Any] | None]:
    """A model ready for ``predict``, built on a one-env copy of ``spec``; safe unless ``trust``."""
    import agents
    from envs import make_vec_env_for

    path = resolve_checkpoint(checkpoint)
    if trust:
        try:
            meta: dict[str, Any] | None = read_meta(path)
        except CheckpointError:
            meta = None
        spec = _with_training_env_kwargs(spec, meta)
        env = make_vec_env_for(spec, n_envs=1, seed=0, training=False, vec_cls="dummy")
        try:
            if meta is not None:
                check_spaces(meta, env.observation_space, env.action_space, f" {spec.env_id}")
            return load_trusted(path, env, device), meta
        finally:
            env.close()
    meta = read_meta(path)
    spec = _with_training_env_kwargs(spec, meta)
    env = make_vec_env_for(spec, n_envs=1, seed=0, training=False, vec_cls="dummy")
    try:
        check_spaces(meta, env.observation_space, env.action_space, f" {spec.env_id}")
        config = copy.deepcopy(meta["config"]["model"])
        config["ppo"]["n_steps"], config["ppo"]["batch_size"] = 2, 2  # no training: smallest buffer
        try:
            model = agents.build_model(config, env, seed=0, device=device)
        except ValueError as err:
            raise CheckpointError(f"checkpoint {str(path)!r}: its config is invalid: {err}") from err
        load_weights(model, path)
        model.num_timesteps = int(meta.get("num_timesteps", 0))
        return model, meta
    finally:
        env.close()


def run_episodes(
    model: BaseAlgorithm,
    spec: Any,
    n_episodes: int,
    deterministic: bool = True,
    seed: int = 0,
    n_envs: int | None = None,
    expected: dict[str, Any] | None = None,
) -> tuple[list[float], list[int]]:
    """Returns and lengths of ``n_episodes`` full episodes (Monitor's ``info['episode']``).

    ``expected``: checkpoint metadata whose ``observation_space``/``action_space`` the env must match.
    """
    from envs import make_vec_env_for

    n_envs = max(1, min(8, n_episodes)) if n_envs is None else n_envs
    env = make_vec_env_for(spec, n_envs=n_envs, seed=seed, training=False, vec_cls="dummy")
    if expected is not None:
        try:
            check_spaces(expected, env.observation_space, env.action_space, f" {spec.env_id}")
        except CheckpointError:
            env.close()
            raise
    targets = np.array([(n_episodes + i) // n_envs for i in range(n_envs)])
    counts = np.zeros(n_envs, dtype=int)
    returns: list[float] = []
    lengths: list[int] = []
    try:
        obs = env.reset()
        state = None
        starts = np.ones(n_envs, dtype=bool)
        while (counts < targets).any():
            actions, state = model.predict(
                obs, state=state, episode_start=starts, deterministic=deterministic
            )
            obs, _, dones, infos = env.step(actions)
            for i, (done, info) in enumerate(zip(dones, infos, strict=True)):
                if done and "episode" in info and counts[i] < targets[i]:
                    returns.append(float(info["episode"]["r"]))
                    lengths.append(int(info["episode"]["l"]))
                    counts[i] += 1
            starts = dones
    finally:
        env.close()
    return returns, lengths


def summarize(returns: Sequence[float], success: bool | None, n_boot: int = 2000) -> dict[str, Any]:
    """Mean, std, success rate and a bootstrap 95% CI of the mean (fixed resampling seed)."""
    r = np.asarray(returns, dtype=np.float64)
    if r.size == 0:
        return {
            "mean_return": math.nan,
            "std_return": math.nan,
            "ci95_low": math.nan,
            "ci95_high": math.nan,
            "success_rate": None,
        }
    means = np.random.default_rng(0).choice(r, size=(n_boot, r.size), replace=True).mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {
        "mean_return": float(r.mean()),
        "std_return": float(r.std(ddof=1)) if r.size > 1 else 0.0,
        "ci95_low": float(low),
        "ci95_high": float(high),
        "success_rate": float((r > 0).mean()) if success else None,
    }


def evaluate_checkpoint(
    checkpoint: str | Path,
    env_or_suite: Any = None,
    n_episodes: int = 20,
    deterministic: bool = True,
    seed: int = 0,
    trust: bool = False,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """One result dict per env spec (a suite gives train + every variant), in suite order.

    ``checkpoint``: a ``.zip``, a run directory or a pretrained alias. Each dict has ``env`` (spec
    name), ``env_id``, ``kwargs``, ``episodes``, ``mean_return``, ``std_return``, ``ci95_low/high``,
    ``success_rate`` (MiniGrid; ``None`` for Atari), ``mean_length``, ``returns``, ``lengths``,
    ``deterministic``, ``seed``, ``checkpoint``, ``num_timesteps``.
    """
    if not isinstance(n_episodes, int) or n_episodes < 1:
        raise ValueError(f"n_episodes must be a positive integer, got {n_episodes!r}")
    path = resolve_checkpoint(checkpoint)
    meta = None if trust else read_meta(path)
    specs = resolve_specs(env_or_suite, meta)
    model, meta = load_for_eval(path, specs[0], trust=trust, device=device)
    results = []
    for spec in specs:
        spec = _with_training_env_kwargs(spec, meta)
        returns, lengths = run_episodes(model, spec, n_episodes, deterministic, seed, expected=meta)
        results.append(
            {
                "env": spec.name,
                "env_id": spec.env_id,
                "kwargs": dict(spec.kwargs),
                "episodes": len(returns),
                **summarize(returns, success=spec.family == "minigrid"),
                "mean_length": float(np.mean(lengths)) if lengths else math.nan,
                "returns": returns,
                "lengths": lengths,
                "deterministic": deterministic,
                "seed": seed,
                "checkpoint": str(path),
                "num_timesteps": int(model.num_timesteps),
            }
        )
    return results


def write_results_json(results: list[dict[str, Any]], path: str | Path) -> Path:
    """All results, including per-episode returns, as JSON (atomic write)."""
    return atomic_write_bytes(path, (json.dumps(results, indent=2) + "\n").encode())


def write_results_csv(results: list[dict[str, Any]], path: str | Path) -> Path:
    """One row per env with the summary columns (``CSV_FIELDS``), atomic write."""
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in results:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_FIELDS})
    return atomic_write_bytes(path, buf.getvalue().encode())


def format_table(results: list[dict[str, Any]]) -> str:
    """A plain-text table: env, episodes, mean return, success rate, 95% CI."""
    header = ("env", "env id", "episodes", "mean return", "success", "95% CI of mean")
    rows = [header]
    for r in results:
        success = "n/a" if r["success_rate"] is None else f"{100 * r['success_rate']:.0f}%"
        rows.append(
            (
                str(r["env"]),
                str(r["env_id"]),
                str(r["episodes"]),
                f"{r['mean_return']:.3f}",
                success,
                f"[{r['ci95_low']:.3f}, {r['ci95_high']:.3f}]",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def play_episode(
    model: BaseAlgorithm, env: Any, deterministic: bool = True, max_steps: int = 1000
) -> Iterator[tuple[Any, int, float, bool]]:
    """Play one episode on a single (rendering) gymnasium env, carrying the recurrent state.

    Yields ``(frame rendered before the step, action, reward, episode ended)`` per step, right after the
    policy ran, so callers can read per-step model state such as a RIMs core's ``last_active_mask``.
    """
    obs, _ = env.reset()
    state, start, done, steps = None, np.ones(1, dtype=bool), False, 0
    while not done and steps < max_steps:
        frame = env.render()
        batched = {k: v[None] for k, v in obs.items()} if isinstance(obs, dict) else obs[None]
        action, state = model.predict(batched, state=state, episode_start=start, deterministic=deterministic)
        obs, reward, term, trunc, _ = env.step(int(action[0]))
        done, start, steps = term or trunc, np.zeros(1, dtype=bool), steps + 1
        yield frame, int(action[0]), float(reward), done


def record_gif(
    model: BaseAlgorithm,
    spec: Any,
    out_dir: str | Path,
    n_episodes: int = 2,
    seed: int = 0,
    deterministic: bool = True,
    max_frames: int = 1000,
) -> list[Path]:
    """Save ``n_episodes`` episodes as animated GIFs (PIL; no moviepy needed). Returns the files."""
    from PIL import Image

    from envs import EnvSpec, make_env

    render_spec = EnvSpec(spec.name, spec.env_id, {**dict(spec.kwargs), "render_mode": "rgb_array"})
    env = make_env(render_spec, seed=seed, training=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        for ep in range(n_episodes):
            frames = [f for f, *_ in play_episode(model, env, deterministic, max_steps=max_frames - 1)]
            frames.append(env.render())  # the final state
            images = [Image.fromarray(np.asarray(f)) for f in frames if f is not None]
            if not images:
                raise ValueError(f"{spec.env_id} does not render rgb frames")
            name = f"{spec.name.replace('/', '_')}-episode{ep}.gif"
            path = out / name
            images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)
            paths.append(path)
    finally:
        env.close()
    return paths
