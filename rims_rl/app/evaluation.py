"""Evaluate a checkpoint on an env or a whole OOD suite: returns, success rate and a 95% CI per env.

Checkpoints are loaded safely by default (``rims_rl.app.checkpoint``): the model is rebuilt from the JSON
config and only tensors are read. Episodes run in ``n_envs`` in-process envs with SB3's balanced
per-env episode targets, so short episodes are not over-represented; recurrent state is carried and
reset at episode starts. Success: where the env family has a goal reward (``EnvFamily.has_success``:
MiniGrid gives reward > 0 only on reaching the goal), ``return > 0`` is success; elsewhere ``None``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from stable_baselines3.common.base_class import BaseAlgorithm
from tqdm.auto import tqdm

from rims_rl.agents import build_model, infer_algo, parse_overrides
from rims_rl.app.atomic import atomic_write_bytes
from rims_rl.app.checkpoint import (
    CheckpointError,
    CheckpointMeta,
    check_spaces,
    load_trusted,
    load_weights,
    read_meta,
    resolve_checkpoint,
)
from rims_rl.app.errors import UserError, output_path, user_input
from rims_rl.app.foreign import ForeignCheckpoint, is_foreign, load_foreign, read_foreign
from rims_rl.checks import check_positive, safe_name
from rims_rl.envs import EnvSpec, Suite, get_suite, list_suites, make_env, make_vec_env_for
from rims_rl.envs.make import as_spec, check_spec_kwargs
from rims_rl.envs.suites import ATARI_SUITE_PREFIX


@dataclass(frozen=True)
class EvalProtocol:
    """How a policy is scored unless the user says otherwise: one protocol for ``evaluate``, ``train
    --eval-episodes``, ``make run``, ``compare``, ``tune`` and the model cards, so their numbers agree.

    Sampled actions, because the agents are trained as stochastic policies and a greedy recurrent policy
    can loop in place on MiniGrid until the step limit; 32 episodes, enough for a success rate within
    about +-0.17 (95%); episode seed 10000, far from every training seed, the same for every agent.
    """

    episodes: int = 32
    """Episodes per env."""
    deterministic: bool = False
    """Greedy (True) or sampled (False) actions."""
    seed: int = 10_000
    """Seed of the evaluation envs (the vector env seeds its env j with ``seed + j``)."""


#: The default protocol (``EvalProtocol()``), named once.
EVAL_PROTOCOL = EvalProtocol()

CSV_FIELDS = (
    "env",
    "env_id",
    "episodes",
    "mean_return",
    "std_return",
    "ci95_low",
    "ci95_high",
    "success_rate",
    "normalised_score",
    "mean_length",
    "deterministic",
    "seed",
    "checkpoint",
)


@dataclass(frozen=True)
class EvalResult:
    """A checkpoint's score on one env: summary, per-episode data and how it was measured."""

    env: str
    """The spec's name (a suite variant's label, or the id)."""
    env_id: str
    """Gymnasium id."""
    episodes: int
    """Complete episodes scored."""
    mean_return: float
    """Mean undiscounted return (Atari: the raw game score)."""
    std_return: float
    """Sample standard deviation of the returns."""
    ci95_low: float
    """Bootstrap 95% CI of the mean, low end."""
    ci95_high: float
    """Bootstrap 95% CI of the mean, high end."""
    success_rate: float | None
    """Fraction of episodes with return > 0 (MiniGrid's goal reward); None where the family has no goal."""
    mean_length: float
    """Mean episode length in agent steps."""
    deterministic: bool
    """Greedy (True) or sampled actions."""
    seed: int
    """Seed of the evaluation episodes."""
    checkpoint: str
    """The checkpoint file scored."""
    num_timesteps: int
    """Environment steps the checkpoint was trained for."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """The env spec's keyword arguments."""
    returns: list[float] = field(default_factory=list)
    """Every episode's return."""
    lengths: list[int] = field(default_factory=list)
    """Every episode's length."""
    normalised_score: float | None = None
    """The mean return on a fixed [0, 1] scale where the family has one (POPGym), else None."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``eval.json``)."""
        return asdict(self)

    def spec(self) -> EnvSpec:
        """The env exactly as it was scored (with every wrapper setting), e.g. to record it."""
        return EnvSpec(self.env, self.env_id, dict(self.kwargs))


def resolve_specs(target: Any, meta: CheckpointMeta | None = None) -> list[EnvSpec]:
    """Env specs to evaluate on: a ``Suite`` or suite name (train + variants), an ``EnvSpec`` or an id.

    ``None`` means the env the checkpoint was trained on (from its config).
    """
    if target is None:
        if meta is None:
            raise UserError("give --env or --suite to evaluate on (this checkpoint does not say its env)")
        with user_input("the checkpoint's env settings are invalid"):
            spec = meta.config.env_spec()  # validates the id
            check_spec_kwargs(spec)  # bounded: the file may be crafted (max_steps=10**9, render_mode=human)
        return [spec]
    if isinstance(target, Suite):
        return list(target.specs())
    with user_input():
        is_suite = isinstance(target, str) and (
            target in list_suites()
            or target.startswith(ATARI_SUITE_PREFIX)
            or target.endswith((".yml", ".yaml"))
        )
        if is_suite:
            return list(get_suite(target).specs())
        spec = target if isinstance(target, EnvSpec) else as_spec(target)  # as_spec validates the id
        check_spec_kwargs(spec)
    return [spec]


#: The preset env settings a checkpoint carries to the env the user evaluates on: those that shape what
#: the policy sees. Task settings (max_steps, size, render_mode, ...) are the chosen env's own.
CARRIED_ENV_KWARGS: tuple[str, ...] = ("frame_stack", "frame_skip", "screen_size", "encode_mission")


def _with_training_env_kwargs(spec: EnvSpec, meta: CheckpointMeta | None) -> EnvSpec:
    """Apply the preset's observation wrappers (``CARRIED_ENV_KWARGS``, e.g. Atari frame stacking) that
    the policy was trained with, under the spec's own kwargs: what the user asked for wins.

    Only on envs of the family it was trained on: an Atari agent on a MiniGrid suite keeps the MiniGrid
    spec, and the space check then names both spaces.
    """
    if meta is None or meta.config.model.family != spec.family.preset_family:
        return spec
    carried = {k: v for k, v in meta.config.model.env.items() if k in CARRIED_ENV_KWARGS}
    return spec.with_kwargs({**carried, **dict(spec.kwargs)})


def _checked(specs: Sequence[EnvSpec]) -> list[EnvSpec]:
    """Every spec's kwargs checked (names, bounded values) before any env or model is built."""
    with user_input("invalid env settings"):
        for spec in specs:
            check_spec_kwargs(spec)
    return list(specs)


def load_for_eval(
    checkpoint: str | Path, spec: EnvSpec, trust: bool = False, device: str = "cpu"
) -> tuple[BaseAlgorithm, CheckpointMeta | None]:
    """A model ready for ``predict``, built on a one-env copy of ``spec``; safe unless ``trust``.

    Another project's SB3 checkpoint (``rims_rl.app.foreign``) is rebuilt from its readable JSON; it has
    no metadata of ours (None).
    """
    path = resolve_checkpoint(checkpoint)
    if not trust and is_foreign(path):
        foreign = read_foreign(path)
        env = make_vec_env_for(
            _with_foreign_wrappers(spec, foreign, {}), n_envs=1, seed=0, training=False, vec_cls="dummy"
        )
        try:
            return load_foreign(path, foreign, env, device), None
        finally:
            env.close()
    if trust:
        try:
            meta: CheckpointMeta | None = read_meta(path)
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
        # No training: the smallest buffer that builds (and no chunks, a matter of training only).
        preset = meta.config.model
        ppo = replace(preset.ppo, n_steps=2, batch_size=2, chunk_length=None)
        preset = preset.replace(n_envs=1, algo=infer_algo(preset.algo, None), ppo=ppo)
        try:
            model = build_model(preset, env, seed=0, device=device)
        except ValueError as err:
            raise CheckpointError(f"checkpoint {str(path)!r}: its config is invalid: {err}") from err
        load_weights(model, path)
        model.num_timesteps = meta.num_timesteps
        return model, meta
    finally:
        env.close()


def run_episodes(
    model: BaseAlgorithm,
    spec: EnvSpec,
    n_episodes: int,
    deterministic: bool = EVAL_PROTOCOL.deterministic,
    seed: int = EVAL_PROTOCOL.seed,
    n_envs: int | None = None,
    expected: CheckpointMeta | None = None,
    on_episode: Callable[[], None] | None = None,
) -> tuple[list[float], list[int]]:
    """Returns and lengths of ``n_episodes`` full episodes (Monitor's ``info['episode']``).

    ``seed`` seeds the envs and the sampled actions (on private copies of torch's generators, restored
    afterwards), so the same call gives the same episodes.
    ``expected``: checkpoint metadata whose ``observation_space``/``action_space`` the env must match.
    ``on_episode`` is called once per episode counted (a progress bar).
    """
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
        # manual_seed seeds every device: fork (and afterwards restore) the model's CUDA generator too
        cuda = [model.device.index or 0] if model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            obs = env.reset()
            assert not isinstance(obs, tuple), "tuple observation spaces are not supported"
            state = None
            starts = np.ones(n_envs, dtype=bool)
            while (counts < targets).any():
                actions, state = model.predict(
                    obs, state=state, episode_start=starts, deterministic=deterministic
                )
                obs, _, dones, infos = env.step(actions)
                assert not isinstance(obs, tuple)
                for i, (done, info) in enumerate(zip(dones, infos, strict=True)):
                    if done and "episode" in info and counts[i] < targets[i]:
                        returns.append(float(info["episode"]["r"]))
                        lengths.append(int(info["episode"]["l"]))
                        counts[i] += 1
                        if on_episode is not None:
                            on_episode()
                starts = dones
    finally:
        env.close()
    return returns, lengths


def score_returns(returns: Sequence[float], success: bool) -> dict[str, Any]:
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
    means = np.random.default_rng(0).choice(r, size=(2000, r.size), replace=True).mean(1)
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
    n_episodes: int = EVAL_PROTOCOL.episodes,
    deterministic: bool = EVAL_PROTOCOL.deterministic,
    seed: int = EVAL_PROTOCOL.seed,
    trust: bool = False,
    device: str = "cpu",
    env_kwargs: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> list[EvalResult]:
    """One ``EvalResult`` per env spec (a suite gives train + every variant), in suite order.

    ``progress`` shows episodes done per env with an ETA on stderr (only on a terminal): a suite of
    Atari modes takes minutes, and silence that long looks like a hang.

    ``checkpoint``: a ``.zip``, a run directory or a pretrained alias; ours, or another project's SB3 /
    sb3-contrib checkpoint (read safely, ``rims_rl.app.foreign``). ``env_kwargs`` (``--set env.KEY=VALUE``)
    go to every env, e.g. the wrappers a foreign checkpoint was trained with.
    """
    check_positive("the number of episodes", n_episodes, error=CheckpointError)
    path = resolve_checkpoint(checkpoint)
    extra = dict(env_kwargs or {})
    foreign = None if trust or not is_foreign(path) else read_foreign(path)
    trusted_meta = None
    if trust:  # our metadata, where the trusted file has it, still names the env it was trained on
        try:
            trusted_meta = read_meta(path)
        except CheckpointError:
            trusted_meta = None
    if foreign is not None:
        if env_or_suite is None:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is not one of ours and does not say its env: give --env or --suite"
            )
        targets = resolve_specs(env_or_suite, None)
        specs = _checked([_with_foreign_wrappers(s, foreign, extra) for s in targets])
        model, meta = load_for_eval(path, specs[0], device=device)
    else:
        meta = trusted_meta if trust else read_meta(path)
        specs = [_with_kwargs(s, extra) for s in resolve_specs(env_or_suite, meta)]
        specs = _checked([_with_training_env_kwargs(s, meta) for s in specs])
        model, meta = load_for_eval(path, specs[0], trust=trust, device=device)
    results = []
    bar = tqdm(total=n_episodes * len(specs), unit="episode", disable=None if progress else True, leave=False)
    for spec in specs:
        bar.set_description(f"evaluating {spec.name}")
        returns, lengths = run_episodes(
            model, spec, n_episodes, deterministic, seed, expected=meta, on_episode=bar.update
        )
        results.append(
            EvalResult(
                env=spec.name,
                env_id=spec.env_id,
                kwargs=dict(spec.kwargs),
                episodes=len(returns),
                **score_returns(returns, success=spec.family.has_success),
                mean_length=float(np.mean(lengths)) if lengths else math.nan,
                returns=returns,
                lengths=lengths,
                normalised_score=_normalised(spec, returns),
                deterministic=deterministic,
                seed=seed,
                checkpoint=str(path),
                num_timesteps=int(model.num_timesteps),
            )
        )
    bar.close()
    return results


def env_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["env.frame_stack=4"]`` -> ``{"frame_stack": 4}``; only ``env.*`` keys apply to an evaluation."""
    with user_input():
        parsed = parse_overrides(items)
        bad = [k for k in parsed if not k.startswith("env.") or not k.split(".", 1)[1].isidentifier()]
        if bad:
            raise ValueError(f"evaluate --set takes env.KEY=VALUE (the env's wrappers), got {bad[0]!r}")
    return {k.split(".", 1)[1]: v for k, v in parsed.items()}


def _with_kwargs(spec: EnvSpec, extra: Mapping[str, Any]) -> EnvSpec:
    return spec.with_kwargs({**dict(spec.kwargs), **extra}) if extra else spec


def _normalised(spec: EnvSpec, returns: Sequence[float]) -> float | None:
    """The mean return on the family's fixed [0, 1] scale, where it has one (POPGym), else None."""
    score = spec.family.normalised_score
    return score(float(np.mean(returns))) if score is not None and returns else None


def _with_foreign_wrappers(spec: EnvSpec, foreign: ForeignCheckpoint, extra: Mapping[str, Any]) -> EnvSpec:
    """The frame stack a foreign agent was trained with (from its saved shape) on a family that stacks
    frames (Atari), unless given."""
    stack = foreign.frame_stack()
    kwargs = dict(spec.kwargs)
    stacks = spec.family.frame_stack is not None
    if stack is not None and stacks and "frame_stack" not in {**kwargs, **extra}:
        kwargs["frame_stack"] = stack
    return spec.with_kwargs({**kwargs, **extra})


def write_results_json(results: Sequence[EvalResult], path: str | Path) -> Path:
    """All results, including per-episode returns, as JSON (atomic write)."""
    with output_path(path):
        return atomic_write_bytes(
            path, (json.dumps([r.to_dict() for r in results], indent=2) + "\n").encode()
        )


def write_results_csv(results: Sequence[EvalResult], path: str | Path) -> Path:
    """One row per env with the summary columns (``CSV_FIELDS``), atomic write."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for result in results:
        row = result.to_dict()
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_FIELDS})
    with output_path(path):
        return atomic_write_bytes(path, buf.getvalue().encode())


def format_table(results: Sequence[EvalResult]) -> str:
    """A plain-text table: env, episodes, mean return, success rate, 95% CI (and the normalised score
    when an env has one, POPGym's)."""
    normalised = any(r.normalised_score is not None for r in results)
    header: tuple[str, ...] = ("env", "env id", "episodes", "mean return", "success", "95% CI of mean")
    header += ("normalised",) if normalised else ()
    rows = [header]
    for r in results:
        success = "n/a" if r.success_rate is None else f"{100 * r.success_rate:.0f}%"
        row: tuple[str, ...] = (
            r.env,
            r.env_id,
            str(r.episodes),
            f"{r.mean_return:.3f}",
            success,
            f"[{r.ci95_low:.3f}, {r.ci95_high:.3f}]",
        )
        if normalised:
            row += ("n/a" if r.normalised_score is None else f"{r.normalised_score:.3f}",)
        rows.append(row)
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
    """Save ``n_episodes`` episodes as animated GIFs (PIL; no moviepy needed). Returns the files.

    File names come from the spec's name, which may come from an untrusted checkpoint: it is reduced to
    a safe file name, so files land in ``out_dir`` and nowhere else.
    """
    render_spec = as_spec(spec, render_mode="rgb_array")
    env = make_env(render_spec, seed=seed, training=False)
    out = Path(out_dir)
    with output_path(out):
        out.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        for ep in range(n_episodes):
            frames = [f for f, *_ in play_episode(model, env, deterministic, max_steps=max_frames - 1)]
            frames.append(env.render())  # the final state
            images = [Image.fromarray(np.asarray(f)) for f in frames if f is not None]
            if not images:
                raise ValueError(f"{spec.env_id} does not render rgb frames")
            name = f"{safe_name(spec.name)}-episode{ep}.gif"
            path = out / name
            images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)
            paths.append(path)
    finally:
        env.close()
    return paths
