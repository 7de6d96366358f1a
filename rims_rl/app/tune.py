"""``train.py tune``: the same tuning budget for every agent, chosen on the training env only.

Every agent tries every configuration of one grid (``--grid KEY=V1,V2,...``, the product of all keys),
each on the same tuning seeds, which are disjoint from the comparison's seeds (those start at 0; tuning
seeds start at ``TUNE_SEED0``). Each configuration is a ``compare`` on the suite's *training env alone*,
so no OOD variant is ever trained or scored during tuning; the score of a configuration is the IQM over
its seeds of the final evaluation return on that env. ``tune.json`` and ``tune.md`` list every
configuration tried with its score and the one chosen per agent; ``compare --tuned tune.json`` then runs
each agent with its choice.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rims_rl.agents import parse_overrides, parse_value
from rims_rl.app import rundir
from rims_rl.app.atomic import atomic_write_bytes, atomic_write_json
from rims_rl.app.compare import DEFAULT_AGENTS, CompareRequest, run_compare
from rims_rl.app.errors import UserError, output_path, user_input
from rims_rl.app.evaluation import EVAL_PROTOCOL
from rims_rl.app.jobs import Backend
from rims_rl.app.stats import iqm
from rims_rl.checks import check_positive
from rims_rl.envs import get_suite

TUNE_SEED0 = 1000  # tuning seeds: 1000, 1001, ...; comparisons use 0, 1, ...

#: Configurations of one tuning grid: each costs seeds x agents runs, so thousands are a typo.
MAX_CONFIGURATIONS = 1000


@dataclass(frozen=True)
class Trial:
    """One configuration of one agent, scored on the training env."""

    agent: str
    """The agent tuned."""
    overrides: dict[str, Any]
    """The configuration (``--set`` keys)."""
    score: float
    """IQM over the tuning seeds of the final evaluation return on the training env."""
    returns: list[float]
    """Each tuning seed's mean evaluation return."""


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["ppo.learning_rate=1e-4,3e-4"]`` -> ``{"ppo.learning_rate": [1e-4, 3e-4]}``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise UserError(f"--grid {item!r} must look like KEY=VALUE1,VALUE2,...")
        grid[key.strip()] = [parse_value(v) for v in values.split(",")]
    return grid


def parse_agent_grid(items: Sequence[str]) -> dict[str, dict[str, list[Any]]]:
    """``["rims_ppo:KEY=V1,V2", "rims_ppo:K1+K2=a+b,c+d"]`` -> each agent's own grid axes.

    An axis of ``+``-joined keys takes ``+``-joined values, tied (``n_units+k=6+4,8+4`` tries two
    structures, not the four pairs); separate axes multiply, as ``--grid``'s keys do."""
    grids: dict[str, dict[str, list[Any]]] = {}
    for item in items:
        agent, sep, rest = item.partition(":")
        key, eq, values = rest.partition("=")
        if not sep or not eq or not agent.strip() or not key.strip() or not values.strip():
            raise UserError(
                f"--agent-grid {item!r} must look like AGENT:KEY=V1,V2 or AGENT:K1+K2=A1+B1,A2+B2"
            )
        keys = [k.strip() for k in key.split("+")]
        axis = []
        for value in values.split(","):
            parts = value.split("+")
            if len(parts) != len(keys):
                raise UserError(
                    f"--agent-grid {item!r}: {value!r} has {len(parts)} values for {len(keys)} keys"
                )
            tied = dict(zip(keys, (parse_value(v) for v in parts), strict=True))
            axis.append(tied if len(keys) > 1 else tied[keys[0]])  # one key: its plain values
        grids.setdefault(agent.strip(), {})[key.strip()] = axis
    return grids


def configurations(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values (one empty configuration for an empty grid); the count is
    checked before the product is built (``MAX_CONFIGURATIONS``)."""
    count = math.prod(len(v) for v in grid.values())
    if count > MAX_CONFIGURATIONS:
        sizes = " x ".join(str(len(v)) for v in grid.values())
        raise UserError(f"--grid makes {count:,} configurations ({sizes}); at most {MAX_CONFIGURATIONS}")
    keys = list(grid)
    combos = itertools.product(*(grid[k] for k in keys))
    # an axis of tied keys (``parse_agent_grid``) holds dicts, merged; a plain key holds its values
    return [
        {k: v for key, value in zip(keys, values, strict=True) for k, v in _axis_items(key, value)}
        for values in combos
    ]


def _axis_items(key: str, value: Any) -> list[tuple[str, Any]]:
    return list(value.items()) if isinstance(value, dict) else [(key, value)]


def agent_configurations(
    agents: Sequence[str],
    grid: Mapping[str, Sequence[Any]],
    agent_grids: Mapping[str, Mapping[str, Sequence[Any]]],
) -> dict[str, list[dict[str, Any]]]:
    """Each agent's configurations: the shared grid times its own axes. Every agent gets the same number
    of trials (``UserError`` otherwise): a tuning that gives one agent more tries favours it."""
    unknown = sorted(set(agent_grids) - set(agents))
    if unknown:
        raise UserError(f"--agent-grid names {', '.join(unknown)}, not among --agents {' '.join(agents)}")
    configs = {a: configurations({**grid, **agent_grids.get(a, {})}) for a in agents}
    counts = {a: len(c) for a, c in configs.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{a} {n}" for a, n in counts.items())
        raise UserError(
            f"every agent must get the same number of trials; the grids give {listed}: add values to the "
            "smaller grids (--grid for all, --agent-grid AGENT:KEY=... for one)"
        )
    return configs


class TuneRunsFailed(Exception):
    """Some tuning runs failed (a bug or a broken machine, each reported on its own line): tune.json is
    written from the others, but their choices did not get the same trials, so the command fails."""

    def __init__(self, failed: list[str]) -> None:
        super().__init__(
            f"{len(failed)} tuning run(s) failed ({', '.join(failed[:3])}{', ...' * (len(failed) > 3)})"
        )
        self.failed = failed


def run_tune(
    suite: str,
    grid: Mapping[str, Sequence[Any]] | Sequence[str],
    agents: Sequence[str] = DEFAULT_AGENTS,
    agent_grids: Mapping[str, Mapping[str, Sequence[Any]]] | Sequence[str] = (),
    overrides: Mapping[str, Any] | Sequence[str] = (),
    seeds: int = 2,
    timesteps: int | None = None,
    out: str | Path | None = None,
    eval_episodes: int = EVAL_PROTOCOL.episodes,
    workers: int = 1,
    device: str = "auto",
    deterministic: bool = EVAL_PROTOCOL.deterministic,
    backend: Backend | None = None,
) -> dict[str, dict[str, Any]]:
    """Tune every agent on ``suite``'s training env with the same grid and seeds (and, with
    ``agent_grids``, each agent's own axes, the trial count equal); return the choices.

    ``TuneRunsFailed`` after the report is written when a run failed: re-running the command retries
    those runs and keeps the finished ones."""
    if not isinstance(grid, Mapping):
        grid = parse_grid(grid)
    if not isinstance(agent_grids, Mapping):
        agent_grids = parse_agent_grid(agent_grids)
    fixed = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(list(overrides))
    tuned_keys = {k for g in (grid, *agent_grids.values()) for axis in g for k in axis.split("+")}
    both = sorted(tuned_keys & set(fixed))
    if both:
        raise UserError(f"{', '.join(both)} is both tuned (--grid) and fixed (--set); drop one")
    configs = agent_configurations(agents, grid, agent_grids)
    n_configs = len(next(iter(configs.values()), []))
    with user_input():
        train = get_suite(suite).train
        check_positive("--seeds", seeds)
    seed_list = list(range(TUNE_SEED0, TUNE_SEED0 + seeds))
    out_dir = rundir.runs_root() / "tune" if out is None else Path(out)
    trials: list[Trial] = []
    failed: list[str] = []
    # The training env's own kwargs (e.g. POPGym's deck count) travel as env settings of every run.
    env_settings = {f"env.{key}": value for key, value in train.kwargs.items()}
    # Configuration-major order: a tuning that outlasts a session has tried every agent about equally.
    for i in range(n_configs):
        for agent in agents:
            config = configs[agent][i]
            request = CompareRequest(
                agents=(agent,),
                env=train.env_id,
                seeds=seed_list,
                timesteps=timesteps,
                workers=workers,
                out=out_dir / agent / f"config{i}",
                eval_episodes=eval_episodes,
                overrides={**env_settings, **fixed, **config},
                label=f"tune ({agent}, configuration {i + 1} of {n_configs})",
                deterministic=deterministic,
                device=device,
                progress=False,
            )
            result = run_compare(request, backend)
            if result.failed:
                failed.append(f"{agent} configuration {i + 1}")
            records = json.loads(result.files["results_json"].read_text())["records"]
            returns = [float(r["mean_return"]) for r in records if r["is_train"]]
            trials.append(Trial(agent, config, iqm(returns) if returns else float("nan"), returns))
    chosen = {a: _best([t for t in trials if t.agent == a]) for a in agents}
    write_tune_report(
        out_dir, suite, train.env_id, grid, seed_list, trials, chosen, timesteps, agent_grids, fixed
    )
    choices = {a: {**fixed, **c} for a, c in chosen.items()}
    if failed:
        raise TuneRunsFailed(failed)
    return choices


TIE_RULE = "the first in grid order (the order of --grid's values) is chosen"


def _best(trials: Sequence[Trial]) -> dict[str, Any]:
    scored = [t for t in trials if t.score == t.score]  # NaN: no episode finished
    if not scored:
        return {}
    return max(scored, key=lambda t: t.score).overrides  # the first of equal scores (grid order)


def _config_text(overrides: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in overrides.items()) or "preset"


def tie_note(agent: str, trials: Sequence[Trial], chosen: Mapping[str, Any]) -> str | None:
    """When the chosen configuration's score is shared by another one: which tie, and the rule that
    broke it (``TIE_RULE``); None when the choice is unique."""
    best = next((t for t in trials if t.agent == agent and t.overrides == chosen), None)
    if best is None:
        return None
    tied = [t for t in trials if t.agent == agent and t.score == best.score]
    if len(tied) < 2:
        return None
    every = len(tied) == sum(1 for t in trials if t.agent == agent)
    names = ", ".join(_config_text(t.overrides) for t in tied)
    what = f"all {len(tied)} configurations" if every else f"{len(tied)} configurations"
    return (
        f"{agent}: {what} tie at score {best.score:.3f} ({names}); {TIE_RULE}: {_config_text(best.overrides)}"
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def write_tune_report(
    out_dir: Path,
    suite: str,
    env_id: str,
    grid: Mapping[str, Sequence[Any]],
    seeds: Sequence[int],
    trials: Sequence[Trial],
    chosen: Mapping[str, Mapping[str, Any]],
    timesteps: int | None,
    agent_grids: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> None:
    """``tune.json`` (read by ``compare --tuned``) and ``tune.md``: every trial and each agent's choice;
    the settings ``fixed`` for every trial (``--set``) are part of each choice, so compare applies them."""
    always: dict[str, Any] = dict(fixed or {})
    agents = list(chosen)
    ties = {a: note for a in agents if (note := tie_note(a, trials, chosen[a])) is not None}
    data: dict[str, Any] = {
        "suite": suite,
        "selected_on": env_id,
        "grid": {k: list(v) for k, v in grid.items()},
        **(
            {"agent_grids": {a: {k: list(v) for k, v in g.items()} for a, g in agent_grids.items()}}
            if agent_grids
            else {}
        ),
        "seeds": list(seeds),
        "timesteps": timesteps,
        "agents": {
            a: {
                "chosen": always | dict(chosen[a]),
                "tried": [asdict(t) for t in trials if t.agent == a],
                **({"tie": ties[a]} if a in ties else {}),
            }
            for a in agents
        },
    }
    lines = [
        f"# Tuning on {suite}: chosen on its training env {env_id} only",
        "",
        f"Same budget for every agent: {_plural(len(trials) // max(1, len(agents)), 'configuration')} x "
        f"{_plural(len(seeds), 'seed')} ({', '.join(map(str, seeds))}; comparisons use seeds from 0), "
        f"timesteps {timesteps if timesteps is not None else 'preset'}. Score: IQM over seeds of the final "
        "evaluation return on the training env."
        + (f" Fixed for every trial (--set): {_config_text(always)}." if always else ""),
        "",
        "| agent | configuration | score | returns per seed | chosen |",
        "|---|---|---:|---|:---:|",
    ]
    for t in sorted(trials, key=lambda t: agents.index(t.agent)):  # stable: grid order per agent
        mark = "yes" if t.overrides == chosen.get(t.agent) else ""
        config = _config_text(t.overrides)
        lines.append(
            f"| {t.agent} | {config} | {t.score:.3f} | {', '.join(f'{r:.3f}' for r in t.returns)} | {mark} |"
        )
    if ties:
        lines += ["", "Ties:", ""] + [f"- {note}" for note in ties.values()]
    with output_path(out_dir):
        atomic_write_json(out_dir / "tune.json", data)
        atomic_write_bytes(out_dir / "tune.md", ("\n".join(lines) + "\n").encode())
