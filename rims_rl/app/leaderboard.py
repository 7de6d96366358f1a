"""The leaderboard: every agent on every benchmark suite, from committed run records, pending cells named.

A spec (``docs/results/leaderboard.yml``) lists, per suite, the folders of run records that hold its
fair comparison (tuned on the training env, same budget, 10 seeds) and the command that fills each
missing agent. The page has

* a table of agent x suite: IQM over seeds of the training-env return and of the OOD return (a run's
  OOD score is its mean return over the suite's test variants), each with a stratified-bootstrap 95% CI,
  the number of seeds, and the training throughput where records carry it;
* P(row > column) on OOD, averaged over the suites both agents have (rliable's probability of
  improvement), with its CI;
* a figure of the OOD IQMs;
* where the spec names a feed-forward ``control`` agent, P(agent > control) per suite on the training
  env and on OOD: the test that a suite needs memory at its budget, measured at every seed count.

The spec and the records are files (committed, or someone's): read with bounded readers, every field
checked, and record folders must lie inside the spec's own folder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from rims_rl.agents import ParameterCount
from rims_rl.app.atomic import atomic_write_bytes
from rims_rl.app.config import resolve_config
from rims_rl.app.errors import UserError
from rims_rl.app.plots import plot_ood_bars, plot_train_vs_ood
from rims_rl.app.runs import measure_model
from rims_rl.app.stats import CI, probability_of_improvement_ci, stratified_bootstrap_ci
from rims_rl.app.summary import ScoreRecord, score_record
from rims_rl.envs.untrusted import UntrustedFileError, load_json, load_yaml

#: Fewer seeds than this and a cell is marked: the fair protocol asks for 10.
FULL_SEEDS = 10


@dataclass(frozen=True)
class SuiteEntry:
    """One suite of the spec: where its records are, and how to fill what is missing."""

    suite: str
    records: tuple[Path, ...]
    pending: Mapping[str, str] = field(default_factory=dict)
    """agent -> the command that produces its records (listed under the table, named in empty cells)."""
    note: str = ""
    not_applicable: tuple[str, ...] = ()
    """Agents that cannot run on this suite (e.g. image-slot RIMs on flat observations)."""
    equal_return_at: float | None = None
    """Training-env return from which runs count as equally trained (the OOD-at-equal-return table)."""
    throughput: tuple[Path, ...] = ()
    """Folders of re-runs with today's code (a seed each) that give steps/s to the cells whose records
    predate timing; their scores are never used."""
    rename: Mapping[Path, Mapping[str, str]] = field(default_factory=dict)
    """folder -> {agent in its records: row}: runs of one preset under other settings (its own tuning
    grid, an ablation) as a row of their own."""


@dataclass(frozen=True)
class Spec:
    """The leaderboard's agents (row order) and suites (column order)."""

    agents: tuple[str, ...]
    suites: tuple[SuiteEntry, ...]
    control: str | None = None
    """The agent without memory that every other agent is tested against, suite by suite."""


@dataclass(frozen=True)
class RunScores:
    """One run's scores on one suite: training env, OOD mean over variants, steps/s if recorded."""

    agent: str
    seed: int
    train: float
    ood: float
    steps_per_s: float | None
    envs: frozenset[tuple[str, str]] = frozenset()
    """(env name, env id) of every env it was scored on: one suite's runs must share them."""
    source: str = ""
    """The record file, to name in an error."""
    job: Mapping[str, Any] = field(default_factory=dict, compare=False)
    """The job as the record stores it (agent, suite, overrides, ...): what rebuilds its model."""


@dataclass(frozen=True)
class Cell:
    """One agent on one suite: the run scores and their IQMs with CIs."""

    runs: tuple[RunScores, ...]
    train: CI
    ood: CI
    rerun_steps_per_s: float | None = None
    """Median steps/s of the spec's ``throughput`` re-runs, where the cell's own records have none."""

    @property
    def seeds(self) -> int:
        return len(self.runs)

    @property
    def steps_per_s(self) -> float | None:
        rates = [r.steps_per_s for r in self.runs if r.steps_per_s]
        return float(np.median(rates)) if rates else None


def _pending(value: Any, agents: tuple[str, ...], where: str) -> dict[str, str]:
    """``[{agents: [...], command: "..."}]`` -> agent -> command (YAML aliases are refused, so one command
    that fills several cells is written once with the agents it fills)."""
    if value is None:
        return {}
    if not isinstance(value, list):
        raise UserError(f"{where}: 'pending' must be a list of {{agents: [...], command: ...}}")
    found: dict[str, str] = {}
    for item in value:
        names = item.get("agents") if isinstance(item, Mapping) else None
        command = item.get("command") if isinstance(item, Mapping) else None
        if (
            not isinstance(names, list)
            or not isinstance(command, str)
            or not all(isinstance(a, str) for a in names)
        ):
            raise UserError(
                f"{where}: each 'pending' entry needs 'agents' (a list of names) and 'command' (text)"
            )
        for name in names:
            if name not in agents:
                raise UserError(f"{where}: 'pending' names agent {name!r}, which is not in 'agents'")
            found[name] = command
    return found


def _load(path: Path, what: str, yaml: bool = False) -> Any:
    try:
        return load_yaml(path, what) if yaml else load_json(path, what)
    except UntrustedFileError as err:
        raise UserError(str(err)) from err


def load_spec(path: str | Path) -> Spec:
    """The spec at ``path``, checked: names are strings, record folders lie inside the spec's folder."""
    path = Path(path)
    data = _load(path, "leaderboard spec", yaml=True)
    where = f"leaderboard spec {str(path)!r}"
    if not isinstance(data, Mapping) or not isinstance(data.get("agents"), list) or not data["agents"]:
        raise UserError(f"{where} needs a non-empty list 'agents'; see docs/results/leaderboard.yml")
    agents = tuple(data["agents"])
    if not all(isinstance(a, str) for a in agents):
        raise UserError(f"{where}: 'agents' must be names")
    suites_raw = data.get("suites")
    if not isinstance(suites_raw, Mapping) or not suites_raw:
        raise UserError(f"{where} needs a mapping 'suites' of suite name -> {{records, pending}}")
    base = path.resolve().parent
    suites = []
    for name, entry in suites_raw.items():
        if not isinstance(name, str) or not isinstance(entry, Mapping):
            raise UserError(f"{where}: suite {name!r} must map to {{records: [...], pending: {{...}}}}")
        resolved, rename = _record_folders(entry, base, agents, f"{where}: suite {name}")
        throughput = _folders(entry, "throughput", base, f"{where}: suite {name}")
        note = entry.get("note", "")
        if not isinstance(note, str):
            raise UserError(f"{where}: suite {name}: 'note' must be text")
        pending = _pending(entry.get("pending"), agents, f"{where}: suite {name}")
        na = entry.get("not_applicable") or []
        if not isinstance(na, list) or not all(isinstance(a, str) and a in agents for a in na):
            raise UserError(f"{where}: suite {name}: 'not_applicable' must list agents of 'agents'")
        tau = entry.get("equal_return_at")
        if tau is not None and (
            isinstance(tau, bool) or not isinstance(tau, int | float) or not -1e6 < tau < 1e6
        ):
            raise UserError(
                f"{where}: suite {name}: 'equal_return_at' must be a number (a training-env return)"
            )
        suites.append(SuiteEntry(name, resolved, pending, note, tuple(na), tau, throughput, rename))
    control = data.get("control")
    if control is not None and control not in agents:
        raise UserError(
            f"{where}: 'control' must be one of 'agents' (the feed-forward agent), got {control!r}"
        )
    return Spec(agents, tuple(suites), control)


def _record_folders(
    entry: Mapping[str, Any], base: Path, agents: tuple[str, ...], where: str
) -> tuple[tuple[Path, ...], dict[Path, dict[str, str]]]:
    """``records``: folders, or ``{folder: F, rename: {agent: row}}`` for runs shown as a row of their own."""
    raw = entry.get("records") or []
    if not isinstance(raw, list):
        raise UserError(f"{where}: 'records' must be a list of folders")
    plain: list[str] = []
    renames: dict[str, dict[str, str]] = {}
    for item in raw:
        if isinstance(item, Mapping):
            folder, rename = item.get("folder"), item.get("rename")
            if (
                not isinstance(folder, str)
                or not isinstance(rename, Mapping)
                or not all(isinstance(k, str) and isinstance(v, str) for k, v in rename.items())
            ):
                raise UserError(
                    f"{where}: a 'records' entry is a folder or {{folder: F, rename: {{agent: row}}}}"
                )
            unknown = sorted(set(rename.values()) - set(agents))
            if unknown:
                raise UserError(
                    f"{where}: 'rename' gives rows {', '.join(unknown)}, which are not in 'agents'"
                )
            renames[folder] = dict(rename)
            item = folder
        plain.append(item)
    folders = _folders({"records": plain}, "records", base, where)
    named = zip(plain, folders, strict=True)
    return folders, {full: renames[name] for name, full in named if name in renames}


def _folders(entry: Mapping[str, Any], key: str, base: Path, where: str) -> tuple[Path, ...]:
    """``entry[key]``: a list of folders inside the spec's own folder."""
    folders = entry.get(key) or []
    if not isinstance(folders, list) or not all(isinstance(f, str) for f in folders):
        raise UserError(f"{where}: {key!r} must be a list of folders")
    resolved = []
    for folder in folders:
        full = (base / folder).resolve()
        if not full.is_relative_to(base):
            raise UserError(f"{where}: {key} folder {folder!r} lies outside {base}")
        resolved.append(full)
    return tuple(resolved)


def read_run_scores(folder: Path) -> list[RunScores]:
    """The runs recorded in ``folder`` (``<agent>-seed<n>.json`` from compare), one score pair each."""
    runs = []
    for file in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        data = _load(file, "run record")
        items = data.get("records") if isinstance(data, Mapping) else None
        if not isinstance(items, list) or not items:
            raise UserError(f"run record {str(file)!r} holds no list of records; delete it or fix the folder")
        try:
            records: list[ScoreRecord] = [score_record(item) for item in items]
        except ValueError as err:
            raise UserError(f"run record {str(file)!r}: {err}") from err
        train = [r["mean_return"] for r in records if r["is_train"]]
        ood = [r["mean_return"] for r in records if not r["is_train"]]
        if len(train) != 1 or not ood or len({(r["agent"], r["seed"]) for r in records}) != 1:
            raise UserError(f"run record {str(file)!r} must hold one run: one training env and its variants")
        seconds = data.get("train_seconds")
        rate = None
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds > 0:
            rate = records[0]["timesteps"] / float(seconds)
        envs = frozenset((r["env"], r["env_id"]) for r in records)
        agent, seed = records[0]["agent"], records[0]["seed"]
        job = data.get("job") if isinstance(data.get("job"), Mapping) else {}
        runs.append(RunScores(agent, seed, train[0], float(np.mean(ood)), rate, envs, str(file), job))
    return runs


def _envs(envs: frozenset[tuple[str, str]]) -> str:
    return ", ".join(f"{name} ({env_id})" for name, env_id in sorted(envs))


def build_cells(spec: Spec, reps: int = 2000) -> dict[tuple[str, str], Cell]:
    """(agent, suite) -> cell for every agent of the spec with records; a seed recorded twice is refused."""
    cells: dict[tuple[str, str], Cell] = {}
    for entry in spec.suites:
        by_agent: dict[str, dict[int, RunScores]] = {}
        first: RunScores | None = None
        for folder in entry.records:
            rename = entry.rename.get(folder, {})
            for run in read_run_scores(folder):
                run = replace(run, agent=rename.get(run.agent, run.agent))
                first = first or run
                if run.envs != first.envs:  # an OOD mean over other variants is another number
                    raise UserError(
                        f"suite {entry.suite}: {run.source} is scored on {_envs(run.envs)} but "
                        f"{first.source} on {_envs(first.envs)}; re-run the compare of the older records so "
                        "that every run is evaluated on the suite as it is now"
                    )
                seen = by_agent.setdefault(run.agent, {})
                if run.seed in seen:
                    raise UserError(f"suite {entry.suite}: {run.agent} seed {run.seed} is recorded twice")
                seen[run.seed] = run
        for agent, runs in by_agent.items():
            if agent not in spec.agents:
                continue
            ordered = tuple(runs[s] for s in sorted(runs))
            train = stratified_bootstrap_ci([r.train for r in ordered], "iqm", reps)
            ood = stratified_bootstrap_ci([r.ood for r in ordered], "iqm", reps)
            cells[(agent, entry.suite)] = Cell(ordered, train, ood)
        reruns: dict[str, list[float]] = {}
        for folder in entry.throughput:
            for run in read_run_scores(folder):
                if run.steps_per_s:
                    reruns.setdefault(run.agent, []).append(run.steps_per_s)
        for agent, rates in reruns.items():
            cell = cells.get((agent, entry.suite))
            if cell is not None and cell.steps_per_s is None:
                cells[(agent, entry.suite)] = replace(cell, rerun_steps_per_s=float(np.median(rates)))
    return cells


def cell_sizes(spec: Spec, cells: Mapping[tuple[str, str], Cell]) -> dict[tuple[str, str], ParameterCount]:
    """Each cell's model size (core, total parameters), measured from the settings its first run records.

    Runs of one cell share their settings (``compare`` refuses anything else), so one model per cell is
    enough; a record without a usable job (or for an agent not installed here) leaves the cell out.
    """
    sizes: dict[tuple[str, str], ParameterCount] = {}
    for (agent, suite), cell in tqdm(
        cells.items(), desc="model sizes", unit="cell", disable=None, leave=False
    ):
        job = cell.runs[0].job
        overrides = job.get("overrides")
        preset = job.get("agent")  # a renamed row's runs are of this preset
        try:
            config = resolve_config(
                preset if isinstance(preset, str) else agent,
                job.get("env_id") if isinstance(job.get("env_id"), str) else None,
                suite=job.get("suite") if isinstance(job.get("suite"), str) else suite,
                n_envs=job.get("n_envs") if isinstance(job.get("n_envs"), int) else None,
                overrides=overrides if isinstance(overrides, Mapping) else None,
            )
            sizes[(agent, suite)] = measure_model(config)
        except (UserError, ValueError):
            continue
    return sizes


def _size_text(size: ParameterCount | None, lstm: ParameterCount | None) -> str:
    if size is None:
        return "n/a"
    ratio = f" ({size.core / lstm.core:.2f}x)" if lstm and lstm.core and size.core else ""
    core = f"{size.core / 1e3:,.1f}k{ratio}" if size.core else "-"
    return f"{core} / {size.total / 1e3:,.1f}k"


def improvement_matrix(
    spec: Spec, cells: Mapping[tuple[str, str], Cell], reps: int = 2000
) -> dict[tuple[str, str], CI]:
    """P(row > column) on OOD, averaged over the suites both agents have; absent when they share none."""
    matrix = {}
    for a in spec.agents:
        for b in spec.agents:
            if a == b:
                continue
            xs = {
                s.suite: [r.ood for r in cells[(a, s.suite)].runs]
                for s in spec.suites
                if (a, s.suite) in cells
            }
            ys = {
                s.suite: [r.ood for r in cells[(b, s.suite)].runs]
                for s in spec.suites
                if (b, s.suite) in cells
            }
            if set(xs) & set(ys):
                matrix[(a, b)] = probability_of_improvement_ci(xs, ys, reps=reps)
    return matrix


@dataclass(frozen=True)
class EqualReturnRow:
    """One agent's runs on one suite that reached the suite's training-return threshold."""

    suite: str
    threshold: float
    agent: str
    kept: int
    total: int
    ood: CI


def equal_return_rows(
    spec: Spec, cells: Mapping[tuple[str, str], Cell], reps: int = 2000
) -> list[EqualReturnRow]:
    """OOD IQM over only the runs whose training-env return reached ``equal_return_at``: answers "does
    this core generalise worse only because it trains slower" by comparing equally trained runs."""
    rows = []
    for suite in spec.suites:
        if suite.equal_return_at is None:
            continue
        for agent in spec.agents:
            cell = cells.get((agent, suite.suite))
            if cell is None:
                continue
            kept = [r.ood for r in cell.runs if r.train >= suite.equal_return_at]
            ci = (
                stratified_bootstrap_ci(kept, "iqm", reps)
                if kept
                else CI(float("nan"), float("nan"), float("nan"))
            )
            rows.append(EqualReturnRow(suite.suite, suite.equal_return_at, agent, len(kept), cell.seeds, ci))
    return rows


@dataclass(frozen=True)
class ControlRow:
    """P(agent > the control) on one suite, from the runs' training-env and OOD scores."""

    suite: str
    agent: str
    train: CI
    ood: CI


def control_rows(spec: Spec, cells: Mapping[tuple[str, str], Cell], reps: int = 2000) -> list[ControlRow]:
    """Each agent against the feed-forward control, suite by suite. A suite needs memory at its budget
    only if recurrent agents beat the control on the training env with the CI clear of 0.5; one seed
    that solved it can say so when ten do not (MiniGrid-Memory at 1M steps)."""
    rows: list[ControlRow] = []
    if spec.control is None:
        return rows
    for suite in spec.suites:
        base = cells.get((spec.control, suite.suite))
        if base is None:
            continue
        for agent in spec.agents:
            cell = cells.get((agent, suite.suite))
            if agent == spec.control or cell is None:
                continue
            train = probability_of_improvement_ci(
                [r.train for r in cell.runs], [r.train for r in base.runs], reps=reps
            )
            ood = probability_of_improvement_ci(
                [r.ood for r in cell.runs], [r.ood for r in base.runs], reps=reps
            )
            rows.append(ControlRow(suite.suite, agent, train, ood))
    return rows


def _cell_text(cell: Cell | None, pending: str | None, applicable: bool) -> str:
    if cell is None:
        return "pending" + (f" ({pending})" if pending else "") if applicable else "n/a"
    seeds = f"{cell.seeds} seed" + ("" if cell.seeds == 1 else "s")
    rest = f"; the rest: {pending}" if pending else ""
    flag = "" if cell.seeds >= FULL_SEEDS else f" ({seeds}, not yet {FULL_SEEDS}{rest})"
    # records from before compare kept the training time: say so rather than leave a silent gap
    if cell.steps_per_s:
        rate = f"; {cell.steps_per_s:,.0f} steps/s"
    elif cell.rerun_steps_per_s:  # the suite's note says which re-runs
        rate = f"; {cell.rerun_steps_per_s:,.0f} steps/s (re-run)"
    else:
        rate = "; steps/s not recorded"
    return f"{cell.train.fmt()} / **{cell.ood.fmt()}**, n={cell.seeds}{rate}{flag}"


def _agent_by_suite(spec: Spec, text: Callable[[str, SuiteEntry], str]) -> list[str]:
    """A Markdown table: one row per agent of the spec, one column per suite, ``text`` in each cell."""
    lines = [
        "| agent | " + " | ".join(s.suite for s in spec.suites) + " |",
        "|---|" + "---|" * len(spec.suites),
    ]
    lines += [
        f"| {agent} | " + " | ".join(text(agent, s) for s in spec.suites) + " |" for agent in spec.agents
    ]
    return lines


def markdown(
    spec: Spec,
    cells: Mapping[tuple[str, str], Cell],
    matrix: Mapping[tuple[str, str], CI],
    figure: str | None,
    command: str,
    equal: Sequence[EqualReturnRow] = (),
    equal_figure: str | None = None,
    control: Sequence[ControlRow] = (),
    sizes: Mapping[tuple[str, str], ParameterCount] | None = None,
) -> str:
    """The leaderboard page: table, notes, pending commands, P(row > column), figure, model sizes."""
    commands: dict[str, str] = {}  # command -> label, in order of first use in empty cells
    for suite in spec.suites:
        for agent in spec.agents:
            cmd = suite.pending.get(agent)
            cell = cells.get((agent, suite.suite))
            unfinished = cell is None or cell.seeds < FULL_SEEDS
            if unfinished and cmd and cmd not in commands:
                commands[cmd] = f"P{len(commands) + 1}"
    lines = [
        "# Leaderboard: recurrent cores on memory and OOD suites",
        "",
        f"Generated from committed run records by `{command}`; edit the spec, not this page.",
        "Each cell: training-env IQM [95% CI] / **OOD IQM [95% CI]** over seeds (a run's OOD score is its",
        "mean return over the suite's test variants), the number of seeds, and the median training",
        "throughput where the records carry it (2-core shared CPU machine: compare it within a column);",
        "\"(re-run)\": the records predate timing, and the rate is that of a re-run with today's code (the",
        "suite's note says which).",
        "Scales differ between suites (POPGym returns lie in [-1, 1], MiniGrid's in [0, 1]).",
        "",
    ]

    def score(agent: str, suite: SuiteEntry) -> str:
        cmd = suite.pending.get(agent)
        label = commands.get(cmd) if cmd else None
        return _cell_text(cells.get((agent, suite.suite)), label, agent not in suite.not_applicable)

    lines += _agent_by_suite(spec, score)
    if sizes:
        lines += [
            "",
            "## Model sizes",
            "",
            "Parameters of each cell's model as its runs were configured: the recurrent core (actor and",
            "critic; its size relative to lstm_ppo's core on the same suite) / the whole policy.",
            "",
        ]
        lines += _agent_by_suite(
            spec, lambda agent, s: _size_text(sizes.get((agent, s.suite)), sizes.get(("lstm_ppo", s.suite)))
        )
    notes = [f"- **{s.suite}**: {s.note}" for s in spec.suites if s.note]
    if notes:
        lines += ["", "## Suites", "", *notes]
    if commands:
        lines += ["", "## Pending runs (each fills the cells marked with its label)", ""]
        lines += [f"- {label}: `{cmd}`" for cmd, label in commands.items()]
    lines += [
        "",
        "## P(row > column) on OOD",
        "",
        "Averaged over the suites both agents were run on; 0.5 is no difference.",
        "",
    ]
    present = [a for a in spec.agents if any((a, s.suite) in cells for s in spec.suites)]
    lines += ["| row \\ column | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
    for a in present:
        row = ["-" if a == b else (matrix[(a, b)].fmt() if (a, b) in matrix else "n/a") for b in present]
        lines.append(f"| {a} | " + " | ".join(row) + " |")
    if figure:
        lines += ["", f"![OOD IQM per suite]({figure})"]
    if control:
        by_cell = {(r.agent, r.suite): r for r in control}
        suites = [s.suite for s in spec.suites if any(r.suite == s.suite for r in control)]
        agents = [a for a in spec.agents if any(r.agent == a for r in control)]
        lines += [
            "",
            f"## Against the feed-forward control: P(agent > {spec.control})",
            "",
            "Per suite, on the training env / **on OOD**; 0.5 is no difference. A suite needs memory at its",
            "budget only where the recurrent agents' training-env CI lies above 0.5.",
            "",
            "| agent | " + " | ".join(suites) + " |",
            "|---|" + "---|" * len(suites),
        ]
        for agent in agents:
            row = [
                f"{r.train.fmt()} / **{r.ood.fmt()}**" if (r := by_cell.get((agent, s))) else "-"
                for s in suites
            ]
            lines.append(f"| {agent} | " + " | ".join(row) + " |")
    if equal:
        lines += [
            "",
            "## OOD at equal training-env return",
            "",
            "Only the runs whose training-env return reached the suite's threshold, so a core that trains",
            "slower is not judged on runs that never learned the training env.",
            "",
            "| suite | threshold | agent | runs kept | OOD IQM [95% CI] of those |",
            "|---|---:|---|---:|---|",
        ]
        lines += [
            f"| {r.suite} | {r.threshold:g} | {r.agent} | {r.kept} / {r.total} | {r.ood.fmt()} |"
            for r in equal
        ]
        if equal_figure:
            lines += ["", f"![training-env return against OOD return, per run]({equal_figure})"]
    return "\n".join(lines) + "\n"


def plot(spec: Spec, cells: Mapping[tuple[str, str], Cell], path: Path) -> Path | None:
    """OOD IQM with CI bars: suites side by side, agents within each."""
    rows = [
        {
            "agent": agent,
            "env": suite.suite,
            "env_id": suite.suite,
            "is_train": False,
            **cell.ood.as_dict("iqm"),
        }
        for agent in spec.agents
        for suite in spec.suites
        if (cell := cells.get((agent, suite.suite))) is not None
    ]
    return plot_ood_bars(rows, path, title="OOD return per suite (IQM over seeds, 95% CI)") if rows else None


def write_leaderboard(spec_path: str | Path, out: str | Path, command: str, reps: int = 2000) -> Path:
    """Read the spec and its records, write ``out`` (Markdown) and the figures beside it."""
    out = Path(out)
    outputs = (out, out.with_suffix(".png"), out.with_name(out.stem + "-equal-return.png"))
    for path in outputs:
        if path.resolve() == Path(spec_path).resolve():
            raise UserError(f"--out {str(out)!r} would write {str(path)!r} over the spec; give another --out")
    spec = load_spec(spec_path)
    print(f"leaderboard: {len(spec.suites)} suites, {len(spec.agents)} agents; bootstrapping ...", flush=True)
    cells = build_cells(spec, reps)
    matrix = improvement_matrix(spec, cells, reps)
    figure = plot(spec, cells, out.with_suffix(".png"))
    equal = equal_return_rows(spec, cells, reps)
    points = {
        s.suite: {
            a: [(r.train, r.ood) for r in cells[(a, s.suite)].runs]
            for a in spec.agents
            if (a, s.suite) in cells
        }
        for s in spec.suites
        if s.equal_return_at is not None
    }
    thresholds = {s.suite: s.equal_return_at for s in spec.suites if s.equal_return_at is not None}
    equal_figure = plot_train_vs_ood(points, thresholds, out.with_name(out.stem + "-equal-return.png"))
    text = markdown(
        spec,
        cells,
        matrix,
        figure.name if figure else None,
        command,
        equal,
        equal_figure.name if equal_figure else None,
        control_rows(spec, cells, reps),
        cell_sizes(spec, cells),
    )
    atomic_write_bytes(out, text.encode())
    return out
